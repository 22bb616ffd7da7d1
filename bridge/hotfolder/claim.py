"""The hot folder's bookkeeping: folder layout, claims, per-job locks and the journal.

Why each piece exists:

* **Claim by atomic rename.** ``in/NAME`` is renamed to ``working/ID--NAME``; a rename is atomic,
  so of two watchers racing for one file exactly one succeeds (the other gets ``FileNotFoundError``).
* **Per-job lock** (``.stylebridge/locks/ID.lock``, ``fcntl.flock``), taken *before* the rename and
  held while the job runs.  The kernel drops it when the process dies (even ``kill -9``), so a
  watcher that finds ``working/ID--NAME`` with a free lock knows its owner is gone and may resume
  it, while a live peer's job is left alone.
* **Journal** (``.stylebridge/journal.jsonl``): fsync'd append-only JSON lines, one event per step
  (``claim``, ``started``, ``output-intent``, ``output-written``, ``done-intent``, ``done``,
  ``error``).  A restart replays it so finished work is neither lost nor redone: when the output was
  published but the original not yet moved, the restart only moves the original.
* **No-overwrite moves** (:func:`place`): ``os.link`` + ``unlink`` fails instead of replacing an
  existing file, so outputs, done/ and error/ never clobber anything even with two watchers.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

STATE_DIR = ".stylebridge"

# Names that are never inputs: hidden files, partial downloads/copies, editor and OS droppings.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "icon\r", ".ds_store"})
IGNORED_PREFIXES = (".", "~", "$")
IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", "~")
SETTINGS_SUFFIX = ".json"   # preset.json and sidecars: settings, never inputs


def is_ignored(name: str) -> bool:
    """True for names the watcher must never pick up as inputs (hidden, temporary, settings)."""
    low = name.lower()
    return (low in IGNORED_NAMES or low.startswith(IGNORED_PREFIXES)
            or low.endswith(IGNORED_SUFFIXES) or low.endswith(SETTINGS_SUFFIX))


@dataclass(frozen=True)
class Layout:
    """The hot folder's sub-folders.  ``rel`` paths below are POSIX paths relative to ``in/``."""

    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "in"

    @property
    def working(self) -> Path:
        return self.root / "working"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def error(self) -> Path:
        return self.root / "error"

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def locks(self) -> Path:
        return self.state / "locks"

    @property
    def tmp(self) -> Path:
        """Per-job scratch space (outputs being written); hidden, so never taken for an output."""
        return self.state / "tmp"

    @property
    def journal_path(self) -> Path:
        return self.state / "journal.jsonl"

    def create(self) -> "Layout":
        for d in (self.inbox, self.working, self.out, self.done, self.error, self.locks, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def job_tmp(self, job_id: str) -> Path:
        return self.tmp / job_id

    def inputs(self) -> list[Path]:
        """Candidate input files under ``in/`` (recursively), sorted, skipping ignored names and dirs."""
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(self.inbox):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(IGNORED_PREFIXES))
            for name in sorted(filenames):
                if not is_ignored(name):
                    found.append(Path(dirpath) / name)
        return found

    def rel(self, path: Path) -> str:
        return path.relative_to(self.inbox).as_posix()


# --------------------------------------------------------------------------------------------
# Journal


