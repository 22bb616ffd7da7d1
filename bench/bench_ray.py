"""The render farm (``stylebridge serve --ray``): throughput of small jobs on 2 Ray nodes vs 1 (one CPU each), the
per-job overhead of the Ray path vs the local runner, and on paper what a studio of N workstations does per hour.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_ray.py [--jobs 8] [--size 64] [--iterations 20]

Three runs, each a real daemon over real HTTP on loopback with ``--jobs`` identical jobs submitted at once:
``local`` (plain ``serve``, one engine thread, OMP_NUM_THREADS=1 so that it uses one CPU like a node), ``ray-1``
(a one-node cluster, one CPU) and ``ray-2`` (two nodes, one CPU each; ray.cluster_utils.Cluster on 127.0.0.1).
Each Ray run first runs one job per node (their workers load torch and VGG once: reported apart as the cold
start). Per-job overhead: the time a job spends around its run (its ``elapsed_s`` minus the run's own ``seconds``,
engine + layers, in its result) on ray-1 (one at a time, like the local runner) minus the same on local.
Results: bench/results/ray.json. Every process binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, SAMPLES, machine  # noqa: E402

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 100_000_000}

# From bench/README.md (CPU, one thread): the print preset's whole run of a 6 MP photo, ~97 CPU min; at 24 MP the
# same ladder without its 3000 px stage (260 s set-up + 10 x 181 s) plus a 4096 px stage (10 iterations of ~11.2 MP
# at the 24 MP run's 754 s / 24 MP per tiled iteration, + ~250 s set-up) and the 6000 px stage (10 x 754 s + ~500 s).
CPU_S_6MP = 97 * 60.0
CPU_S_24MP = CPU_S_6MP - (260 + 10 * 181) + (10 * 754 * 11.2 / 24 + 250) + (10 * 754 + 500)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(path: Path, side: int) -> bytes:
    im = Image.open(path).convert("RGB")
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def serve(data: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = open(data / "serve.log", "w")
    env = {**os.environ, **LOOPBACK_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--port", str(port), "--data-dir", str(data),
                             *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited: {(data / 'serve.log').read_text()}")
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("daemon did not start")


def run_jobs(url: str, n: int, settings: dict, size: int) -> dict:
    """Submit ``n`` jobs at once and wait for all: wall seconds, jobs per minute, each job's elapsed and node."""
    content, style = png(SAMPLES["coffee"], size), png(SAMPLES["starry_night"], size)
    started = time.perf_counter()
    ids = []
    for _ in range(n):
        r = httpx.post(url + "/v1/jobs", files=[("content", ("c.png", content)), ("style_files", ("s.png", style))],
                       data={"settings": json.dumps(settings)}, timeout=60)
        r.raise_for_status()
        ids.append(r.json()["id"])
    while True:
        states = [httpx.get(f"{url}/v1/jobs/{i}", timeout=30).json() for i in ids]
        if all(s["status"] in ("done", "failed", "cancelled") for s in states):
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    bad = [s for s in states if s["status"] != "done"]
    if bad:
        raise SystemExit(f"jobs did not end done: {bad}")
    elapsed = [s["elapsed_s"] for s in states]
    # the run itself (engine + layers, timed in pipeline.render wherever it ran); the rest of a job's elapsed time
    # is around it: decoding, handing it out (Ray: task, object store, actor), the result back into the daemon
    run = [httpx.get(f"{url}/v1/jobs/{i}/result", timeout=60).json()["seconds"] for i in ids]
    around = [round(e - r, 3) for e, r in zip(elapsed, run)]
    nodes = [s["node"]["id"][:8] for s in states if s.get("node")]
    return {"jobs": n, "wall_s": round(wall, 2), "jobs_per_min": round(60 * n / wall, 2),
            "elapsed_mean_s": round(statistics.mean(elapsed), 2), "elapsed_s": elapsed,
            "run_s": run, "around_mean_s": round(statistics.mean(around), 3), "around_s": around,
            "nodes": {k: nodes.count(k) for k in sorted(set(nodes))}}


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench_ray(nodes: int, args: argparse.Namespace, settings: dict, work: Path) -> dict:
    os.environ.update(LOOPBACK_ENV)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    proc = None
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        proc, url = serve(work / f"ray-{nodes}", "--ray", cluster.address, "--ray-shared", str(work / f"shared-{nodes}"))
        cold = run_jobs(url, nodes, settings, args.size)       # one per node: workers start, load torch and VGG
        out = run_jobs(url, args.jobs, settings, args.size)
        out["cold_start"] = cold
        return out
    finally:
        if proc is not None:
            stop(proc)
        cluster.shutdown()


def on_paper(per_job_s: float) -> dict:
    """A studio of N workstations, one job per CPU core (one thread each) or per GPU: jobs per hour."""
    rows = {}
    for label, cpu_s in (("6MP_print", CPU_S_6MP), ("24MP_print", CPU_S_24MP)):
        rows[label] = {"cpu_s_one_thread": round(cpu_s), "jobs_per_core_hour": round(3600 / (cpu_s + per_job_s), 3),
                       **{f"{n}x16core_per_hour": round(n * 16 * 3600 / (cpu_s + per_job_s), 1) for n in (1, 4, 10)}}
    rows["gpu"] = "no GPU figure exists yet (no GPU machine was lent): jobs/hour per GPU = 3600 / (its run's seconds)"
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_ray"))
    args = parser.parse_args()
    settings = {"size": args.size, "iterations": args.iterations, "coarse_to_fine": False}
    load_before = os.getloadavg()
    proc, url = serve(args.work / "local")
    try:
        local = run_jobs(url, args.jobs, settings, args.size)
    finally:
        stop(proc)
    print("local", local, flush=True)
    ray1 = bench_ray(1, args, settings, args.work)
    print("ray-1", ray1, flush=True)
    ray2 = bench_ray(2, args, settings, args.work)
    print("ray-2", ray2, flush=True)
    overhead = round(ray1["around_mean_s"] - local["around_mean_s"], 3)
    out = {"machine": machine(), "load_before": load_before, "load_after": os.getloadavg(), "settings": settings,
           "local": local, "ray_1_node": ray1, "ray_2_nodes": ray2,
           "speedup_2_vs_1": round(ray1["wall_s"] / ray2["wall_s"], 2), "per_job_overhead_s": overhead,
           "studio_on_paper": on_paper(max(overhead, 0.0))}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("speedup_2_vs_1", "per_job_overhead_s", "studio_on_paper")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
