"""The hot folder's layout: its sub-folders, which names are inputs, and what kind of file a name is.

``in/`` (drop files here; sub-folders are droplets), ``working/`` (claimed jobs, ``ID--NAME``), ``out/``,
``done/``, ``error/`` and the hidden state folder ``.stylebridge/`` (the journal, per-job locks, scratch
space). The names of that state live here so the claims, the journal and the presets agree on them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".stylebridge"
WORKING_SEP = "--"            # working/ID--NAME: the job id, then the original name

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
# File kinds


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
    what = file_kind(target.st_mode)
    if what is None:
        return None
    return f"it is {'a symbolic link to ' if link else ''}{what}, not a file"


def file_kind(mode: int) -> str | None:
    """None for a regular file; else what it is, in words (for error notes and warnings)."""
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return what
    return "a special file"

