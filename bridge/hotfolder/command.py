"""``stylebridge watch DIR``: serve a hot folder until Ctrl-C (or once, with ``--once``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .watcher import DEFAULT_STABLE_SECONDS


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
                   help="send the work to a running `stylebridge serve` (e.g. http://127.0.0.1:8765) "
                        "instead of stylizing in this process")
    p.add_argument("--token", metavar="T", default=None,
                   help="the daemon's bearer token (default: $STYLEBRIDGE_TOKEN)")
    p.add_argument("--stable-seconds", metavar="S", type=float, default=DEFAULT_STABLE_SECONDS,
                   help="a file is picked up once its size and date have not changed for S seconds "
                        f"(default {DEFAULT_STABLE_SECONDS:g})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .process import DaemonEngine, InProcessEngine
    from .watcher import Watcher

    if args.stable_seconds < 0:
        print("stylebridge watch: --stable-seconds must be >= 0", file=sys.stderr)
        return 2
    if args.dir.exists() and not args.dir.is_dir():
        print(f"stylebridge watch: {args.dir} is a file, not a folder", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("STYLEBRIDGE_TOKEN")
    engine = DaemonEngine(args.daemon, token) if args.daemon else InProcessEngine()
    try:
        watcher = Watcher(args.dir, engine, stable_seconds=args.stable_seconds, once=args.once)
    except OSError as exc:
        print(f"stylebridge watch: cannot set up {args.dir}: {exc}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, lambda *_: watcher.stop())
    try:
        return watcher.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
