"""The hot folder's terminal: one line per file and stage."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REPEAT_LOG_SECONDS = 60.0     # the same warning (or reminder) at most this often


class Reporter:
    """One line per file and stage on the terminal: ``[time] NAME  STYLE  STAGE  PCT%``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def line(self, rel: str, stage: str, percent: float | None = None, style: str = "") -> None:
        pct = f"{percent:5.1f}%" if percent is not None else ""
        parts = [time.strftime("%H:%M:%S"), rel, style, stage, pct]
        text = "  ".join(p for p in parts if p)
        try:
            try:
                print(text, file=self.stream, flush=True)
            except UnicodeEncodeError:       # an odd name (undecodable bytes) on a strict terminal
                enc = getattr(self.stream, "encoding", None) or "utf-8"
                print(text.encode(enc, "backslashreplace").decode(enc, "replace"), file=self.stream, flush=True)
        except (OSError, ValueError):
            pass   # a closed terminal must not stop the watcher
