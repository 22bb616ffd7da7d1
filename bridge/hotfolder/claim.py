"""The hot folder's claims: taking a file from in/ into working/ under a per-job lock, and taking back
the jobs a dead watcher left there.

Why each piece exists:

* **Claim by atomic rename.** ``in/NAME`` is renamed to ``working/ID--NAME``; a rename is atomic,
  so of two watchers racing for one file exactly one succeeds (the other gets ``FileNotFoundError``).
  FIFOs, sockets, devices and links to them are claimed the same way (a rename never opens them)
  and sent to error/.
* **Per-job lock** (``.stylebridge/locks/ID.lock``, ``fcntl.flock``), taken *before* the rename and
  held while the job runs.  The kernel drops it when the process dies (even ``kill -9``), so a
  watcher that finds ``working/ID--NAME`` with a free lock knows its owner is gone and may resume
  it, while a live peer's job is left alone.
* **Journalled** (:mod:`.journal`): the claim is recorded before the rename, so :func:`recover` knows
  each job's original name, its sidecar and how far it got.
* **Names that fit** (:func:`bridge.outputs.fit_name`): ``ID--`` can push a legal 255-byte name over
  NAME_MAX; such names are shortened (extension kept), the journal keeps the original.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..outputs import fit_name, name_bytes, name_max, part_name
from .journal import Journal, JournalState
from .layout import WORKING_SEP, Layout, is_ignored

# --------------------------------------------------------------------------------------------
# Locks


class JobLock:
    """An exclusive ``flock`` on ``locks/ID.lock``; released by the kernel if the holder dies."""

    def __init__(self, layout: Layout, job_id: str) -> None:
        self.path = layout.locks / f"{job_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def release(self, *, remove: bool = False) -> None:
        """Release; ``remove`` deletes the lock file first (only once the job's files are settled)."""
        if self._fd is None:
            return
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


# --------------------------------------------------------------------------------------------
# Claims


@dataclass
class Claim:
    """One claimed input, the hot folder's job: its id, where it came from, where it lies now, its lock."""

    job_id: str
    rel: str                        # original path relative to in/ (POSIX), e.g. "portraits/a.jpg"
    working: Path                   # working/ID--a.jpg
    lock: JobLock
    sidecar: Path | None = None     # working/ID--a.json when a sidecar travelled with it
    sidecar_name: str | None = None  # its original name, e.g. "a.json"
    state: JournalState | None = None   # journal state when resumed after a crash

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]

    @property
    def subdir(self) -> str:
        """Folder of the input inside in/ ("" at the top): outputs go to out/SUBDIR/."""
        return self.rel.rsplit("/", 1)[0] if "/" in self.rel else ""

    @property
    def resumed(self) -> bool:
        return self.state is not None


