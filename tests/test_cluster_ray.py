"""The daemon's jobs on a Ray cluster (``stylebridge serve --ray``): a real 2-node cluster on loopback
(ray.cluster_utils.Cluster, one CPU per node), a real daemon process, real HTTP.

Skipped when Ray is not installed, unless STYLEBRIDGE_REQUIRE_RAY=1 (CI installs the ``cluster`` extra and
sets it: then a missing Ray fails). Every Ray process is bound to 127.0.0.1 (docs/cluster.md, shared notes).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bridge.daemon.client import DaemonClient

from inprocess import stop_process
from test_daemon_api import SAMPLES, free_port, png_of

REQUIRE = os.environ.get("STYLEBRIDGE_REQUIRE_RAY") == "1"
HAVE_RAY = importlib.util.find_spec("ray") is not None
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}   # Ray then takes 127.0.0.1 as every node's address
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 100_000_000}
SMALL = {"size": 64, "iterations": 8, "coarse_to_fine": False}
LONG = {"size": 64, "iterations": 60, "coarse_to_fine": False}
# A dead node is noticed after ~2 s instead of Ray's default ~30 s (missed health checks)
FAST_DEATH = {"health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def ray_installed() -> None:
    if not HAVE_RAY:
        if REQUIRE:
            pytest.fail("STYLEBRIDGE_REQUIRE_RAY=1 but Ray is not installed: pip install -e '.[test,cluster]'")
        pytest.skip("Ray is not installed (pip install -e '.[cluster]'); set STYLEBRIDGE_REQUIRE_RAY=1 to fail instead")


def _serve(data: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A real ``stylebridge serve`` on loopback (its output in data/serve.log); waits for its health route."""
    port = free_port()
    log = open(data / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--port", str(port), "--data-dir", str(data),
                             "--checkpoint-seconds", "0.3",
                             *extra], stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **LOOPBACK_ENV, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {(data / 'serve.log').read_text()}")
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("daemon did not answer within 120 s")


def _stop(proc: subprocess.Popen, data: Path) -> str:
    stop_process(proc, timeout=30)
    return (data / "serve.log").read_text()


def test_the_embedded_daemon_never_imports_ray(tmp_path):
    """Without --ray nothing changes: neither the daemon's modules nor a running ``serve`` load Ray."""
    code = ("import sys, bridge.cli, bridge.daemon.app, bridge.daemon.command, bridge.daemon.jobqueue, "
            "bridge.daemon.runner, bridge.daemon.cluster; assert 'ray' not in sys.modules, 'ray imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as sink:     # -X importtime writes every import to stderr: a file, never a full pipe
        proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "bridge.cli", "serve", "--port", str(port),
                                 "--data-dir", str(tmp_path / "data")], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = log.read_text()
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.splitlines() if line.startswith("import time:")}
    assert "bridge.daemon.app" in imported      # it did serve
    assert not {name for name in imported if name == "ray" or name.startswith("ray.")}


def test_ray_options_are_checked_at_start(tmp_path):
    """--ray without --ray-shared, or --ray-shared alone: one line saying what to do, exit 1, no trace."""
    for extra, words in ((["--ray", "auto"], "--ray needs --ray-shared"),
                         (["--ray-shared", str(tmp_path)], "only for --ray")):
        run = subprocess.run([sys.executable, "-m", "bridge.cli", "serve", "--port", str(free_port()),
                              "--data-dir", str(tmp_path), *extra], capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and words in run.stderr and "Traceback" not in run.stderr, run.stderr


@pytest.fixture(scope="module")
def cluster(ray_installed):
    """A head and a second node, one CPU each, on 127.0.0.1 only; stopped (its processes killed) at the end."""
    os.environ.update(LOOPBACK_ENV)
    from ray.cluster_utils import Cluster

    made = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False,
                                                                 "_system_config": FAST_DEATH})
    try:
        worker = made.add_node(**NODE)
        made.wait_for_nodes()
        yield {"cluster": made, "head": made.head_node, "worker": worker}
    finally:
        made.shutdown()


