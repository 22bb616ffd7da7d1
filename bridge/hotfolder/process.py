"""The two engines a hot folder renders with: in this process, or a stylebridge daemon (``--daemon URL``).

Each takes a claimed file's :class:`~.inputs.Inputs` and writes the layered PSD to a scratch path (the
watcher publishes it); failures are the :mod:`.errors` the watcher knows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Protocol

from ..engine.checkpoint import Checkpoint
from ..engine.types import CancelToken, Progress
from ..job import FIXED_BY_DAEMON, Priority, Source, check
from ..pipeline import FailureKind, LoadedJob, classify, render
from ..settings import LIMITS
from .errors import (ADVICE_ENGINE, ADVICE_MEMORY, ADVICE_SETTINGS, ADVICE_SIZE, ADVICE_TOKEN, ADVICE_URL, Cancelled,
                     JobError, Unavailable)
from .inputs import HERE_ONLY, Inputs, wire_regions
from .presets import misplaced_style_hint

ReportFn = Callable[[str, float | None, str], None]   # (stage, percent or None, style name)


# --------------------------------------------------------------------------------------------
# Engines


class Engine(Protocol):
    allows_library: bool

    def render(self, inputs: Inputs, source: Path, dest: Path, report: ReportFn, cancel: CancelToken, *,
               checkpoint: Checkpoint | None = None) -> None:
        """Write the fusion PSD for ``inputs`` to ``dest`` or raise JobError/Cancelled (also when
        ``cancel`` is paused: the watcher stops). ``checkpoint``: the job's, to go on from after a restart."""