def new_job_id() -> str:
    """Sortable by claim time (microseconds), unique across processes (random tail)."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"{now % 1:.6f}"[1:] + "-" + uuid.uuid4().hex[:6]


def sidecar_for(path: Path) -> Path | None:
    """The settings file beside an input: ``NAME.EXT.json`` or ``NAME.json``, if present (and a
    regular file: a FIFO named like a sidecar is never opened)."""
    for cand in (path.with_name(path.name + ".json"), path.with_name(path.stem + ".json")):
        if cand.name.lower() == "preset.json":
            continue
        try:
            if stat.S_ISREG(os.stat(cand).st_mode):
                return cand
        except (OSError, ValueError):      # absent, or a name too long for the file system
            continue
    return None


def working_name(job_id: str, name: str, folder: Path) -> str:
    """``ID--NAME`` for working/, with NAME shortened (extension kept) so the whole fits NAME_MAX.
    The original name stays in the journal (``rel``) and names every output."""
    prefix = f"{job_id}{WORKING_SEP}"
    return prefix + fit_name(name, name_max(folder) - name_bytes(prefix))


def claim(layout: Layout, journal: Journal, path: Path) -> Claim | None:
    """Take ``in/…/NAME`` (and its sidecar) into working/; None if another watcher got it first."""
    job_id = new_job_id()
    lock = JobLock(layout, job_id)
    if not lock.acquire():          # a fresh uuid: only fails on a broken filesystem
        return None
    rel = layout.rel(path)
    working = layout.working / working_name(job_id, path.name, layout.working)
    side = sidecar_for(path)
    try:
        journal.append("claim", job_id, rel=rel, working=working.name,
                       sidecar=side.name if side else None)
        os.rename(path, working)
    except FileNotFoundError:
        journal.try_append("lost", job_id)
        lock.release(remove=True)
        return None
    except BaseException:
        # Not taken (a full disk for the journal, in/SUB on another disk, no permission...): the
        # file stays in in/ and the caller decides; an orphan "claim" record is harmless on replay.
        journal.try_append("lost", job_id)
        lock.release(remove=True)
        raise
    _keep_link_target(working, path.parent)
    job = Claim(job_id, rel, working, lock)
    if side is not None:
        _take_sidecar(job, side)
    return job


def _keep_link_target(link: Path, old_folder: Path) -> None:
    """A relative symbolic link moved from in/SUB to working/ would point elsewhere: make it absolute
    (same target as where it was dropped).  Best effort; other files are left alone."""
    try:
        if not os.path.islink(link):
            return
        target = os.readlink(link)
        if os.path.isabs(target):
            return
        tmp = link.with_name(part_name(link.name, link.parent))
        os.symlink(os.path.normpath(os.path.join(old_folder, target)), tmp)
        os.replace(tmp, link)          # our own claimed name: replacing it is safe
    except OSError:
        pass


def _take_sidecar(job: Claim, side: Path) -> None:
    dest = job.working.with_name(working_name(job.job_id, side.name, job.working.parent))
    try:
        os.rename(side, dest)
    except OSError:                # gone meanwhile, or cannot be moved: the job runs without it
        return
    job.sidecar, job.sidecar_name = dest, side.name


def recover(layout: Layout, journal: Journal, skip: Iterable[str] = ()) -> list[Claim]:
    """Jobs left in working/ by a dead watcher (their lock is free), oldest first, now locked by us.

    Sidecars in working/ (``*.json``) belong to their image's job and are not jobs; a working file
    with no journal entry at all (written by hand, or a journal deleted) is resumed as a top-level
    input.
    """
    states = journal.states()
    skip = set(skip)
    jobs: list[Claim] = []
    for entry in sorted(layout.working.iterdir()):
        if is_ignored(entry.name) or (entry.is_dir() and not entry.is_symlink()):   # sidecars: .json
            continue
        job_id, sep, name = entry.name.partition(WORKING_SEP)
        if job_id in skip:                # a job this watcher could not settle: not retried in a loop
            continue
        if not sep:
            job_id, name = new_job_id(), entry.name
        lock = JobLock(layout, job_id)
        if not lock.acquire():
            continue                      # a live watcher is on it
        if not entry.exists():            # it finished between our listing and our lock
            lock.release(remove=True)
            continue
        st = states.get(job_id)
        rel = st.info.get("rel", name) if st else name
        if not sep:                       # foreign file: give it a proper working name
            target = layout.working / working_name(job_id, name, layout.working)
            journal.append("claim", job_id, rel=rel, working=target.name, sidecar=None)
            os.rename(entry, target)
            entry = target
        job = Claim(job_id, rel, entry, lock, state=st or JournalState(job_id))
        side_name = st.info.get("sidecar") if st else None
        if side_name:
            side = entry.with_name(working_name(job_id, side_name, layout.working))
            if side.exists():
                job.sidecar, job.sidecar_name = side, side_name
            else:                         # crashed between the two renames: the sidecar is still in in/
                orig = layout.inbox / (Path(rel).parent / side_name)
                if orig.exists():
                    _take_sidecar(job, orig)
        jobs.append(job)
    return jobs


def clean_tmp(layout: Layout) -> list[Path]:
    """Remove scratch folders of jobs whose owner is gone (their lock is free); returns what went."""
    removed: list[Path] = []
    for d in sorted(layout.tmp.iterdir()):
        lock = JobLock(layout, d.name)
        if lock.acquire():
            try:
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
                else:
                    d.unlink(missing_ok=True)
                removed.append(d)
            finally:
                lock.release()
    return removed


def remove_stale_locks(layout: Layout) -> None:
    """Delete lock files nobody holds and whose job has no file left in working/ (housekeeping)."""
    live = {p.name.partition(WORKING_SEP)[0] for p in layout.working.iterdir()}
    for lf in layout.locks.glob("*.lock"):
        job_id = lf.stem
        if job_id in live or (layout.tmp / job_id).exists():
            continue
        lock = JobLock(layout, job_id)
        if lock.acquire():
            lock.release(remove=True)
