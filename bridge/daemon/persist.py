"""Unfinished jobs survive the daemon: each job's folder holds its description and its checkpoint.

A queued job's uploads already wait on disk (``jobs/<pid>/uploads/<folder>/``, see
:class:`~bridge.daemon.jobfiles.JobFiles`). Beside them the daemon writes

* ``job.json``: the job as submitted (:meth:`bridge.job.JobSpec.to_json`, ``{"upload": i}`` naming the files),
  the settings it resolved to on that daemon's defaults, and which file is which (content, styles, masks, regions);
* ``checkpoint.npz``: the engine's :class:`~bridge.engine.checkpoint.FileCheckpoint` (saved at each stage's
  end, at least every ``checkpoint_seconds`` and when the job pauses).

A daemon that starts takes over the unfinished jobs of a daemon that is gone (killed, crashed, stopped):
:func:`adopt` moves their folders into its own and :func:`load` turns each back into a queued job, which
resumes from its checkpoint. A folder whose description cannot be used (damaged, hand-edited, naming files
out of its folder) is set aside in ``jobs/quarantine/`` with its uploads and one warning line
(:func:`quarantine`); the daemon starts and resumes the others. Finished results of a dead daemon are not kept (they are in its memory).
Everything written here is written atomically: a crash leaves the old file or the new one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import stat
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from ..engine.checkpoint import Bound, FileCheckpoint
from ..outputs import atomic_write
from ..settings import LIMITS, SettingsError
from ..settings_parse import load_settings_json, settings_from_mapping
from .jobfiles import JobFiles
from .memory import ImageShape, working_size


log = logging.getLogger("stylebridge.daemon")

JOB_FILE = "job.json"
CHECKPOINT_FILE = "checkpoint.npz"
FORMAT = 1



@dataclass
class Stored:
    """A job read back from its folder: its id, when it was submitted, its files and priority."""

    job_id: str
    created: float
    files: JobFiles


class ReportingCheckpoint(FileCheckpoint):
    """A :class:`FileCheckpoint` that also tells its front end when a save failed (a full disk).

    The engine logs and warns once and goes on with the previous checkpoint kept; ``on_failure(path)``
    lets the daemon put one clear line in the job's status ``warnings`` and the hot folder one on its
    terminal (:func:`checkpoint_failure_text`)."""

    def __init__(self, path: Path, interval_s: float, on_failure: Callable[[Path], None] | None = None, *,
                 bound: "Bound | Callable[[], Bound] | None" = None) -> None:
        super().__init__(path, interval_s, bound=bound)
        self.on_failure = on_failure

    def save(self, state: Any) -> None:
        before = self.failed
        super().save(state)
        if self.failed and not before and self.on_failure is not None:
            self.on_failure(self.path)


def checkpoint_failure_text(path: Path, where: str) -> str:
    """The one message for a checkpoint that could not be written: what happened and what to do."""
    return (f"the job's checkpoint could not be saved ({_free_text(path.parent)}): the job goes on, but until "
            f"you free some disk space {where} a restart would resume it from its last saved checkpoint, "
            "not from where it is now")


def _free_text(folder: Path) -> str:
    for p in (folder, *folder.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return f"disk full or not writable: {st.f_bavail * st.f_frsize / 1e6:.1f} MB free"
    return "disk full or not writable"


def checkpoint_path(folder: Path) -> Path:
    return folder / CHECKPOINT_FILE


def checkpoint_bound(files: JobFiles) -> Bound:
    """What the job's checkpoint can hold: images at its working size (a tenth more, for a photo whose
    decoded size differs a little from its header's), one finished image per style (and the blend)."""

    width, height = working_size(files.content_shape, files.settings)
    images = len(files.styles) + (1 if files.settings.style_blend_weights is not None else 0) + \
        (1 if files.regions else 0)                       # regions: the fused result too
    return Bound(pixels=int(width * height * 1.1) + 4096, images=images)


def save(folder: Path, job_id: str, created: float, files: JobFiles) -> None:
    """Write ``job.json`` for the job whose uploads are in ``folder`` (OSError when it cannot be written)."""
    def rel(path: Path | None) -> str | None:
        return None if path is None else path.relative_to(folder).as_posix()

    shape = files.content_shape
    record = {
        "format": FORMAT, "id": job_id, "created": created, "priority": files.priority,
        "job": files.spec,
        "settings": files.settings.to_dict(), "document": files.document.to_dict(),
        "content": rel(files.content), "content_name": files.content_name,
        "content_shape": {"width": shape.width, "height": shape.height, "alpha": shape.alpha,
                          "bit_depth": shape.bit_depth, "file_bytes": shape.file_bytes},
        "styles": [[name, rel(path)] for name, path in files.styles],
        "mask": rel(files.mask),
        "style_masks": [[name, rel(path)] for name, path in files.style_masks],
        "regions": [[name, rel(path)] for name, path in files.regions],
        "name": files.name, "estimate": files.estimate, "max_pixels": files.max_pixels,
    }
    atomic_write(folder / JOB_FILE, json.dumps(record, indent=1).encode())


