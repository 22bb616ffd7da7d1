"""``stylebridge watch DIR``: serve a hot folder until Ctrl-C (or once, with ``--once``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from ..protocol import TOKEN_ENV
from ..settings import SERVICE
from .stability import DEFAULT_STABLE_SECONDS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "watch", help="serve a hot folder: photos dropped into DIR/in become layered PSDs in DIR/out",
        description="Creates DIR/in, DIR/working, DIR/out, DIR/done and DIR/error. Settings come from "
                    "DIR/preset.json, in/SUB/preset.json (one folder = one droplet) and NAME.json sidecars; "
                    "see docs/hotfolder.md.")
    p.add_argument("dir", metavar="DIR", type=Path, help="the hot folder (created if missing)")
    p.add_argument("--once", action="store_true",
                   help="process what is there (including interrupted jobs) and exit: 0 if all succeeded, "
                        "1 if any went to error/")
    p.add_argument("--daemon", metavar="URL", default=None,
                   help=f"send the work to a running `stylebridge serve` (e.g. {SERVICE.url}) "
                        "instead of stylizing in this process")
    p.add_argument("--token", metavar="T", default=None,
                   help=f"the daemon's bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--stable-seconds", metavar="S", type=float, default=DEFAULT_STABLE_SECONDS,
                   help="a file is picked up once its size and date have not changed for S seconds "
                        f"(default {DEFAULT_STABLE_SECONDS:g})")
    p.add_argument("--checkpoint-seconds", metavar="S", type=float, default=SERVICE.checkpoint_seconds,
                   help="save a running job's checkpoint at least this often (and at each stage's end): after a "
                        f"crash or restart it resumes losing at most this much work (default "
                        f"{SERVICE.checkpoint_seconds:g})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .process import DaemonEngine, InProcessEngine
    from .watcher import Watcher

    if args.stable_seconds < 0:
        print("stylebridge watch: --stable-seconds must be >= 0", file=sys.stderr)
        return 2
    if not args.checkpoint_seconds > 0:
        print("stylebridge watch: --checkpoint-seconds must be > 0", file=sys.stderr)
        return 2
    if args.dir.exists() and not args.dir.is_dir():
        print(f"stylebridge watch: {args.dir} is a file, not a folder", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("STYLEBRIDGE_TOKEN")
    engine = DaemonEngine(args.daemon, token) if args.daemon else InProcessEngine()
    try:
        watcher = Watcher(args.dir, engine, stable_seconds=args.stable_seconds, once=args.once,
                          checkpoint_seconds=args.checkpoint_seconds)
    except OSError as exc:
        print(f"stylebridge watch: cannot set up {args.dir}: {exc}", file=sys.stderr)
        return 2
    stopper = _Stopper(watcher)
    try:
        rc = watcher.run()
    finally:
        stopper.close()
    if stopper.signum is not None:
        # Everything is on disk (journal fsync'd, locks released); skip the interpreter's teardown,
        # which takes seconds once torch is loaded, so a stop request is honoured at once.
        stopper.exit_now(130 if stopper.signum == signal.SIGINT else 0)
    return rc


STOP_GRACE_SECONDS = 4.0   # after SIGTERM/SIGINT the current job is cancelled; past this, exit anyway


class _Stopper:
    """SIGTERM/SIGINT stop the watcher within a few seconds whatever it is doing.

    Python runs signal handlers only in the main thread, between bytecodes: while the main thread
    sits in a long C call (a torch operation, a blocking system call) a handler waits.  So the
    handlers do nothing themselves; Python's C-level handler writes the signal number to a wake-up
    pipe (``signal.set_wakeup_fd``) at once, from whichever thread got the signal, and a helper
    thread reading that pipe acts.  The first signal cancels the current job (it stays in working/
    and resumes at the next start); if the watcher has not returned ``STOP_GRACE_SECONDS`` later,
    the process exits anyway: every step is journalled and the job locks die with the process,
    exactly as after a crash.  A second signal exits at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, watcher: "object") -> None:
        self.watcher = watcher
        self.signum: int | None = None
        self._done = threading.Event()
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._old_handlers = {s: signal.signal(s, self._ignore) for s in self.SIGNALS}
        self._old_wakeup = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._wait, name="stylebridge-signals", daemon=True)
        self._thread.start()

    @staticmethod
    def _ignore(signum: int, frame: object) -> None:
        """The real work happens in :meth:`_wait` (no KeyboardInterrupt at a random place)."""

    def _wait(self) -> None:
        import select
        while not self._done.is_set():
            ready, _, _ = select.select([self._r], [], [], 0.5)
            if not ready:
                continue
            for signum in os.read(self._r, 64):
                if signum not in self.SIGNALS:
                    continue
                if self.signum is None:
                    self.signum = signum
                    name = signal.Signals(signum).name
                    print(f"stylebridge watch: {name}: stopping (the current file resumes at the next start)",
                          file=sys.stderr, flush=True)
                    self.watcher.stop()  # type: ignore[attr-defined]
                    threading.Thread(target=self._deadline, daemon=True).start()
                else:                     # a second signal: no more waiting
                    self._exit("stopped at once (second signal)")

    def _deadline(self) -> None:
        if not self._done.wait(STOP_GRACE_SECONDS):
            self._exit(f"did not stop within {STOP_GRACE_SECONDS:g} s; exiting now "
                       "(the current file stays in working/ and resumes at the next start)")

    def _exit(self, why: str) -> None:
        try:
            print(f"stylebridge watch: {why}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        self.exit_now(130 if self.signum == signal.SIGINT else 0)

    @staticmethod
    def exit_now(code: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)
        signal.set_wakeup_fd(self._old_wakeup)
        for s, old in self._old_handlers.items():
            signal.signal(s, old)
        for fd in (self._r, self._w):
            os.close(fd)
