"""Hours-long hot-folder jobs: the engine's checkpoint per job, resume after kill -9 and after a polite
stop, a checkpoint that cannot be written. The real watcher in this process (tests/inprocess.py), the real
engine on tiny images (64 px photo, size 48, one stage); kill -9 of a real ``stylebridge watch`` and of a real
``stylebridge serve`` process in the tests marked ``e2e`` (forked from this one: tests/inprocess.py Forked)."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import pytest

from bridge.daemon.client import DaemonClient
from bridge.engine.checkpoint import FileCheckpoint
from bridge.hotfolder.process import DaemonEngine, InProcessEngine
from bridge.hotfolder.report import Reporter
from bridge.hotfolder.watcher import Watcher

from inprocess import Forked, WatcherThread, daemon_in_thread, forked_serve, watch_once
from test_hotfolder_watch import STABLE, _free_port, _Lines, _watch_args, events, files, make_hot, make_photo

ITERATIONS = 30
FAST = ("--checkpoint-seconds", "0.3")
FAST_S = 0.3


def checkpoints(root: Path) -> list[Path]:
    folder = root / ".stylebridge" / "checkpoints"
    return sorted(p for p in folder.glob("*.npz")) if folder.is_dir() else []


def saved_iteration(root: Path) -> int:
    [path] = checkpoints(root)
    state = FileCheckpoint(path).load()
    assert state is not None
    return state.iteration


def rerun_resumes(root: Path, saved: int) -> str:
    """``watch --once`` (in this process) finishes the job, saying it went on from its checkpoint (not from zero)."""
    rc, text = watch_once(root, stable_seconds=STABLE, checkpoint_seconds=FAST_S)
    assert rc == 0, text
    found = re.search(r"resumed from its checkpoint: (\d+) of (\d+) iterations were already done", text)
    assert found, text
    assert int(found.group(1)) >= saved > 0 and int(found.group(2)) == ITERATIONS
    assert files(root / "out") == ["photo.psd"] and files(root / "done") == ["photo.jpg"]
    assert files(root / "working") == [] and files(root / "error") == []
    assert checkpoints(root) == []                          # removed once the PSD is published
    return text


@pytest.mark.e2e
def test_kill_9_mid_job_then_restart_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    root = make_hot(tmp_path, iterations=ITERATIONS, size=48)
    make_photo(root / "in" / "photo.jpg", 64)
    proc = Forked(_watch_args(root, *FAST))                      # a real process (tests/inprocess.py)
    out = _Lines(proc)
    try:
        deadline = time.monotonic() + 120
        while not checkpoints(root) or saved_iteration(root) < 4:
            assert time.monotonic() < deadline and proc.poll() is None, "".join(out.lines)
            time.sleep(0.1)
    finally:
        proc.kill()                                            # SIGKILL: no cleanup at all
        proc.wait(timeout=30)
    assert proc.returncode == -9
    assert files(root / "out") == [] and len(files(root / "working")) == 1
    saved = saved_iteration(root)
    assert saved < ITERATIONS
    rerun_resumes(root, saved)
    evs = [e for e, _ in events(root)]
    assert evs.count("claim") == 1 and evs.count("resumed") == 1 and evs.count("done") == 1


def test_a_polite_stop_saves_a_checkpoint_where_it_stopped(tmp_path: Path) -> None:
    """``Watcher.stop`` (what SIGTERM calls, bridge/hotfolder/command.py) pauses the job and saves its checkpoint."""
    root = make_hot(tmp_path, iterations=ITERATIONS, size=48)
    make_photo(root / "in" / "photo.jpg", 64)
    # The default interval (minutes): the only checkpoint is the one the stop itself saves.
    with WatcherThread(root, stable_seconds=STABLE) as w:
        assert w.wait_for("10.0%", timeout=120), w.output     # ITERATIONS / 10 done
        assert checkpoints(root) == []
        assert w.stop() == 0, w.output
    assert ("interrupted", "photo.jpg") in events(root)
    saved = saved_iteration(root)
    assert saved >= ITERATIONS // 10
    rerun_resumes(root, saved)


def test_a_checkpoint_that_cannot_be_written_is_one_clear_line_and_the_job_finishes(tmp_path: Path) -> None:
    root = make_hot(tmp_path, iterations=8, size=48)
    (root / ".stylebridge").mkdir()
    (root / ".stylebridge" / "checkpoints").write_text("in the way")   # no folder can be made there
    make_photo(root / "in" / "photo.jpg", 64)
    stream = io.StringIO()
    watcher = Watcher(root, InProcessEngine(), stable_seconds=STABLE, once=True, reporter=Reporter(stream),
                      checkpoint_seconds=0.05)
    with pytest.warns(RuntimeWarning, match="could not be saved"):     # the engine's own warning, once
        assert watcher.run() == 0, stream.getvalue()
    lines = [line for line in stream.getvalue().splitlines() if "checkpoint could not be saved" in line]
    assert len(lines) == 1, stream.getvalue()                # said once, not at every save
    assert "warning:" in lines[0] and "free some disk space" in lines[0]
    assert files(root / "out") == ["photo.psd"] and files(root / "error") == []
    assert (root / ".stylebridge" / "checkpoints").read_text() == "in the way"
    assert not list((root / ".stylebridge").glob("**/*.tmp"))


@pytest.mark.e2e
def test_daemon_mode_follows_its_job_across_a_kill_9_of_the_daemon(tmp_path: Path) -> None:
    """`watch --daemon`: the daemon (a real ``stylebridge serve``) is killed mid-job and started again on the same
    data folder (the real app, in this process: tests/inprocess.py); it takes the job over (same id, from its
    checkpoint) and the watcher follows it on instead of sending it again."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "daemon"
    root = make_hot(tmp_path, iterations=ITERATIONS, size=48)
    make_photo(root / "in" / "photo.jpg", 64)
    serve, _ = forked_serve(data, "--device", "cpu", *FAST, port=port)    # a real process (tests/inprocess.py)
    threading.Thread(target=lambda: [None for _ in serve.stdout], daemon=True).start()
    stream = io.StringIO()
    watcher = Watcher(root, DaemonEngine(url, ""), stable_seconds=STABLE, reporter=Reporter(stream))
    runner = threading.Thread(target=watcher.run)
    runner.start()
    client = DaemonClient(url, token="", timeout=10)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, stream.getvalue()
            jobs = client.json("GET", "/v1/jobs")["jobs"]
            if jobs and (jobs[0].get("iteration") or 0) >= 5 and list(data.glob("jobs/*/uploads/*/checkpoint.npz")):
                break
            time.sleep(0.1)
        [job] = jobs
        assert job["priority"] == "batch"                       # the hot folder never makes an artist wait
        serve.kill()                                            # SIGKILL
        serve.wait(timeout=30)
        with daemon_in_thread(data, port=port, checkpoint_s=FAST_S):     # same port, same data folder
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not (root / "done" / "photo.jpg").exists():
                time.sleep(0.2)
            watcher.stop()
            runner.join(timeout=60)
    finally:
        watcher.stop()
        runner.join(timeout=60)
        if serve.poll() is None:
            serve.kill()
            serve.wait(timeout=30)
    text = stream.getvalue()
    assert files(root / "out") == ["photo.psd"] and files(root / "error") == [], text
    assert text.count("sent to ") == 1, text                    # followed on, never sent again
    # The new daemon binds its port before it loads the weights, so a poll during the restart may simply wait
    # for its answer instead of failing: whether the gap is noticed is timing; when it is, the return is said.
    assert "the daemon does not answer" not in text or "the daemon is back" in text, text
    assert f"as job {job['id']}" in text


