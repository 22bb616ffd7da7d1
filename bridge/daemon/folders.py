"""Each daemon's own folder under the data folder's ``jobs/``, and taking over those of daemons that are gone.

One sub-folder per daemon process (``jobs/<pid>/``: two daemons may share a data folder), locked for the
daemon's lifetime. When a daemon starts, the unfinished jobs of daemons that are gone (killed, crashed,
stopped) are taken over (:func:`bridge.daemon.persist.adopt` moves their folders into this daemon's
``uploads/``); the rest of their folders (finished results) is removed. When it stops, only its unfinished
jobs stay (:func:`release`), for the next daemon.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:     # Windows: fall back to "is that process id alive"
    fcntl = None  # type: ignore[assignment]

from . import persist

log = logging.getLogger("stylebridge.daemon")


@dataclass
class OwnFolder:
    """This daemon's folder (``jobs/<pid>/``), held locked until :func:`release`."""

    path: Path
    uploads: Path                      # queued jobs' files; one sub-folder per job
    lock_file: IO[bytes]
    adopted: list[Path] = field(default_factory=list)   # unfinished jobs taken over, oldest daemon first


def claim(parent: Path) -> OwnFolder:
    """Make this daemon's folder in ``parent`` and take over the orphans' unfinished jobs into it.

    Each daemon holds a lock on its folder's ``.lock`` for its lifetime, so a folder whose lock can be taken
    is an orphan even when its process id has been reused meanwhile."""
    parent.mkdir(parents=True, exist_ok=True)
    # Orphans stay locked by this daemon while it takes them over: two daemons starting at once never
    # both move (or one remove) the same unfinished job.
    held = _hold_orphans(parent)
    folder = parent / str(os.getpid())
    if folder in held:          # a previous daemon with our process id (containers): take it over too
        aside = parent / f"previous-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(folder, aside)
        held[aside] = held.pop(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    lock_file = open(folder / ".lock", "wb")     # noqa: SIM115 - held until the process ends
    if fcntl is not None:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    own = OwnFolder(folder, folder / "uploads", lock_file)
    own.uploads.mkdir()
    for orphan in sorted(held, key=lambda p: p.stat().st_mtime if p.exists() else 0.0):
        try:
            own.adopted += persist.adopt(orphan, own.uploads)
            shutil.rmtree(orphan, ignore_errors=True)
        finally:
            if held[orphan] is not None:
                held[orphan].close()
    return own


def release(own: OwnFolder, keep: set[str]) -> None:
    """Remove the daemon's folder but the upload folders named in ``keep`` (unfinished jobs with their
    description: the next daemon on this data folder resumes them), then let go of its lock."""
    if not keep:
        shutil.rmtree(own.path, ignore_errors=True)
    else:
        for child in own.path.iterdir():
            if child.name not in (".lock", "uploads"):
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        for child in own.uploads.iterdir():
            if child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)
        log.info("%d unfinished job(s) kept in %s: the next daemon on this data folder resumes them",
                 len(keep), own.path)
    own.lock_file.close()


def _hold_orphans(parent: Path) -> dict[Path, Any]:
    """The daemons' folders in ``parent`` whose daemon is gone, each with its lock file held (or None)."""
    held: dict[Path, Any] = {}
    for child in parent.iterdir():
        if child.is_dir() and (child.name.isdigit() or child.name.startswith("previous-")):
            taken, handle = _hold_orphan(child)
            if taken:
                held[child] = handle
    return held


def _hold_orphan(folder: Path) -> tuple[bool, Any]:
    """(True, the open lock file, held: close it when done) when ``folder``'s daemon is gone, else
    (False, None). Each daemon holds its folder's ``.lock`` for its lifetime, so a lock that can be taken
    means the daemon is gone even when its process id was reused; a folder without one (or no ``fcntl``):
    its process id is not alive. The lock stays taken while the folder is taken over."""
    lock = folder / ".lock"
    if fcntl is None or not lock.is_file():
        return (not folder.name.isdigit() or not _alive(int(folder.name))), None
    try:
        handle = open(lock, "rb")       # noqa: SIM115 - returned to the caller, who closes it
    except OSError:
        return False, None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False, None
    return True, handle


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
