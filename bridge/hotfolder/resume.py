"""Hours-long hot-folder jobs survive the watcher: one engine checkpoint per job, in the state folder.

``.stylebridge/checkpoints/<job id>.npz`` is the job's :class:`~bridge.engine.checkpoint.FileCheckpoint`
(saved at each stage's end, at least every ``checkpoint_seconds`` and when the watcher stops politely).
A job that a killed watcher left in working/ is recovered by the next one (:func:`.claim.recover`) and
its engine run goes on from this checkpoint instead of from zero. The checkpoint is removed when the
job's PSD is published (or the job goes to error/); checkpoints of jobs that are gone are tidied at start.
"""

from __future__ import annotations

import glob
import warnings
from pathlib import Path
from typing import Callable

from ..daemon.persist import ReportingCheckpoint, checkpoint_failure_text
from ..engine.checkpoint import Bound
from ..engine.types import Progress
from .layout import WORKING_SEP, Layout

CHECKPOINTS = "checkpoints"


def checkpoint_path(layout: Layout, job_id: str) -> Path:
    return layout.state / CHECKPOINTS / f"{job_id}.npz"


def job_checkpoint(layout: Layout, job_id: str, interval_s: float,
                   say: Callable[[str], None]) -> ReportingCheckpoint:
    """The job's checkpoint; a save that fails (full disk) is one line through ``say`` saying what to do.
    A damaged one (its headers claim more than the job's photo can need: :func:`photo_bound`) is set aside
    as ``<id>.npz.corrupt`` with a warning and the job starts afresh."""
    return ReportingCheckpoint(checkpoint_path(layout, job_id), interval_s,
                               on_failure=lambda path: say("warning: " + checkpoint_failure_text(
                                   path, f"on the disk holding {layout.root}")),
                               bound=lambda: photo_bound(layout, job_id))


def photo_bound(layout: Layout, job_id: str) -> Bound:
    """What the job's checkpoint can hold, from its photo in working/ (its header only): no stage is larger
    than the photo (a working size only shrinks it; at least MIN_SIDE a side), at most max_styles finished
    images and a blend. A photo whose size cannot be read (or a PSD, whose layers may reach past its
    canvas) gets the machine's limits (:meth:`Bound.default`)."""
    from PIL import Image

    from ..settings import LIMITS

    default = Bound.default()
    try:
        photos = [p for p in layout.working.glob(f"{glob.escape(job_id)}{WORKING_SEP}*")
                  if not p.name.lower().endswith(".json")]
        if len(photos) != 1:
            return default
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # (the run itself says what there is to say of the photo)
            with Image.open(photos[0]) as im:
                if im.format == "PSD":
                    return default
                width, height = im.size
    except Exception:  # noqa: BLE001 - any file: the machine's limits apply
        return default
    side = 16                     # engine.plan.MIN_SIDE (not imported: daemon mode has no engine here)
    pixels = max(width, side) * max(height, side)
    return Bound(pixels=min(pixels, default.pixels), images=LIMITS.max_styles + 1)


def remove(layout: Layout, job_id: str) -> None:
    """Drop the job's checkpoint (its PSD is published, or it failed); best effort: a checkpoint that
    cannot be removed is tidied at the next start (:func:`clean`)."""
    try:
        checkpoint_path(layout, job_id).unlink(missing_ok=True)
    except OSError:
        pass


def clean(layout: Layout) -> list[Path]:
    """Remove checkpoints (and their temporary files) of jobs no longer in working/; returns what went."""
    folder = layout.state / CHECKPOINTS
    if not folder.is_dir():
        return []
    live = {p.name.partition(WORKING_SEP)[0] for p in layout.working.iterdir()}
    removed: list[Path] = []
    for p in folder.iterdir():
        job_id = p.name.lstrip(".").split(".", 1)[0]
        if job_id not in live:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def announcing(on_progress: Callable[[Progress], None], report: Callable[..., None]) -> Callable[[Progress], None]:
    """``on_progress`` that first says, once, that the run went on from its checkpoint (and from where)."""
    said = False

    def wrapped(p: Progress) -> None:
        nonlocal said
        if p.resumed and not said:
            said = True
            report(f"resumed from its checkpoint: {p.done_iterations} of {p.total_iterations} iterations were "
                   "already done", 100.0 * p.fraction, "")
        on_progress(p)
    return wrapped


#: Daemon mode: how long a job is followed while its daemon does not answer (a restart takes seconds to a
#: minute: it loads the weights, then takes over the unfinished jobs under the same ids).
REATTACH_SECONDS = 300.0


def follow(client, job_id: str, *, on_progress: Callable[[dict], bool], poll: float, cancel,
           say: Callable[[str], None], patience_s: float = REATTACH_SECONDS) -> dict:
    """``client.wait(job_id)`` that survives a restart of the daemon: a daemon that starts takes over the
    unfinished jobs of the one that is gone under the same ids (docs/protocol.md), so the job is followed
    on instead of being sent again (which would redo its work). :class:`~.errors.Unavailable` when the
    daemon stays away longer than ``patience_s`` or comes back without the job (the file is then retried)."""
    import time

    from ..daemon.client import DaemonError, DaemonUnreachable
    from .errors import Cancelled, Unavailable

    while True:
        try:
            return client.wait(job_id, on_progress=on_progress, poll=poll)
        except DaemonUnreachable as exc:
            say(f"the daemon does not answer ({exc.reason}); waiting up to {patience_s:g} s for it to come back "
                "and resume this job")
            lost = time.monotonic()
            while True:
                if cancel.cancelled or cancel.paused:
                    raise Cancelled() from None
                if time.monotonic() - lost > patience_s:
                    raise
                time.sleep(max(poll, 0.5))
                try:
                    client.job(job_id)
                except DaemonUnreachable:
                    continue
                except DaemonError as gone:
                    if gone.status == 404:
                        raise Unavailable("the daemon restarted without this job; it is sent again") from None
                    raise
                say("the daemon is back; following the job on")
                break
