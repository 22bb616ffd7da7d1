"""The daemon's own overhead around a job: upload a big photo, queue, fetch the layers back.

    .venv/bin/python bench/bench_daemon.py [--megapixels 12] [--runs 3] [--depth 8|16] [--url URL]

Starts a ``stylebridge serve`` on a free loopback port (or uses ``--url``), makes a photo of the asked
size (Tübingen upscaled, with a little noise so PNG cannot cheat), and runs jobs with a tiny engine
load (working size 64, 2 iterations). For each run it times, from the client's side:

- submit: POST /v1/jobs (upload, decode, validation, queueing) until the 202 answer;
- pickup: answer -> the worker starts the job (daemon clock);
- engine: stylize (at 12 MP mostly the guided upsampling to native size) and layers (build_stack),
  both reported by the daemon and NOT counted as overhead;
- notice: job finished -> the client sees 'done' (polling every 50 ms);
- result: GET the result JSON; layers: GET three layer PNGs (the style layer, its mask, the detail layer);
- psd: GET result.psd (written on first request; reported apart, the GIMP path does not use it).

overhead = submit + pickup + (pipeline - engine - layers) + notice + result + layers. Target: < 2 s at 12 MP.
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
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.daemon.client import DaemonClient  # noqa: E402
from bridge.imaging import Picture, encode_png  # noqa: E402
from bench.common import sample  # noqa: E402


def make_photo(megapixels: float, depth: int) -> bytes:
    im = Image.open(sample("coffee")).convert("RGB")
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    arr = np.asarray(im.resize((width, height), Image.BICUBIC)).astype(np.int16)
    arr += np.random.default_rng(0).integers(-4, 5, arr.shape, dtype=np.int16)
    rgb = np.clip(arr, 0, 255).astype(np.uint8)
    if depth == 16:
        rgb = rgb.astype(np.uint16) * 257
    return encode_png(Picture(rgb=rgb, name="photo"), compress_level=1)


def style_png() -> bytes:
    im = Image.open(sample("starry_night")).convert("RGB")
    im.thumbnail((256, 256))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def start_daemon(data: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--port", str(port), "--data-dir", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = DaemonClient(f"http://127.0.0.1:{port}", token=os.environ.get("STYLEBRIDGE_TOKEN", ""))
    deadline = time.monotonic() + 120
    while not client.is_running():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: the daemon did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.2)
    return proc, client.url


def one_run(client: DaemonClient, content: bytes, style: bytes, args: argparse.Namespace) -> dict[str, float]:
    settings = {"size": args.size, "iterations": args.iterations, "coarse_to_fine": False}
    client.require_protocol()          # asked once per client: not part of the submission's time
    t0 = time.time()
    job = client.submit_job(("photo.png", content), {"styles": [{"upload": 0}], "settings": settings, "name": "bench"},
                            style_files=[("starry.png", style)])
    t_submitted = time.time()
    while True:
        status = client.job(job["id"])
        if status["status"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.05)
    t_seen = time.time()
    if status["status"] != "done":
        raise SystemExit(f"bench: job {status['status']}: {status.get('error')}")
    result = client.result(job["id"])
    t_result = time.time()
    layers = result["layers"]
    style_layer = next(layer for layer in layers if layer["meta"]["role"] == "style")
    detail = next(layer for layer in layers if layer["meta"]["role"] == "detail")
    sizes = 0
    for url in (style_layer["image_url"], style_layer["mask_url"], detail["image_url"]):
        sizes += len(client.get_bytes(url, level=args.level))
    t_layers = time.time()
    psd_bytes = len(client.get_bytes(result["psd_url"])) if args.psd else 0
    t_psd = time.time()
    client.delete(job["id"])
    timings = result.get("timings") or {}
    pipeline = status["finished"] - status["started"]
    engine, build = timings.get("engine_s", 0.0), timings.get("layers_s", 0.0)
    row = {
        "submit": t_submitted - t0,
        "pickup": max(0.0, status["started"] - t_submitted),
        "engine": engine,
        "layers_build": build,
        "daemon_in_job": max(0.0, pipeline - engine - build),
        "notice": max(0.0, t_seen - status["finished"]),
        "result": t_result - t_seen,
        "fetch3": t_layers - t_result,
        "psd": t_psd - t_layers,
        "fetch3_mb": sizes / 1e6,
        "psd_mb": psd_bytes / 1e6,
    }
    row["overhead"] = (row["submit"] + row["pickup"] + row["daemon_in_job"] + row["notice"] + row["result"]
                       + row["fetch3"])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--depth", type=int, choices=(8, 16), default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="engine working size (tiny on purpose)")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--level", type=int, default=None, help="PNG zlib level asked for (default: the daemon's)")
    parser.add_argument("--no-psd", dest="psd", action="store_false", help="skip the PSD download")
    parser.add_argument("--url", default=None, help="use a running daemon instead of starting one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    content, style = make_photo(args.megapixels, args.depth), style_png()
    print(f"photo: {args.megapixels} MP, {args.depth}-bit, PNG {len(content) / 1e6:.1f} MB", file=sys.stderr)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url = args.url
        else:
            proc, url = start_daemon(Path(tmp))
        client = DaemonClient(url, timeout=600)
        try:
            rows = [one_run(client, content, style, args) for _ in range(args.runs)]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    keys = list(rows[0])
    medians = {k: statistics.median(r[k] for r in rows) for k in keys}
    if args.json:
        print(json.dumps({"runs": rows, "median": medians}, indent=2))
    else:
        print(" ".join(f"{k:>13}" for k in keys))
        for r in rows:
            print(" ".join(f"{r[k]:13.3f}" for k in keys))
        print("median:\n" + " ".join(f"{medians[k]:13.3f}" for k in keys))
        print(f"daemon overhead (median): {medians['overhead']:.2f} s "
              f"(engine {medians['engine']:.2f} s + layer stack {medians['layers_build']:.2f} s not counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
