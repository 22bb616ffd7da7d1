"""The one PNG writer (bridge.imaging.iter_png) against its peers, and previews beside a busy engine.

    .venv/bin/python bench/bench_daemon_png.py [--megapixels 12] [--runs 3] [--skip-previews]

1. PNG: a photo-like layer (Tübingen upscaled to the asked size with a little noise, so PNG cannot cheat)
   encoded by iter_png at the daemon's levels (auto -> 0 for photos, 1) and the CLI's (6), by Pillow
   (8-bit only; its adaptive filters) and by imagecodecs (libpng; no metadata). Best of ``--runs``; the
   ratios are against Pillow level 6 (8-bit) and imagecodecs level 6 (16-bit), measured in the same run.
2. Previews: POST /v1/previews (2 styles, 512 px) to a real daemon on loopback, idle, then while its engine
   worker runs a CPU-bound job (a torch matrix loop on every core, like a Gatys job on the CPU). The ratio busy /
   idle says how much a running job slows a preview; previews never wait for the job to end.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import tempfile
import threading
import time
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import sample  # noqa: E402
from bridge.imaging import encode_array_png  # noqa: E402


def photo(megapixels: float, depth: int) -> np.ndarray:
    im = Image.open(sample("coffee")).convert("RGB")
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    arr = np.asarray(im.resize((width, height), Image.BICUBIC)).astype(np.int16)
    arr += np.random.default_rng(0).integers(-4, 5, arr.shape, dtype=np.int16)
    rgb = np.clip(arr, 0, 255).astype(np.uint8)
    return rgb.astype(np.uint16) * 257 if depth == 16 else rgb


def best(fn, runs: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        size = len(fn())
        times.append(time.perf_counter() - start)
    return min(times), size


def pillow(arr: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def bench_png(megapixels: float, runs: int) -> None:
    for depth in (8, 16):
        arr = photo(megapixels, depth)
        rows = [(f"iter_png level {name}", (lambda lv=lv: encode_array_png(arr, lv)))
                for name, lv in (("auto", None), ("1", 1), ("6", 6))]
        if depth == 8:
            rows += [(f"Pillow level {lv}", (lambda lv=lv: pillow(arr, lv))) for lv in (1, 6)]
        rows += [(f"imagecodecs level {lv}", (lambda lv=lv: bytes(imagecodecs.png_encode(arr, level=lv))))
                 for lv in (1, 6)]
        results = {name: best(fn, runs) for name, fn in rows}
        peer = results["Pillow level 6" if depth == 8 else "imagecodecs level 6"]
        print(f"\n{arr.shape[1]}x{arr.shape[0]} {depth}-bit RGB ({arr.nbytes / 2 ** 20:.0f} MB raw), best of {runs}:")
        for name, (seconds, size) in results.items():
            print(f"  {name:22s} {seconds:6.2f} s  {size / 2 ** 20:7.1f} MB   time x{seconds / peer[0]:.2f}, "
                  f"size x{size / peer[1]:.2f}")


def bench_previews(runs: int) -> None:
    import torch
    import uvicorn

    from bridge.daemon.app import DaemonConfig, create_app
    from bridge.daemon.client import DaemonClient
    from bridge.daemon.previews import preview_threads
    from bridge.settings import LIMITS
    from test_daemon_api import free_port, png_of       # tests/ on the path below

    release = threading.Event()

    def busy_runner(request, ctx):       # a CPU-bound "job" on every core until released
        a = torch.randn(512, 512)
        while not release.is_set() and not ctx.cancel.cancelled:
            a = torch.tanh(a @ a)
        return None

    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        config = DaemonConfig(data_dir=Path(data), port=port, limits=dataclasses.replace(LIMITS))
        server = uvicorn.Server(uvicorn.Config(create_app(config, runner=busy_runner), host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        client = DaemonClient(f"http://127.0.0.1:{port}", token="", timeout=300)
        while not client.is_running():
            time.sleep(0.1)
        content = png_of(sample("coffee"), 1024)
        styles = [("starry.png", png_of(sample("starry_night"), 512)), ("scream.png", png_of(sample("the_scream"), 512))]

        def one() -> float:
            start = time.perf_counter()
            client.previews(("c.png", content), style_files=styles, size=512)
            return time.perf_counter() - start

        first = one()                                    # loads the networks
        idle = min(one() for _ in range(runs))
        job = client.submit(("c.png", content), style_files=styles[:1], settings={"size": 64, "iterations": 1})
        while client.job(job["id"])["status"] != "running":
            time.sleep(0.05)
        busy = min(one() for _ in range(runs))
        still = client.job(job["id"])["status"]
        release.set()
        server.should_exit = True
        thread.join(20)
    print(f"\nPOST /v1/previews, 2 styles at 512 px, onnxruntime threads {preview_threads('cpu')}"
          f" (the daemon's default here), best of {runs}:")
    print(f"  first request (loads the networks): {first:.2f} s")
    print(f"  engine idle: {idle:.2f} s")
    print(f"  engine busy (job {still} throughout): {busy:.2f} s   busy/idle x{busy / idle:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-previews", action="store_true")
    args = parser.parse_args()
    torch_threads = None
    try:
        import torch
        torch_threads = torch.get_num_threads()
    except ImportError:
        pass
    print(f"bench_daemon_png: {args.megapixels} MP, torch threads {torch_threads}")
    bench_png(args.megapixels, args.runs)
    if not args.skip_previews:
        sys.path.insert(0, str(REPO / "tests"))
        bench_previews(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
