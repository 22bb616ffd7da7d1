"""Starting and running the daemon: refusals at start-up, the token, result retention and spilling
to disk, and a crashing job that fails alone. Real ``stylebridge serve`` processes on loopback for what
happens at start-up (forked from this one: tests/inprocess.py Forked); the real app served in this process for
what happens after."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn

from bridge.daemon.app import DaemonConfig, create_app
from bridge.daemon.client import DaemonClient, DaemonError, JobFailed
from bridge.daemon.runner import run_engine
from bridge.imaging import load_image
from bridge.settings import LIMITS

from inprocess import Forked, daemon_in_thread
from test_daemon_api import SAMPLES, TINY, free_port, png_of

TOKEN = "s3cret-token"


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """``stylebridge ARGS`` as a real process (forked from this one, tests/inprocess.py Forked) with ``env`` added
    to its environment: its exit code, stdout and stderr."""
    proc = Forked(list(args), preexec_fn=lambda: os.environ.update(env or {}), separate_stderr=True)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_non_loopback_bind_needs_a_token(tmp_path):
    env = {"STYLEBRIDGE_TOKEN": ""}
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        run = cli("serve", "--host", host, "--port", str(free_port()), "--data-dir", str(tmp_path), env=env)
        assert run.returncode == 1
        assert "without a token" in run.stderr and "--token" in run.stderr and "Traceback" not in run.stderr


def test_bad_weights_fail_at_start_up(tmp_path):
    run = cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path), "--weights", str(tmp_path / "no.pth"))
    assert run.returncode == 1 and "cannot start" in run.stderr and "no.pth" in run.stderr
    assert "Traceback" not in run.stderr


def test_missing_device_fails_at_start_up(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path), "--device", "cuda")
    assert run.returncode == 1 and "cannot start" in run.stderr and "cuda" in run.stderr.lower()
    assert "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def token_daemon(tmp_path_factory):
    """``serve --keep-results 0.15 --memory-budget-mb 0`` with STYLEBRIDGE_TOKEN set: the app, in this process."""
    data = tmp_path_factory.mktemp("token-daemon")
    with daemon_in_thread(data, token=TOKEN, retention_s=0.15 * 60, memory_budget=0) as url:
        yield {"url": url, "data": data}


def test_token_rules_and_status(token_daemon, capsys, monkeypatch):
    url = token_daemon["url"]
    r = httpx.get(url + "/v1/health")
    assert r.status_code == 401 and "token" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url + "/openapi.json").status_code == 401
    assert httpx.post(url + "/v1/jobs", files={"content": ("c.png", b"x")}).status_code == 401
    ok = httpx.get(url + "/v1/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["token_required"] is True
    from bridge.cli import main

    def status(token: str) -> tuple[int, str]:
        """``stylebridge status --url URL`` with STYLEBRIDGE_TOKEN set, by the command line's ``main`` here."""
        monkeypatch.setenv("STYLEBRIDGE_TOKEN", token)
        capsys.readouterr()
        code = main(["status", "--url", url])
        return code, capsys.readouterr().out
    code, out = status(TOKEN)
    assert code == 0 and "running" in out
    code, out = status("")
    assert code == 0 and "refused" in out


def test_port_in_use_is_refused(token_daemon, tmp_path):
    port = token_daemon["url"].rsplit(":", 1)[1]
    run = cli("serve", "--port", port, "--data-dir", str(tmp_path), env={"STYLEBRIDGE_TOKEN": TOKEN})
    assert run.returncode == 1 and "already in use" in run.stderr


def test_results_spill_to_disk_then_expire(token_daemon):
    client = DaemonClient(token_daemon["url"], token=TOKEN)
    content = png_of(SAMPLES["coffee"], 48)
    result = client.run(("t.png", content), style_files=[("s.png", png_of(SAMPLES["starry_night"], 48))],
                        settings=TINY, timeout=120)
    (folder,) = (token_daemon["data"] / "jobs").glob(f"*/{result['id']}")   # jobs/<daemon pid>/<job id>
    assert sorted(p.name for p in folder.glob("*.npy"))      # memory budget 0: layers live on disk
    original = load_image(client.get_bytes(result["layers"][0]["image_url"]))
    assert np.array_equal(original.rgb, load_image(content).rgb)
    deadline = time.monotonic() + 40                         # kept 9 s, janitor every 2 s
    while time.monotonic() < deadline:
        try:
            client.job(result["id"])
        except DaemonError as exc:
            assert exc.status == 404 and "kept" in exc.message
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the finished job was never dropped")
    assert not folder.exists()


def test_a_crashing_job_fails_alone(tmp_path):
    """A runner that crashes on one job (as an engine bug would): that job fails with its error, the
    daemon keeps serving and the next job runs the real engine to the end."""
    def runner(request, ctx):
        if request.name == "boom":
            raise RuntimeError("simulated engine crash")
        return run_engine(request, ctx)

    port = free_port()
    config = DaemonConfig(data_dir=tmp_path, port=port, limits=dataclasses.replace(LIMITS))
    server = uvicorn.Server(uvicorn.Config(create_app(config, runner=runner), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        client = DaemonClient(f"http://127.0.0.1:{port}", token="")
        deadline = time.monotonic() + 30
        while not client.is_running():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        content = png_of(SAMPLES["coffee"], 48)
        style = [("s.png", png_of(SAMPLES["the_scream"], 48))]
        boom = client.submit(("c.png", content), style_files=style, settings=TINY, name="boom")
        fine = client.submit(("c.png", content), style_files=style, settings=TINY, name="fine")
        with pytest.raises(JobFailed) as err:
            client.wait(boom["id"], timeout=60)
        assert err.value.status["status"] == "failed"
        assert err.value.status["error"] == "RuntimeError: simulated engine crash"
        assert client.wait(fine["id"], timeout=120)["status"] == "done"
        assert client.result(fine["id"])["layers"][2]["meta"]["role"] == "style"
        with pytest.raises(DaemonError) as err2:
            client.result(boom["id"])
        assert "simulated engine crash" in err2.value.message
    finally:
        server.should_exit = True
        thread.join(20)