@pytest.fixture(scope="module")
def farm(cluster, tmp_path_factory):
    """``stylebridge serve --ray ADDRESS --ray-shared DIR`` over the cluster, and its client."""
    data = tmp_path_factory.mktemp("farm-daemon")
    shared = tmp_path_factory.mktemp("farm-shared")
    proc, url = _serve(data, "--ray", cluster["cluster"].address, "--ray-shared", str(shared))
    try:
        yield {"url": url, "client": DaemonClient(url, timeout=60), "data": data, "shared": shared, "proc": proc}
    finally:
        out = _stop(proc, data)
        assert "Traceback" not in out, out


def _submit(client: DaemonClient, settings: dict, size: int = 64) -> str:
    return client.submit(png_of(SAMPLES["coffee"], size), style_files=[png_of(SAMPLES["starry_night"], size)],
                         settings=settings)["id"]


def _wait(client: DaemonClient, ids: list[str], timeout: float = 150) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {i: client.job(i) for i in ids}
        if all(s["status"] in ("done", "failed", "cancelled") for s in states.values()):
            return states
        time.sleep(0.3)
    raise AssertionError(f"jobs still running after {timeout} s: {[client.job(i) for i in ids]}")


def test_four_jobs_end_done_on_both_nodes(cluster, farm):
    client = farm["client"]
    ids = [_submit(client, SMALL) for _ in range(4)]
    states = _wait(client, ids)
    assert all(s["status"] == "done" and not s["partial"] for s in states.values()), states
    nodes = {s["node"]["id"] for s in states.values()}
    assert nodes == {cluster["head"].node_id, cluster["worker"].node_id}, states
    assert all(s["node"]["address"] == "127.0.0.1" and s["node"]["attempt"] == 1 for s in states.values())
    result = client.result(ids[0])
    assert result["layers"] and result["width"] == states[ids[0]]["width"]
    assert not list((farm["shared"] / "checkpoints").iterdir())     # done: nothing left to resume from


def test_a_job_whose_node_dies_resumes_elsewhere_and_ends_once(cluster, farm):
    """Two long jobs, one per node; kill -9 the second node (its raylet and the job's worker) mid-run: Ray runs
    the task again on the head, which resumes from the checkpoint in the shared folder; done exactly once. The
    head's own job is cancelled keeping its result (the cancel reaches its task): done, partial."""
    client, worker = farm["client"], cluster["worker"]
    ids = [_submit(client, LONG) for _ in range(2)]
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        for job_id in ids:
            s = client.job(job_id)
            if (s["node"] and s["node"]["id"] == worker.node_id and s["status"] == "running"
                    and (s["iteration"] or 0) >= 10 and (farm["shared"] / "checkpoints" / f"{job_id}.npz").is_file()):
                victim = s
        time.sleep(0.2)
    assert victim is not None, [client.job(i) for i in ids]
    before = victim["iteration"]
    os.kill(victim["node"]["pid"], signal.SIGKILL)
    for infos in worker.all_processes.values():
        for info in infos:
            try:
                os.kill(info.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    other = next(i for i in ids if i != victim["id"])
    client.cancel(other, keep_result=True)
    states = _wait(client, ids, timeout=180)
    assert states[other]["status"] == "done" and states[other]["partial"] is True, states[other]
    assert states[other]["iteration"] < LONG["iterations"] and client.result(other)["layers"]
    assert states[other]["node"]["id"] == cluster["head"].node_id and states[other]["node"]["attempt"] == 1
    after = states[victim["id"]]
    assert after["status"] == "done" and not after["partial"], (after, (farm["data"] / "serve.log").read_text())
    assert after["node"]["attempt"] == 2 and after["node"]["id"] == cluster["head"].node_id, after
    assert after["resumed"] is True and after["node"]["resumed"] is True
    assert after["iteration"] == LONG["iterations"] and before < LONG["iterations"]
    assert client.result(victim["id"])["layers"]
    log = (farm["data"] / "serve.log").read_text()
    assert log.count(f"job {victim['id']} done") == 1, log
    time.sleep(1.0)                                            # still done, once: no late second result
    assert client.job(victim["id"])["finished"] == after["finished"]