class StoredJobError(ValueError):
    """A job folder that cannot be resumed; the message says why, in a few words."""


MAX_JOB_FILE_BYTES = 1 << 20      # a job.json is a few KB: anything bigger is not one of ours
QUARANTINE = "quarantine"          # beside the daemons' folders: job folders that could not be resumed
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")     # a uuid's hex: a name for URLs and folders
_MAX_TEXT = 4096
_MAX_SIDE = 1 << 20
_MAX_STYLES = 256


def read_record(folder: Path) -> dict[str, Any]:
    """The parsed ``job.json`` of ``folder``: a plain file (not a link) of at most MAX_JOB_FILE_BYTES, JSON
    of bounded depth and digits (the parse of settings JSON). StoredJobError otherwise."""
    if folder.is_symlink() or not folder.is_dir():
        raise StoredJobError("the job's folder is a link or not a folder")
    path = folder / JOB_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise StoredJobError(f"{JOB_FILE} cannot be opened ({exc.strerror or exc}; a link is not followed)") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise StoredJobError(f"{JOB_FILE} is not a plain file")
        data = f.read(MAX_JOB_FILE_BYTES + 1)
    if len(data) > MAX_JOB_FILE_BYTES:
        raise StoredJobError(f"{JOB_FILE} is over {MAX_JOB_FILE_BYTES} bytes")
    try:
        record = load_settings_json(data, option=JOB_FILE, limits=_JSON_LIMITS)
    except SettingsError as exc:
        raise StoredJobError(str(exc)) from None
    if not isinstance(record, dict):
        raise StoredJobError(f"{JOB_FILE} is not a JSON object")
    return record


_JSON_LIMITS = replace(LIMITS, max_settings_bytes=MAX_JOB_FILE_BYTES)


def _int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StoredJobError(f"{what} is {_short(value)}, not a whole number from {low} to {high}")
    return value


