"""Unfinished jobs survive the daemon: each job's folder holds its description and its checkpoint.

A queued job's uploads already wait on disk (``jobs/<pid>/uploads/<folder>/``, see
:class:`~bridge.daemon.jobs.JobFiles`). Beside them the daemon writes

* ``job.json``: the job as submitted (:meth:`bridge.job.JobSpec.to_json`, ``{"upload": i}`` naming the files),
  the settings it resolved to on that daemon's defaults, and which file is which (content, styles, masks);
* ``checkpoint.npz``: the engine's :class:`~bridge.engine.checkpoint.FileCheckpoint` (saved at each stage's
  end, at least every ``checkpoint_seconds`` and when the job pauses).

A daemon that starts takes over the unfinished jobs of a daemon that is gone (killed, crashed, stopped):
:func:`adopt` moves their folders into its own and :func:`load` turns each back into a queued job, which
resumes from its checkpoint. Finished results of a dead daemon are not kept (they are in its memory).
Everything written here is written atomically: a crash leaves the old file or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..engine.checkpoint import FileCheckpoint
from ..outputs import atomic_write
from ..settings import SettingsError, settings_from_mapping

if TYPE_CHECKING:
    from .jobs import JobFiles

log = logging.getLogger("stylebridge.daemon")

JOB_FILE = "job.json"
CHECKPOINT_FILE = "checkpoint.npz"
FORMAT = 1



@dataclass
class Stored:
    """A job read back from its folder: its id, when it was submitted, its files and priority."""

    job_id: str
    created: float
    files: "JobFiles"


class ReportingCheckpoint(FileCheckpoint):
    """A :class:`FileCheckpoint` that also tells its front end when a save failed (a full disk).

    The engine logs and warns once and goes on with the previous checkpoint kept; ``on_failure(path)``
    lets the daemon put one clear line in the job's status ``warnings`` and the hot folder one on its
    terminal (:func:`checkpoint_failure_text`)."""

    def __init__(self, path: Path, interval_s: float, on_failure: Callable[[Path], None] | None = None) -> None:
        super().__init__(path, interval_s)
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


def save(folder: Path, job_id: str, created: float, files: "JobFiles") -> None:
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
        "name": files.name, "estimate": files.estimate, "max_pixels": files.max_pixels,
    }
    atomic_write(folder / JOB_FILE, json.dumps(record, indent=1).encode())


def load(folder: Path, fixed: Mapping[str, Any] | None = None) -> Stored:
    """The job stored in ``folder``; ``fixed``: the settings this daemon fixes (device, weights) over the
    stored ones. ValueError/OSError/SettingsError when the description is missing or unusable."""
    from .jobs import ImageShape, JobFiles

    record = json.loads((folder / JOB_FILE).read_text())
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{JOB_FILE} is not a job description of format {FORMAT}")

    def path(name: Any) -> Path:
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} is not a file of the job's folder")
        p = folder / name
        if not p.is_file():
            raise ValueError(f"the job's file {name} is missing")
        return p

    values = {**record["settings"], **record["document"], **(fixed or {})}
    settings, document, _ = settings_from_mapping(values)
    shape = ImageShape(**record["content_shape"])
    files = JobFiles(
        folder=folder, content=path(record["content"]), content_name=str(record["content_name"]),
        content_shape=shape, styles=[(str(n), path(p)) for n, p in record["styles"]],
        settings=settings, document=document, mask=path(record["mask"]) if record.get("mask") else None,
        style_masks=[(str(n), path(p)) for n, p in record.get("style_masks") or []],
        name=record.get("name"), estimate=int(record.get("estimate") or 0),
        max_pixels=int(record.get("max_pixels") or 200_000_000),
        priority=str(record.get("priority") or "interactive"), spec=record.get("job"))
    return Stored(str(record["id"]), float(record.get("created") or 0.0), files)


def adopt(orphan: Path, uploads: Path) -> list[Path]:
    """Move the folders of ``orphan`` (a dead daemon's ``jobs/<pid>``) that hold a job description into
    ``uploads`` (this daemon's); returns them. The caller then removes what is left of ``orphan``."""
    moved: list[Path] = []
    source = orphan / "uploads"
    if not source.is_dir():
        return moved
    for folder in sorted(source.iterdir()):
        if not (folder / JOB_FILE).is_file():
            continue                      # a submission that never finished arriving
        target = uploads / folder.name
        try:
            os.rename(folder, target)
        except OSError as exc:
            log.warning("could not take over the unfinished job in %s (%s); it is dropped", folder, exc)
            continue
        moved.append(target)
    return moved


def load_adopted(folders: list[Path], fixed: Mapping[str, Any] | None = None) -> list[Stored]:
    """The jobs in ``folders`` (oldest first); a folder whose description cannot be used is removed."""
    out: list[Stored] = []
    for folder in folders:
        try:
            out.append(load(folder, fixed))
        except (OSError, ValueError, KeyError, TypeError, SettingsError) as exc:
            log.warning("an unfinished job of a previous daemon cannot be resumed (%s): dropped", exc)
            shutil.rmtree(folder, ignore_errors=True)
    return sorted(out, key=lambda s: s.created)
