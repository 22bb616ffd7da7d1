"""Issue 15 item 2: peak memory of loading a PNG whose ICC profile is a decompression bomb.

Builds a small 16-bit (and an 8-bit) PNG whose iCCP chunk inflates to ``--inflate-mb`` MB of zeros,
then loads each in a fresh process with ``bridge.imaging.load_image`` and prints the child's peak RSS
(``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``), the size of the file and of the profile kept.

    PYTHONPATH=$PWD python bench/bench_metadata_bomb.py --inflate-mb 1024
    PYTHONPATH=/path/to/old/checkout python bench/bench_metadata_bomb.py   # the before figure

A baseline (a plain PNG of the same pixels) is printed too: the bomb's cost is the difference.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

CHILD = r"""
import resource, sys, warnings
warnings.simplefilter("ignore")
from bridge.imaging import load_image
try:
    pic = load_image(sys.argv[1])
    kept = len(pic.icc_profile or b"")
    print(f"loaded {pic.width}x{pic.height} {pic.bit_depth}-bit, ICC kept: {kept:,} bytes")
except Exception as exc:
    print(f"refused: {type(exc).__name__}: {exc}")
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def zeros_stream(megabytes: int) -> bytes:
    """A zlib stream of ``megabytes`` MB of zeros, built in milliseconds: 1 MB segments that each
    start from a reset history (full flush) repeat exactly; the Adler-32 of n zeros is (n mod 65521, 1)."""
    block = bytes(1 << 20)
    comp = zlib.compressobj(9)
    head = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    segment = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush(zlib.Z_FINISH)
    adler = ((((megabytes << 20) % 65521) << 16) | 1).to_bytes(4, "big")
    return head + segment * (megabytes - 1) + tail[:-4] + adler


def png(bits: int, iccp: bytes | None, side: int = 64) -> bytes:
    row = b"\x00" + bytes(side * 3 * bits // 8)
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, bits, 2, 0, 0, 0))
    if iccp is not None:
        body += chunk(b"iCCP", b"bomb\x00\x00" + iccp)
    body += chunk(b"IDAT", zlib.compress(row * side)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def peak_rss_mb(path: Path) -> tuple[float, str]:
    """The child's own peak RSS (it prints ru_maxrss, in KiB on Linux) and what it said."""
    res = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, cwd=path.parent,
                         env=dict(os.environ))
    lines = res.stdout.strip().splitlines()
    peaks = [int(line.split()[1]) for line in lines if line.startswith("PEAK ")]
    text = next((line for line in lines if not line.startswith("PEAK ")), "") or \
        (res.stderr.strip().splitlines() or ["(no output)"])[-1]
    peak = peaks[0] / 1024.0 if peaks else float("nan")   # killed (out of memory): no figure
    return peak, f"{text[:150]} (exit {res.returncode})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inflate-mb", type=int, default=1024, help="what the bogus profile inflates to")
    args = ap.parse_args()
    bomb = zeros_stream(args.inflate_mb)
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("plain 16-bit PNG (baseline)", png(16, None)),
                 (f"8-bit PNG, iCCP -> {args.inflate_mb} MB", png(8, bomb)),
                 (f"16-bit PNG, iCCP -> {args.inflate_mb} MB", png(16, bomb))]
        for label, data in cases:
            path = Path(tmp) / "case.png"
            path.write_bytes(data)
            peak, text = peak_rss_mb(path)
            print(f"{label:34s} file {len(data) / 1e6:7.3f} MB  peak RSS {peak:8.1f} MB  {text}")


if __name__ == "__main__":
    main()