def _text(value: Any, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT or "\0" in value:
        raise StoredJobError(f"{what} is {_short(value)}, not text")
    return value


def _pairs(value: Any, what: str, most: int) -> list[tuple[str, str]]:
    if not isinstance(value, list) or len(value) > most:
        raise StoredJobError(f"{what} is not a list of at most {most} [name, file] pairs")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise StoredJobError(f"{what}: {_short(item)} is not a [name, file] pair")
        out.append((str(_text(item[0], what)), str(_text(item[1], what))))
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load(folder: Path, fixed: Mapping[str, Any] | None = None) -> Stored:
    """The job stored in ``folder``; ``fixed``: the settings this daemon fixes (device, weights) over the
    stored ones. Every field is checked for its type and range, the settings and the job take the same
    typed parse as a new job's, and every file named must be a plain file of the folder (no link, no path
    out of it): StoredJobError (or SettingsError) says what is wrong."""
    from ..job import JobSpec, Priority

    record = read_record(folder)
    if type(record.get("format")) is not int or record["format"] != FORMAT:
        raise StoredJobError(f"{JOB_FILE} is not a job description of format {FORMAT}")
    job_id = _text(record.get("id"), "id")
    if not _JOB_ID.fullmatch(str(job_id)):
        raise StoredJobError(f"id {_short(job_id)} is not a job id")
    created = record.get("created") or 0.0
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
        raise StoredJobError(f"created is {_short(created)}, not a time")

    def path(name: Any, what: str) -> Path:
        if (not isinstance(name, str) or not name or len(name) > 255 or "/" in name or "\\" in name
                or "\0" in name or name.startswith(".") or name in (JOB_FILE, CHECKPOINT_FILE)):
            raise StoredJobError(f"{what}: {_short(name)} is not a file of the job's folder")
        p = folder / name
        try:
            mode = os.lstat(p).st_mode
        except OSError:
            raise StoredJobError(f"{what}: the job's file {name} is missing") from None
        if not stat.S_ISREG(mode):
            raise StoredJobError(f"{what}: {name} is not a plain file (a link is not followed)")
        return p

    settings_part, document_part = record.get("settings"), record.get("document")
    if not isinstance(settings_part, dict) or not isinstance(document_part, dict):
        raise StoredJobError("settings and document must be JSON objects")
    values = {**settings_part, **document_part, **(fixed or {})}
    settings, document, _ = settings_from_mapping(values)
    spec = record.get("job")
    if spec is not None:
        JobSpec.from_json(spec)                      # the typed parse of a new job (SettingsError)
    raw_shape = record.get("content_shape")
    if not isinstance(raw_shape, dict) or set(raw_shape) - {"width", "height", "alpha", "bit_depth", "file_bytes"}:
        raise StoredJobError("content_shape is not {width, height, alpha, bit_depth, file_bytes}")
    alpha = raw_shape.get("alpha", False)
    if not isinstance(alpha, bool):
        raise StoredJobError(f"content_shape.alpha is {_short(alpha)}, not true or false")
    shape = ImageShape(width=_int(raw_shape.get("width"), "content_shape.width", 1, _MAX_SIDE),
                       height=_int(raw_shape.get("height"), "content_shape.height", 1, _MAX_SIDE), alpha=alpha,
                       bit_depth=_int(raw_shape.get("bit_depth", 8), "content_shape.bit_depth", 8, 16),
                       file_bytes=_int(raw_shape.get("file_bytes", 0), "content_shape.file_bytes", 0, 1 << 48))
    if shape.bit_depth not in (8, 16):
        raise StoredJobError(f"content_shape.bit_depth is {shape.bit_depth}, not 8 or 16")
    max_pixels = _int(record.get("max_pixels") or LIMITS.max_pixels, "max_pixels", 1, 1 << 40)
    if shape.pixels > max_pixels:
        raise StoredJobError(f"the photo's {shape.width} x {shape.height} is over max_pixels ({max_pixels})")
    styles = _pairs(record.get("styles"), "styles", _MAX_STYLES)
    if not styles:
        raise StoredJobError("styles: the job has none")
    style_masks = _pairs(record.get("style_masks") or [], "style_masks", _MAX_STYLES)
    regions = _pairs(record.get("regions") or [], "regions", _MAX_STYLES)
    style_names = {n for n, _ in styles}
    for n, _ in regions:
        if n not in style_names:
            raise StoredJobError(f"regions: {_short(n)} is not one of the job's styles")
    priority = record.get("priority") or Priority.INTERACTIVE.value
    if priority not in tuple(p.value for p in Priority):
        raise StoredJobError(f"priority {_short(priority)} is not one of {', '.join(p.value for p in Priority)}")
    files = JobFiles(
        folder=folder, content=path(record.get("content"), "content"),
        content_name=str(_text(record.get("content_name"), "content_name")), content_shape=shape,
        styles=[(n, path(p, f"style {n!r}")) for n, p in styles], settings=settings, document=document,
        mask=path(record["mask"], "mask") if record.get("mask") is not None else None,
        style_masks=[(n, path(p, f"mask of style {n!r}")) for n, p in style_masks],
        regions=[(n, path(p, f"region of style {n!r}")) for n, p in regions],
        name=_text(record.get("name"), "name", optional=True),
        estimate=_int(record.get("estimate") or 0, "estimate", 0, 1 << 60), max_pixels=max_pixels,
        priority=str(priority), spec=spec)
    return Stored(str(job_id), float(created), files)


def adopt(orphan: Path, uploads: Path) -> list[Path]:
    """Move the folders of ``orphan`` (a dead daemon's ``jobs/<pid>``) that hold a job description into
    ``uploads`` (this daemon's); returns them. The caller then removes what is left of ``orphan``."""
    moved: list[Path] = []
    source = orphan / "uploads"
    if source.is_symlink() or not source.is_dir():
        return moved
    try:
        entries = sorted(source.iterdir())
    except OSError as exc:
        log.warning("could not list the unfinished jobs in %s (%s); they are left there", source, exc)
        return moved
    for folder in entries:
        if not os.path.lexists(folder / JOB_FILE):
            continue                      # a submission that never finished arriving
        target = uploads / folder.name
        if os.path.lexists(target):       # two dead daemons' folders of one name: neither is lost
            target = uploads / f"{folder.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, target)
        except OSError as exc:
            log.warning("could not take over the unfinished job in %s (%s); it is dropped", folder, exc)
            continue
        moved.append(target)
    return moved


def quarantine(folder: Path, into: Path, why: str) -> Path | None:
    """Move a job folder that cannot be resumed into ``into`` (uploads and all: never lose a user's files),
    with one warning line naming it and why; returns where it went (None if it could not be moved)."""
    target = into / folder.name
    try:
        into.mkdir(parents=True, exist_ok=True)
        n = 2
        while os.path.lexists(target):
            target, n = into / f"{folder.name}-{n}", n + 1
        os.rename(folder, target)
    except OSError as exc:
        log.warning("an unfinished job of a previous daemon cannot be resumed (%s) and could not be set aside "
                    "(%s): it stays in %s", why, exc.strerror or exc, folder)
        return None
    log.warning("an unfinished job of a previous daemon cannot be resumed (%s): its folder, uploads included, is "
                "set aside in %s; look at it or delete it", why, target)
    return target


def load_adopted(folders: list[Path], fixed: Mapping[str, Any] | None = None,
                 quarantine_in: Path | None = None) -> list[Stored]:
    """The jobs in ``folders`` (oldest first); a folder whose description cannot be used is moved to
    ``quarantine_in`` (default: ``quarantine/`` beside the daemons' folders) with one warning line."""
    out: list[Stored] = []
    ids: set[str] = set()
    for folder in folders:
        try:
            stored = load(folder, fixed)
            if stored.job_id in ids:
                raise StoredJobError(f"a second job with the id {stored.job_id}")
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a stored file can hold anything: it never stops the daemon
            quarantine(folder, quarantine_in or folder.parent.parent.parent / QUARANTINE, _why(exc))
            continue
        ids.add(stored.job_id)
        out.append(stored)
    return sorted(out, key=lambda s: s.created)


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return f"{JOB_FILE} is nested too deeply"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, (StoredJobError, SettingsError)):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 200 else text[:197] + "..."
