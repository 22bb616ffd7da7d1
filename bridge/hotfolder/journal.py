"""The hot folder's journal (``.stylebridge/journal.jsonl``): what happened to every job, for crash recovery.

fsync'd append-only JSON lines, one event per step (``claim``, ``started``, ``output-intent``,
``output-written``, ``done-intent``, ``done``, ``error``, and ``lost``, ``resumed``, ``interrupted``,
``deferred``).  A restart replays it (:meth:`Journal.states`) so finished work is neither lost nor redone:
when the output was published but the original not yet moved, the restart only moves the original.
Each line is checked before it is believed (:func:`parse_record`): a damaged or hand-edited line is
skipped with one warning, and no line can point outside the hot folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .layout import STATE_DIR, WORKING_SEP, file_kind

log = logging.getLogger("stylebridge.hotfolder")


def _set_aside_unless_regular(path: Path) -> None:
    """A journal that is not a regular file (a link, a FIFO that would block the watcher, a folder) holds no
    records of ours: it is renamed aside (``.corrupt``) with one warning, and a fresh journal begins."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    what = "a symbolic link" if stat.S_ISLNK(mode) else (file_kind(mode) or "a special file")
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

    def try_append(self, event: str, job_id: str, **fields: Any) -> None:
        """:meth:`append` for best-effort bookkeeping: a record that does not fit on a full disk must not
        stop anything (the replay does without it)."""
        try:
            self.append(event, job_id, **fields)
        except OSError:
            pass

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

    def states(self) -> dict[str, "JournalState"]:
        """Replay: the latest known state of every job."""
        states: dict[str, JournalState] = {}
        for rec in self.records():
            st = states.setdefault(rec["job"], JournalState(rec["job"]))
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
class JournalState:
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

