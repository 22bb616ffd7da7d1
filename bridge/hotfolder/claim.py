"""The hot folder's bookkeeping: folder layout, claims, per-job locks and the journal.

Why each piece exists:

* **Claim by atomic rename.** ``in/NAME`` is renamed to ``working/ID--NAME``; a rename is atomic,
  so of two watchers racing for one file exactly one succeeds (the other gets ``FileNotFoundError``).
  FIFOs, sockets, devices and links to them are claimed the same way (a rename never opens them)
  and sent to error/.
* **Per-job lock** (``.stylebridge/locks/ID.lock``, ``fcntl.flock``), taken *before* the rename and
  held while the job runs.  The kernel drops it when the process dies (even ``kill -9``), so a
  watcher that finds ``working/ID--NAME`` with a free lock knows its owner is gone and may resume
  it, while a live peer's job is left alone.
* **Journal** (``.stylebridge/journal.jsonl``): fsync'd append-only JSON lines, one event per step
  (``claim``, ``started``, ``output-intent``, ``output-written``, ``done-intent``, ``done``,
  ``error``).  A restart replays it so finished work is neither lost nor redone: when the output was
  published but the original not yet moved, the restart only moves the original.
* **No-overwrite moves** (:func:`place` = :func:`bridge.outputs.publish`, the one rule for every writer):
  each name is claimed atomically and never replaces an existing file, so outputs, done/ and error/
  never clobber anything even with two watchers; across file systems a hidden ``.NAME.PID.part`` copy
  is claimed the same way and never outlives a failure.
* **Names that fit** (:func:`bridge.outputs.fit_name`): ``ID--``, ``-2`` or ``.txt`` can push a legal
  255-byte name over NAME_MAX; such names are shortened (extension kept), the journal keeps the original.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..outputs import fit_name, name_bytes, name_max, part_name, publish

log = logging.getLogger("stylebridge.hotfolder")

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
        """Candidate input files under ``in/`` (recursively), sorted, skipping ignored names and dirs.

        Real sub-folders are droplets and are walked; a *link* to a folder is not walked but listed
        as an entry, so it goes to error/ with a reason instead of being silently ignored.  FIFOs,
        sockets and devices are listed too (never opened: see :func:`regular_file_problem`).
        """
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(self.inbox):
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(IGNORED_PREFIXES) and d not in links)
            for name in sorted(filenames + links):
                if not is_ignored(name):
                    found.append(Path(dirpath) / name)
        return found

    def rel(self, path: Path) -> str:
        return path.relative_to(self.inbox).as_posix()


# --------------------------------------------------------------------------------------------
# File kinds and errors


def regular_file_problem(path: Path) -> str | None:
    """None if ``path`` is (a link to) a regular file; else what it is, for the error note.

    Uses ``lstat``/``stat`` only: a FIFO, socket or device is never opened (opening a FIFO for
    reading blocks until a writer comes, which would hang the watcher).
    """
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return None                        # gone meanwhile: the claim will notice
    target = lst
    link = stat.S_ISLNK(lst.st_mode)
    if link:
        try:
            target = os.stat(path)
        except OSError as exc:
            return f"it is a symbolic link to {os.readlink(path)!r}, which cannot be followed ({exc.strerror})"
    what = _kind(target.st_mode)
    if what is None:
        return None
    return f"it is {'a symbolic link to ' if link else ''}{what}, not a file"


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return what
    return "a special file"


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" / "quota exceeded": the file is not at fault, so it waits."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


# --------------------------------------------------------------------------------------------
# Journal


def _set_aside_unless_regular(path: Path) -> None:
    """A journal that is not a regular file (a link, a FIFO that would block the watcher, a folder) holds no
    records of ours: it is renamed aside (``.corrupt``) with one warning, and a fresh journal begins."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    what = "a symbolic link" if stat.S_ISLNK(mode) else (_kind(mode) or "a special file")
    aside = path.with_name(path.name + ".corrupt")
    log.warning(
        "the journal %s is %s, not a file: moved to %s, a fresh journal begins", path, what, aside.name)
    os.replace(path, aside)


