"""A daemon that stops itself when idle (``stylebridge serve --idle-exit SECONDS``), and ``serve --stop``.

Why: the GIMP plug-in starts a daemon when none answers; it holds the VGG weights (over a GB) and would keep
running after GIMP quits. Started with ``--idle-exit``, it stops after that long with no job queued or running
and no request. ``stylebridge serve --stop [--port P]`` stops the daemon this machine runs on that port: each
daemon writes its process id to ``$TMPDIR/stylebridge-serve-PORT.pid`` while it serves.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

CHECK_EVERY_S = 5.0          # how often the watcher looks (at most; less for a short --idle-exit)
STOP_WAIT_S = 30.0           # `serve --stop` waits this long for the daemon to go


class IdleWatch:
    """The time of the last request, and a thread that ends the server after ``seconds`` with nothing to do."""

    def __init__(self, seconds: float, busy: Callable[[], bool], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.seconds = float(seconds)
        self.busy = busy
        self.clock = clock
        self.last = clock()
        self._stop = threading.Event()

    def touch(self) -> None:
        self.last = self.clock()

    def due(self) -> bool:
        """True when the daemon has been idle for ``seconds`` (a queued or running job counts as activity)."""
        if self.seconds <= 0:
            return False
        if self.busy():
            self.touch()
            return False
        return self.clock() - self.last >= self.seconds

    def middleware(self, app: Any) -> Any:
        """An ASGI wrapper: every HTTP request (and its end) counts as activity."""
        async def wrapped(scope: dict, receive: Any, send: Any) -> None:
            if scope.get("type") == "http":
                self.touch()
                try:
                    await app(scope, receive, send)
                finally:
                    self.touch()
                return
            await app(scope, receive, send)
        return wrapped

    def watch(self, on_idle: Callable[[], None]) -> threading.Thread:
        """Start the watcher: ``on_idle()`` once, when :meth:`due`."""
        def run() -> None:
            step = max(0.05, min(CHECK_EVERY_S, self.seconds / 4))
            while not self._stop.wait(step):
                if self.due():
                    on_idle()
                    return
        thread = threading.Thread(target=run, name="stylebridge-idle", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def pid_path(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"stylebridge-serve-{int(port)}.pid"


def write_pid(port: int) -> Path:
    path = pid_path(port)
    path.write_text(f"{os.getpid()}\n")
    return path


def remove_pid(path: Path) -> None:
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def stop_daemon(port: int, answers: Callable[[], bool], wait_s: float = STOP_WAIT_S) -> tuple[bool, str]:
    """(stopped, message) for ``serve --stop``: SIGTERM to the daemon serving ``port`` on this machine (its
    unfinished jobs stay for the next one), then wait until it no longer ``answers()``."""
    path = pid_path(port)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        if answers():
            return False, (f"a daemon answers on port {port} but was not started on this machine by this user "
                           f"(no {path}): stop it where it runs (Ctrl-C)")
        return True, f"no stylebridge daemon runs on port {port}"
    if not answers():               # never signal a process id left over from a daemon that is gone
        path.unlink(missing_ok=True)
        return True, f"no stylebridge daemon runs on port {port} (a stale {path} was removed)"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return True, f"no stylebridge daemon runs on port {port} (a stale {path} was removed)"
    except PermissionError:
        return False, f"the daemon on port {port} (process {pid}) belongs to another user: stop it as that user"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not answers():
            return True, f"stopped the stylebridge daemon on port {port} (process {pid})"
        time.sleep(0.2)
    return False, f"the daemon on port {port} (process {pid}) did not stop within {wait_s:.0f} s"
