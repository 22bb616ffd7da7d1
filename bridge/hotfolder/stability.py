"""When a file dropped into in/ is complete, so the watcher may take it.

A file is complete when its size and mtime have not changed for ``stable_seconds`` *and* no
open-for-writing is pending (inotify's open/close-after-write events, reported by watchdog as
``FileOpenedEvent`` / ``FileClosedEvent`` on Linux).  watchdog's ``created`` event arrives when a
copy *starts*, so it is only a wake-up; the watcher's periodic scan of ``in/`` is the source of truth
(it also covers network shares, where inotify sees nothing).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from watchdog.events import (FileClosedEvent, FileClosedNoWriteEvent, FileDeletedEvent, FileMovedEvent,
                             FileOpenedEvent, FileSystemEvent, FileSystemEventHandler)

DEFAULT_STABLE_SECONDS = 2.0
OPEN_GRACE_FACTOR = 15.0      # an open never seen closed stops blocking after this many stable periods


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


class StabilityTracker:
    """Decides when a file in ``in/`` is complete: stable size+mtime and no pending writer."""

    def __init__(self, stable_seconds: float, open_grace: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stable_seconds = stable_seconds
        self.open_grace = open_grace if open_grace is not None else max(10.0, stable_seconds * OPEN_GRACE_FACTOR)
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._opens: dict[str, int] = {}
        self.lock = threading.Lock()

    def on_event(self, event: FileSystemEvent) -> None:
        """Track open/close pairs (inotify); a close-after-write settles a writer."""
        if event.is_directory:
            return
        path = os.fsdecode(event.src_path)
        with self.lock:
            if isinstance(event, FileOpenedEvent):
                self._opens[path] = self._opens.get(path, 0) + 1
            elif isinstance(event, (FileClosedEvent, FileClosedNoWriteEvent)):
                n = self._opens.get(path, 0) - 1
                if n > 0:
                    self._opens[path] = n
                else:
                    self._opens.pop(path, None)
            elif isinstance(event, (FileDeletedEvent, FileMovedEvent)):
                self._opens.pop(path, None)
                self._seen.pop(path, None)

    def ready(self, paths: list[Path]) -> list[Path]:
        """Those of ``paths`` that are complete now (and forget files no longer listed)."""
        now = self._clock()
        out: list[Path] = []
        keys = set()
        with self.lock:
            for p in paths:
                key = str(p)
                keys.add(key)
                try:
                    st = p.stat()
                except OSError:
                    try:
                        st = p.lstat()       # a dangling link is "stable" too: it goes to error/
                    except OSError:
                        continue
                seen = self._seen.get(key)
                if seen is None or seen.size != st.st_size or seen.mtime_ns != st.st_mtime_ns:
                    self._seen[key] = _Seen(st.st_size, st.st_mtime_ns, now)
                    continue
                quiet = now - seen.since
                if quiet < self.stable_seconds:
                    continue
                if self._opens.get(key, 0) > 0 and quiet < self.open_grace:
                    continue            # someone still has it open (a slow copy paused)
                out.append(p)
            for key in list(self._seen):
                if key not in keys:
                    del self._seen[key]
        return out

    def forget(self, path: Path) -> None:
        with self.lock:
            self._seen.pop(str(path), None)
            self._opens.pop(str(path), None)


class Wakeup(FileSystemEventHandler):
    """watchdog's handler: every event feeds the tracker (open/close pairs) and wakes the watcher's loop."""

    def __init__(self, tracker: StabilityTracker, wake: "queue.Queue[FileSystemEvent]") -> None:
        self.tracker = tracker
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.tracker.on_event(event)
        self.wake.put(event)