def progress_reporter(report: ReportFn) -> Callable[[Progress], None]:
    """Engine progress -> the watcher's lines (at most one per 5 % step or stage), in the one progress text."""
    from ..progress import progress_line
    last: dict[str, object] = {"key": None}

    def on_progress(p: Progress) -> None:
        pct = 100.0 * p.fraction
        key = (p.style_index, p.stage, int(pct // 5))
        if key != last["key"]:
            last["key"] = key
            report(progress_line(p), pct, "")
    return on_progress


class InProcessEngine:
    """Runs :func:`bridge.engine.stylize` here, then builds the layer stack and writes the PSD."""

    allows_library = False

    def render(self, inputs: Inputs, source: Path, dest: Path, report: ReportFn, cancel: CancelToken, *,
               checkpoint: Checkpoint | None = None) -> None:
        from ..document.psd import write_psd
        from .resume import announcing
        spec = inputs.spec
        job = LoadedJob(inputs.content, inputs.styles, spec.settings, spec.document, regions=inputs.regions)
        report("stylizing", 0.0, ", ".join(s.name for s in inputs.styles))
        try:
            rendered = render(job, progress=announcing(progress_reporter(report), report), cancel=cancel,
                              checkpoint=checkpoint,
                              keep=lambda result: not (result.cancelled or result.paused or cancel.cancelled),
                              on_layers=lambda: report("writing PSD", 100.0, ""))
        except (ValueError, RuntimeError, MemoryError) as exc:     # what went wrong: pipeline.classify
            failure = classify(exc)
            if failure.kind is FailureKind.MEMORY:
                raise JobError(f"{failure.message} while stylizing", ADVICE_MEMORY) from None
            if failure.kind is FailureKind.ENGINE:
                raise                      # the watcher's "unexpected" path: traceback on its terminal
            raise JobError(str(exc), ADVICE_SETTINGS) from None
        if rendered is None:
            raise Cancelled()
        write_psd(rendered.stack, dest)


def wire_job(inputs: Inputs) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The job as the daemon's ``job`` field carries it, and the style files it uploads.

    File and PSD-layer styles become ``{"upload": i}`` (their pictures, as PNG: already read and checked
    here); library styles stay names. The content goes up already extracted (a PSD's layer or composite),
    so ``content_layer`` does not travel; neither do the settings the daemon fixes when it starts
    (device, weights) nor what the hot folder does itself (the contact sheet).
    """
    from ..imaging import encode_png
    spec = inputs.spec
    pictures = iter(inputs.styles)
    styles: list[Source] = []
    files: list[tuple[str, bytes]] = []
    for src, name in zip(spec.styles, spec.style_names):
        if src.library is not None:
            styles.append(Source(library=src.library, name=name if name != src.library else None))
            continue
        pic = next(pictures)
        styles.append(Source(upload=len(files), name=name))
        files.append((f"{name}.png", encode_png(pic.picture)))
    options = {k: v for k, v in spec.options.items() if k not in FIXED_BY_DAEMON + HERE_ONLY}
    # batch: an artist's job (GIMP, interactive) arriving meanwhile runs first; this one pauses and resumes after
    wire = replace(spec, styles=tuple(styles), options=options, content_layer=None, priority=Priority.BATCH,
                   regions=wire_regions(inputs))
    check(wire, LIMITS, over_http=True)      # what the daemon would refuse, said before the upload
    return wire.to_json(), files


class DaemonEngine:
    """Sends the job to a running ``stylebridge serve`` so every front end shares one GPU.

    One job description (:func:`wire_job`: the same JobSpec, as ``JobSpec.to_json()``) with the files it
    names. Photos go up as their own file bytes (the daemon keeps 16-bit and ICC); PSD content and
    PSD style layers go up as PNG.  The daemon builds the layer stack and the PSD itself
    (``GET /v1/jobs/{id}/result.psd``), so it is written with the same document settings.
    """

    allows_library = True

    def __init__(self, url: str, token: str | None = None, poll_seconds: float = 0.5) -> None:
        from ..daemon.client import DaemonClient
        self.url = url.rstrip("/")
        self.client = DaemonClient(self.url, token)
        self.poll_seconds = poll_seconds

    def check(self) -> str | None:
        """None if the daemon answers /v1/health and speaks this protocol, else a message for the terminal."""
        from ..daemon.client import ClientError, DaemonUnreachable, unreachable_message
        try:
            return self._protocol_problem(self._health())
        except Unavailable as exc:
            return str(exc)
        except DaemonUnreachable as exc:
            return unreachable_message(exc.url, exc.reason)
        except ClientError as exc:
            return str(exc)

    def _health(self) -> dict:
        """The daemon's /v1/health; :class:`Unavailable` naming the token or the URL when the answer is a
        refusal of this watcher's token, or does not come from a stylebridge daemon at all."""
        from ..protocol import DaemonError, NotADaemon
        try:
            return self.client.health()
        except NotADaemon as exc:
            raise Unavailable(self._not_a_daemon(exc.what), ADVICE_URL) from None
        except DaemonError as exc:
            raise self._refused(exc) from None

    def _refused(self, exc: Any) -> Exception:
        """A :class:`~bridge.daemon.client.DaemonError` on /v1/health (or any request) as what to tell the user:
        a stylebridge daemon refusing the token (401 with its JSON ``error``), another refusal by a stylebridge
        daemon (its own words), or an answer that no stylebridge daemon gives."""
        from ..protocol import TOKEN_ENV
        ours = "error" in exc.payload
        if exc.status == 401 and ours:
            if self.client.token:
                what = (f"the stylebridge daemon at {self.url} refused this watcher's token (set by "
                        f"`stylebridge watch --token` or {TOKEN_ENV} in the watcher's environment): it must be "
                        "the token the daemon was started with (`stylebridge serve --token`)")
            else:
                what = (f"the stylebridge daemon at {self.url} needs a token and this watcher has none: give it "
                        f"with `stylebridge watch --token T` or {TOKEN_ENV} in the watcher's environment (the "
                        "token the daemon was started with, `stylebridge serve --token`)")
            return Unavailable(what, ADVICE_TOKEN)
        if ours and exc.status != 404:
            return Unavailable(f"the stylebridge daemon at {self.url} answered {exc.status}: {exc.message}")
        return Unavailable(self._not_a_daemon(f"it answered HTTP {exc.status} to GET /v1/health"), ADVICE_URL)

    def _not_a_daemon(self, what: str) -> str:
        return f"{self.url} does not look like a stylebridge daemon ({what}); check the --daemon URL"

    def _protocol_problem(self, health: dict) -> str | None:
        """A daemon older than protocol 2 does not read the ``job`` field: say which side to upgrade."""
        from ..protocol import upgrade_message
        from ..job import PROTOCOL_VERSION
        theirs = health.get("protocol") if isinstance(health, dict) else None
        if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs >= PROTOCOL_VERSION:
            return None
        return upgrade_message(self.url, theirs if isinstance(theirs, int) and theirs > 0 else 1)

    def render(self, inputs: Inputs, source: Path, dest: Path, report: ReportFn, cancel: CancelToken, *,
               checkpoint: Checkpoint | None = None) -> None:
        from ..daemon.client import DaemonError, DaemonUnreachable, JobFailed, unreachable_message
        from ..protocol import DaemonTooOld
        from .resume import follow
        from ..imaging import encode_png
        from ..progress import status_line
        stem = inputs.content.name
        if inputs.source_kind in ("psd", "psb"):
            content: tuple[str, bytes] = (f"{stem}.png", encode_png(inputs.content))
        else:
            ext = {"jpeg": "jpg", "tiff": "tif"}.get(inputs.source_kind, inputs.source_kind)
            content = (f"{stem}.{ext}", source.read_bytes())
        job_json, style_files = wire_job(inputs)
        names = ", ".join(inputs.names)
        state = {"last": None}

        def on_progress(status: dict) -> bool:
            if cancel.cancelled or cancel.paused:       # the watcher stops
                return False
            key = (status.get("status"), status.get("stage"), int((status.get("percent") or 0) // 5))
            if key != state["last"]:
                state["last"] = key
                report(f"daemon: {status_line(status)}", float(status.get("percent") or 0.0), "")
            return True

        try:
            problem = self._protocol_problem(self._health())
            if problem is not None:
                raise Unavailable(problem)
            regions = {"region_files": list(inputs.region_files.values())} if inputs.region_files else {}
            job = self.client.submit_job(content, job_json, style_files=style_files, **regions)
            report(f"sent to {self.url} as job {job.get('id')}", 0.0, names)
            try:
                follow(self.client, job["id"], on_progress=on_progress, poll=self.poll_seconds, cancel=cancel,
                       say=lambda text: report(text, None, ""))      # across a restart of the daemon
            except JobFailed as exc:
                if cancel.cancelled or exc.status.get("status") == "cancelled":
                    raise Cancelled() from None
                raise JobError(f"the daemon failed this job: {exc}", ADVICE_ENGINE) from None
            report("downloading PSD", 100.0, "")
            self.client.download_psd(job["id"], dest)
            try:
                self.client.delete(job["id"])      # free the daemon's memory; best effort
            except Exception:  # noqa: BLE001
                pass
        except DaemonUnreachable as exc:
            raise Unavailable(unreachable_message(exc.url, exc.reason)) from None
        except DaemonTooOld as exc:          # not the file's fault: it waits for the daemon's upgrade
            raise Unavailable(str(exc)) from None
        except DaemonError as exc:
            if exc.status == 401:      # the token: this watcher's setting, not the file's fault
                raise self._refused(exc) from None
            if exc.status == 429:      # its queue is full: not the file's fault, retry later
                raise Unavailable(f"the daemon is busy: {exc.message}") from None
            if exc.status >= 500:
                raise JobError(f"the daemon answered {exc.status}: {exc.message}", ADVICE_ENGINE) from None
            # over a size limit (pixels, upload, the job's memory) the file is too big: not a settings matter
            too_big = exc.payload.get("limit") in ("max_pixels", "max_upload_bytes", "max_job_memory")
            style = exc.payload.get("style")
            hint = misplaced_style_hint(source.parent.parent, style) if isinstance(style, str) else ""  # working/NAME
            raise JobError(f"the daemon refused the job: {exc.message}{hint}",
                           ADVICE_SIZE if too_big else ADVICE_SETTINGS) from None