def test_a_damaged_checkpoint_after_a_stop_is_set_aside_and_the_photo_still_ends_in_out(tmp_path: Path, capsys,
                                                                                     caplog) -> None:
    """Issue 20 item 3: the job stops mid-run (its checkpoint saved; kill -9 leaves the same, see the e2e test
    above), then the checkpoint is damaged (its image header claims 3 x 10^6 x 10^6 pixels). The next watcher
    sets it aside (``.corrupt``, a warning) and runs the photo afresh: out/ and done/, not error/ with "lower the
    size" (before the fix the loader asked for terabytes)."""
    from test_engine_checkpoint_hostile import npy_header, rewrite

    root = make_hot(tmp_path, iterations=ITERATIONS, size=48)
    make_photo(root / "in" / "photo.jpg", 64)
    with WatcherThread(root, stable_seconds=STABLE, checkpoint_seconds=FAST_S) as w:
        deadline = time.monotonic() + 120
        while not checkpoints(root) or saved_iteration(root) < 2:
            assert time.monotonic() < deadline and w.thread.is_alive(), w.output
            time.sleep(0.1)
        w.stop()
    [path] = checkpoints(root)
    rewrite(path, {"image": npy_header((3, 10 ** 6, 10 ** 6), "<f4") + b"\0" * 4096})
    capsys.readouterr()
    caplog.clear()
    rc, text = watch_once(root, stable_seconds=STABLE, checkpoint_seconds=FAST_S)
    text += capsys.readouterr().err + caplog.text          # the process's stderr: its log lines, any traceback
    assert rc == 0, text
    assert files(root / "out") == ["photo.psd"] and files(root / "done") == ["photo.jpg"], text
    assert files(root / "working") == [] and files(root / "error") == [], text
    assert "resumed from its checkpoint" not in text and "Traceback" not in text, text
    assert "larger than this job's images" in text and ".npz.corrupt" in text, text
