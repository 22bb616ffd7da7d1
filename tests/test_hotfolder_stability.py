"""The completeness check on real files with a real watchdog observer (no engine needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from watchdog.observers import Observer

from bridge.hotfolder.stability import StabilityTracker, Wakeup


def _observe(folder: Path, tracker: StabilityTracker) -> Observer:
    import queue
    obs = Observer()
    obs.schedule(Wakeup(tracker, queue.Queue()), str(folder), recursive=True)
    obs.start()
    return obs


def test_slow_chunked_copy_is_ready_only_once_complete(tmp_path: Path) -> None:
    tracker = StabilityTracker(stable_seconds=0.3)
    obs = _observe(tmp_path, tracker)
    target = tmp_path / "big.jpg"
    total = 12
    written = threading.Event()

    def copy_slowly() -> None:
        with open(target, "wb") as fh:            # one open for the whole copy
            for _ in range(total):
                fh.write(b"\xab" * 8192)
                fh.flush()
                time.sleep(0.2)
        written.set()

    t = threading.Thread(target=copy_slowly)
    t.start()
    try:
        early: list[int] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready = tracker.ready([target] if target.exists() else [])
            if ready:
                early.append(target.stat().st_size)
                break
            time.sleep(0.05)
        t.join()
        assert written.is_set()
        assert early == [total * 8192], "picked up before the copy was complete"
    finally:
        obs.stop()
        obs.join()


def test_open_writer_that_pauses_blocks_until_closed(tmp_path: Path) -> None:
    """A copy that stalls longer than stable_seconds while still open is not picked up (inotify)."""
    tracker = StabilityTracker(stable_seconds=0.4, open_grace=30)
    obs = _observe(tmp_path, tracker)
    target = tmp_path / "stall.png"
    try:
        fh = open(target, "wb")
        fh.write(b"x" * 1000)
        fh.flush()
        deadline = time.monotonic() + 1.6            # 4 stable periods with no change
        while time.monotonic() < deadline:
            assert tracker.ready([target]) == []
            time.sleep(0.05)
        fh.write(b"y" * 1000)
        fh.close()
        deadline = time.monotonic() + 5
        ready: list[Path] = []
        while time.monotonic() < deadline and not ready:
            ready = tracker.ready([target])
            time.sleep(0.05)
        assert ready == [target] and target.stat().st_size == 2000
    finally:
        obs.stop()
        obs.join()


def test_without_events_stability_alone_decides(tmp_path: Path) -> None:
    """On a network share inotify reports nothing: size+mtime stability still works."""
    tracker = StabilityTracker(stable_seconds=0.2)
    f = tmp_path / "a.jpg"
    f.write_bytes(b"1")
    assert tracker.ready([f]) == []
    time.sleep(0.25)
    assert tracker.ready([f]) == [f]
    f.write_bytes(b"12")
    assert tracker.ready([f]) == []