class Journal:
    """Append-only, fsync'd JSON lines shared by every watcher of one folder.

    Each append is a single ``write`` on an ``O_APPEND`` descriptor, so lines from two processes
    never interleave; a line torn by a power cut is skipped on replay.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # Terminate a line torn by a crash so the next record starts cleanly.
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    os.write(self._fd, b"\n")

    def append(self, event: str, job_id: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 3), "event": event, "job": job_id, "pid": os.getpid(), **fields}
        os.write(self._fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        os.fsync(self._fd)

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass

    def records(self) -> Iterator[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                for raw in fh:
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and "job" in rec and "event" in rec:
                        yield rec
        except FileNotFoundError:
            return

    def states(self) -> dict[str, "JobState"]:
        """Replay: the latest known state of every job."""
        states: dict[str, JobState] = {}
        for rec in self.records():
            st = states.setdefault(rec["job"], JobState(rec["job"]))
            st.apply(rec)
        return states


@dataclass
class JobState:
    """What the journal says about one job (the fields of its events, merged in order)."""

    job_id: str
    events: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def apply(self, rec: dict[str, Any]) -> None:
        self.events.append(rec["event"])
        self.info.update({k: v for k, v in rec.items() if k not in ("t", "event", "job", "pid")})

    @property
    def finished(self) -> bool:
        return "done" in self.events or "error" in self.events


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
# Jobs and claims


WORKING_SEP = "--"


@dataclass
class Job:
    """One claimed input: its id, where it came from, where it lies now, and its lock."""

    job_id: str
    rel: str                        # original path relative to in/ (POSIX), e.g. "portraits/a.jpg"
    working: Path                   # working/ID--a.jpg
    lock: JobLock
    sidecar: Path | None = None     # working/ID--a.json when a sidecar travelled with it
    sidecar_name: str | None = None  # its original name, e.g. "a.json"
    state: JobState | None = None   # journal state when resumed after a crash

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
    """The settings file beside an input: ``NAME.EXT.json`` or ``NAME.json``, if present."""
    for cand in (path.with_name(path.name + ".json"), path.with_name(path.stem + ".json")):
        if cand.name.lower() != "preset.json" and cand.is_file():
            return cand
    return None


def claim(layout: Layout, journal: Journal, path: Path) -> Job | None:
    """Take ``in/…/NAME`` (and its sidecar) into working/; None if another watcher got it first."""
    job_id = new_job_id()
    lock = JobLock(layout, job_id)
    if not lock.acquire():          # a fresh uuid: only fails on a broken filesystem
        return None
    rel = layout.rel(path)
    working = layout.working / f"{job_id}{WORKING_SEP}{path.name}"
    side = sidecar_for(path)
    journal.append("claim", job_id, rel=rel, working=working.name,
                   sidecar=side.name if side else None)
    try:
        os.rename(path, working)
    except FileNotFoundError:
        journal.append("lost", job_id)
        lock.release(remove=True)
        return None
    job = Job(job_id, rel, working, lock)
    if side is not None:
        _take_sidecar(job, side)
    return job


def _take_sidecar(job: Job, side: Path) -> None:
    dest = job.working.with_name(f"{job.job_id}{WORKING_SEP}{side.name}")
    try:
        os.rename(side, dest)
    except FileNotFoundError:
        return
    job.sidecar, job.sidecar_name = dest, side.name


def recover(layout: Layout, journal: Journal) -> list[Job]:
    """Jobs left in working/ by a dead watcher (their lock is free), oldest first, now locked by us.

    Sidecars in working/ (``*.json``) belong to their image's job and are not jobs; a working file
    with no journal entry at all (written by hand, or a journal deleted) is resumed as a top-level
    input.
    """
    states = journal.states()
    jobs: list[Job] = []
    for entry in sorted(layout.working.iterdir()):
        if not entry.is_file() or is_ignored(entry.name):   # sidecars end in .json
            continue
        job_id, sep, name = entry.name.partition(WORKING_SEP)
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
            target = layout.working / f"{job_id}{WORKING_SEP}{name}"
            journal.append("claim", job_id, rel=rel, working=target.name, sidecar=None)
            os.rename(entry, target)
            entry = target
        job = Job(job_id, rel, entry, lock, state=st or JobState(job_id))
        side_name = st.info.get("sidecar") if st else None
        if side_name:
            side = entry.with_name(f"{job_id}{WORKING_SEP}{side_name}")
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


# --------------------------------------------------------------------------------------------
# Moving files without overwriting


def candidates(wanted: Path) -> Iterator[Path]:
    """``wanted``, then ``stem-2.ext``, ``stem-3.ext``… (same rule as bridge.imaging.unique_path)."""
    yield wanted
    n = 2
    while True:
        yield wanted.with_name(f"{wanted.stem}-{n}{wanted.suffix}")
        n += 1


def place(src: Path, wanted: Path) -> Path:
    """Move ``src`` to ``wanted`` or the first free ``stem-N`` name beside it; never overwrite.

    ``os.link`` refuses an existing target atomically, so two watchers placing files of the same
    name both succeed under different names.  Filesystems without hard links fall back to
    checking :func:`bridge.imaging.unique_path`-style then renaming (a tiny race, no data loss
    for a single watcher).
    """
    wanted.parent.mkdir(parents=True, exist_ok=True)
    for cand in candidates(wanted):
        try:
            os.link(src, cand)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if cand.exists():
                continue
            os.rename(src, cand)
            return cand
        os.unlink(src)
        return cand
    raise AssertionError("unreachable")


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