class Journal:
    """Append-only, fsync'd JSON lines shared by every watcher of one folder.

    Each append is a single ``write`` on an ``O_APPEND`` descriptor, so lines from two processes
    never interleave; a line torn by a power cut is skipped on replay.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _set_aside_unless_regular(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        self._torn = False
        self._reported = 0                 # bad lines already reported (said once, again only if more appear)
        # Terminate a line torn by a crash so the next record starts cleanly.
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._torn = True      # the next append starts a fresh line (also on a full disk)

    def append(self, event: str, job_id: str, **fields: Any) -> None:
        """Write one record; OSError (e.g. ENOSPC) leaves the journal replayable for the next one."""
        record = {"t": round(time.time(), 3), "event": event, "job": job_id, "pid": os.getpid(), **fields}
        try:
            line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        except UnicodeEncodeError:         # a name with undecodable bytes: JSON escapes round-trip
            line = (json.dumps(record, ensure_ascii=True) + "\n").encode("ascii")
        if self._torn:                     # the last record was cut by a full disk: end that line first
            line = b"\n" + line
        written = os.write(self._fd, line)
        if written < len(line):            # a short write on a nearly full disk
            self._torn = True
            rest = os.write(self._fd, line[written:])   # raises ENOSPC if it really is full
            if written + rest < len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        self._torn = False
        os.fsync(self._fd)

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass

    def records(self) -> Iterator[dict[str, Any]]:
        """The valid records, in order (:func:`parse_record`). A line that is not one (damaged, hand-edited,
        of a newer version) is skipped, and the lines skipped are reported once, in one warning line (their
        count and the first one's number); the unterminated last line (an append cut by a crash, or one being
        written now) is skipped silently."""
        bad, first, first_why = 0, 0, ""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return
        with fh:
            number = 0
            while True:
                raw = fh.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                number += 1
                if not raw.endswith(b"\n"):
                    if len(raw) <= MAX_LINE_BYTES:
                        break                      # the last line, unterminated: torn or still being written
                    while raw and not raw.endswith(b"\n"):      # too long: skip to its end
                        raw = fh.readline(MAX_LINE_BYTES)
                    rec, why = None, f"over {MAX_LINE_BYTES // 1024} KB"
                elif not raw.strip():
                    continue
                else:
                    rec, why = parse_record(raw)
                if rec is None:
                    bad += 1
                    if bad == 1:
                        first, first_why = number, why
                    continue
                yield rec
        self._report(bad, first, first_why)

    def _report(self, bad: int, first: int, why: str) -> None:
        if bad <= self._reported:
            return
        self._reported = bad
        log.warning("hot folder journal %s: %d line%s that %s not a valid record skipped (the first: line %d, %s); "
                    "crash recovery goes on with the others", self.path, bad, "s" if bad > 1 else "",
                    "are" if bad > 1 else "is", first, why)

    def states(self) -> dict[str, "JobState"]:
        """Replay: the latest known state of every job."""
        states: dict[str, JobState] = {}
        for rec in self.records():
            st = states.setdefault(rec["job"], JobState(rec["job"]))
            st.apply(rec)
        return states


MAX_LINE_BYTES = 256 * 1024      # a record is well under 64 KB (names of at most 4096 bytes, escaped)
EVENTS = frozenset({"claim", "lost", "started", "resumed", "interrupted", "deferred", "output-intent",
                    "output-written", "done-intent", "done", "error"})
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Fields naming files: the folder they must be in (relative to the hot folder's root; "" = in/'s own paths).
_PATHS: dict[str, tuple[str, ...]] = {"rel": ("",), "tmp": (f"{STATE_DIR}/tmp/",), "wanted": ("out/",),
                                      "output": ("out/",), "done": ("done/", "error/"),
                                      "recovered": ("done/", "error/"), "error_file": ("error/",)}
_NAMES = ("working", "sidecar")      # plain names in working/ or beside the input
_MAX_PATH = 4096


def parse_record(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """(the record, "") for a valid journal line, else (None, why): a JSON object with a job id (text, a
    name: no path), a known event, a time and pid that are numbers, and every file it names a relative path
    in its own folder (never out of the hot folder); unknown fields only as plain values."""
    try:
        rec = json.loads(raw)
    except RecursionError:
        return None, "nested too deeply"
    except ValueError:                      # (UnicodeDecodeError included)
        return None, "not JSON text"
    if not isinstance(rec, dict):
        return None, "not a JSON object"
    job = rec.get("job")
    if not isinstance(job, str) or not _JOB_ID.fullmatch(job) or WORKING_SEP in job:
        return None, "no valid job id"
    if rec.get("event") not in EVENTS:
        return None, "no known event"
    for key, value in rec.items():
        if key in ("t", "pid"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None, f"{key} is not a number"
        elif key in _PATHS:
            if value is None and key not in ("rel", "tmp", "wanted", "output"):
                continue
            if not _inside(value, _PATHS[key]):
                return None, f"{key} is not a path inside the hot folder's {' or '.join(_PATHS[key]) or 'in/'}"
        elif key in _NAMES:
            if value is not None and (not isinstance(value, str) or not value or "/" in value or "\0" in value
                                      or value in (".", "..") or len(value) > _MAX_PATH):
                return None, f"{key} is not a file name"
        elif key not in ("job", "event") and not (value is None or isinstance(value, (str, int, float, bool))):
            return None, f"{key} is not a plain value"
    if rec["event"] == "output-intent" and not ("tmp" in rec and "wanted" in rec):
        return None, "an output-intent without tmp and wanted"
    return rec, ""


def _inside(value: Any, prefixes: tuple[str, ...]) -> bool:
    if not isinstance(value, str) or not value or len(value) > _MAX_PATH or "\0" in value:
        return False
    if not any(value.startswith(p) for p in prefixes):
        return False
    return all(part not in ("", ".", "..") for part in value.split("/"))


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


def claim(layout: Layout, journal: Journal, path: Path) -> Job | None:
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
        _quietly(journal.append, "lost", job_id)
        lock.release(remove=True)
        return None
    except BaseException:
        # Not taken (a full disk for the journal, in/SUB on another disk, no permission...): the
        # file stays in in/ and the caller decides; an orphan "claim" record is harmless on replay.
        _quietly(journal.append, "lost", job_id)
        lock.release(remove=True)
        raise
    _keep_link_target(working, path.parent)
    job = Job(job_id, rel, working, lock)
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


def _quietly(fn: Any, *args: Any, **kwargs: Any) -> None:
    """Best-effort bookkeeping (a record that may not fit on a full disk)."""
    try:
        fn(*args, **kwargs)
    except OSError:
        pass


def _take_sidecar(job: Job, side: Path) -> None:
    dest = job.working.with_name(working_name(job.job_id, side.name, job.working.parent))
    try:
        os.rename(side, dest)
    except OSError:                # gone meanwhile, or cannot be moved: the job runs without it
        return
    job.sidecar, job.sidecar_name = dest, side.name


def recover(layout: Layout, journal: Journal, skip: Iterable[str] = ()) -> list[Job]:
    """Jobs left in working/ by a dead watcher (their lock is free), oldest first, now locked by us.

    Sidecars in working/ (``*.json``) belong to their image's job and are not jobs; a working file
    with no journal entry at all (written by hand, or a journal deleted) is resumed as a top-level
    input.
    """
    states = journal.states()
    skip = set(skip)
    jobs: list[Job] = []
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
        job = Job(job_id, rel, entry, lock, state=st or JobState(job_id))
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


# --------------------------------------------------------------------------------------------
# Moving files without overwriting: bridge.outputs is the one home of the rule


def place(src: Path, wanted: Path, *, keep_source: bool = False) -> Path:
    """Put ``src`` at ``wanted`` or the first free ``stem-N`` name beside it; never overwrite.

    :func:`bridge.outputs.publish` (atomic no-replace claims, a hidden ``.NAME.PID.part`` copy across
    file systems, links moved as links), with the hot folder's two needs: the folder (``out/SUB``) is
    created, and names are shortened to NAME_MAX instead of refused (``fit``). ``keep_source`` leaves
    ``src`` in place (the caller removes it after journalling), and the published file is then the same
    inode (a hard link) wherever the disk allows, which is how a restart recognises its own output.
    """
    wanted.parent.mkdir(parents=True, exist_ok=True)
    return publish(src, wanted, keep_source=keep_source, fit=True)
