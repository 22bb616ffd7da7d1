"""The daemon's memory against its own estimate (issue 15, item 3).

    .venv/bin/python bench/bench_daemon_memory.py [--width 4000 --height 3000] [--styles 1] [--size 64]
                                                 [--queued 6] [--big 14000]

Starts a real ``stylebridge serve`` on a free loopback port with a temporary data folder, then:

1. queue: a long job keeps the worker busy while ``--queued`` PNG uploads of ``--big`` x ``--big`` pixels
   (one grey, ~0.6 MB each at 14000) wait behind it; prints the daemon's RSS before and after (they wait on
   disk: the RSS should not move), then cancels them all (never running one);
2. one job: a generated noise photo of ``--width`` x ``--height`` with ``--styles`` small styles at working
   size ``--size`` (1 iteration: the native-size work and the layers dominate); the daemon's peak RSS
   (VmHWM, reset just before through /proc/PID/clear_refs) above its RSS before the job, against the job's
   ``memory_estimate``. The estimate is meant to be an upper bound: the ratio should stay below 1.

Linux only (reads /proc). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, amount, _ = line.split()
            out[key[:-1]] = int(amount) / 1024
    return out


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def flat_png(width: int, height: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    row = b"\x00" + b"\x80" * (3 * width)
    comp = zlib.compressobj(9)
    body = b"".join([comp.compress(row * 500) for _ in range(height // 500)] + [comp.compress(row * (height % 500)),
                                                                               comp.flush()])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def submit(url: str, content: bytes, styles: list[bytes], settings: dict) -> dict:
    files = [("content", ("photo.png", content, "image/png"))]
    files += [("style_files", (f"s{i}.png", s, "image/png")) for i, s in enumerate(styles)]
    job = {"protocol": 2, "styles": [{"upload": i} for i in range(len(styles))], "settings": settings}
    r = httpx.post(url + "/v1/jobs", files=files, data={"job": json.dumps(job)}, timeout=600)
    if r.status_code != 202:
        raise SystemExit(f"submit failed: {r.status_code} {r.text}")
    return r.json()


def wait(url: str, job_id: str, until: tuple[str, ...], timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        if status["status"] in until or status["phase"] in until:
            return status
        time.sleep(0.2)
    raise SystemExit(f"job {job_id} did not reach {until}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--styles", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--queued", type=int, default=6)
    parser.add_argument("--big", type=int, default=14000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    small = png(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    style = png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as data:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--port", str(port), "--data-dir", data,
                                 "--max-queued-jobs", str(max(8, args.queued + 1))],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.3)
            idle = status_mb(proc.pid)
            limits = httpx.get(url + "/v1/health").json()["limits"]
            print(f"daemon idle: RSS {idle['VmRSS']:.0f} MB (peak {idle['VmHWM']:.0f}); max_job_memory "
                  f"{limits['max_job_memory'] / 2 ** 30:.1f} GiB, "
                  f"memory_budget {limits['memory_budget'] / 2 ** 30:.1f} GiB")

            # 1. the queue
            blocker = submit(url, small, [style], {"size": 64, "iterations": 3000, "coarse_to_fine": False})["id"]
            wait(url, blocker, ("optimizing",))
            time.sleep(1.0)
            before = status_mb(proc.pid)["VmRSS"]
            big = flat_png(args.big, args.big)
            ids = []
            for _ in range(args.queued):
                ids.append(submit(url, big, [style], {"size": 256})["id"])
            after = status_mb(proc.pid)["VmRSS"]
            estimate = httpx.get(f"{url}/v1/jobs/{ids[0]}").json()["memory_estimate"] if ids else 0
            for job_id in ids + [blocker]:
                httpx.post(f"{url}/v1/jobs/{job_id}/cancel", timeout=60)
            print(f"queue: {args.queued} x {args.big}x{args.big} PNG ({len(big) / 1e6:.2f} MB each, "
                  f"{args.big * args.big * 3 / 2 ** 20:.0f} MB decoded, "
                  f"each estimated at {estimate / 2 ** 30:.1f} GiB) "
                  f"queued behind a running job: RSS {before:.0f} -> {after:.0f} MB ({after - before:+.0f} MB)")

            # 2. one job against its estimate
            time.sleep(2.0)
            photo = png(rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
            start = status_mb(proc.pid)["VmRSS"]
            exact = reset_peak(proc.pid)
            t0 = time.perf_counter()
            job = submit(url, photo, [style] * args.styles, {"size": args.size, "iterations": 1,
                                                             "coarse_to_fine": False})
            done = wait(url, job["id"], ("done", "failed", "cancelled"))
            seconds = time.perf_counter() - t0
            peak = status_mb(proc.pid)["VmHWM"]
            used = (peak - start) * 2 ** 20
            print(f"job: {args.width}x{args.height} 8-bit, {args.styles} style(s), size {args.size}: {done['status']} "
                  f"in {seconds:.1f} s; peak RSS {peak:.0f} MB, "
                  f"{used / 2 ** 20:.0f} MB above the {start:.0f} MB before "
                  f"it{'' if exact else ' (peak not reset: includes earlier peaks)'}; estimate "
                  f"{job['memory_estimate'] / 2 ** 20:.0f} MB; measured/estimate {used / job['memory_estimate']:.2f}")
        finally:
            proc.terminate()
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
