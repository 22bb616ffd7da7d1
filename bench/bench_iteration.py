"""Seconds per optimisation iteration at 512 px against the bound set by this CPU's float32 matmul speed.

    .venv/bin/python bench/bench_iteration.py [--size 512] [--iterations 6] [--threads N]

Issue 7, target 2: measured s/iteration must be at most 1/0.85 of the bound, i.e. efficiency
(bound / measured) >= 85%.

The bound. One iteration is one VGG-19 forward to the deepest layer the loss needs (relu5_1 with the
default layers) plus the backward to the *input image*. Per 3x3 convolution with Cin -> Cout channels on
an H x W map:

    forward            F = 2 * Cin * Cout * 9 * H * W              (a GEMM: M=Cout, K=9*Cin, N=H*W)
    grad w.r.t. input  F   (the transposed GEMM, same size)
    grad w.r.t. weight F   -- NOT computed: the weights do not require grad (only the pixels do)

so a conv layer costs 2F per iteration (not the 3F of training). Each style layer adds its Gram matrix,
2 * C^2 * H*W forward and 2 * C^2 * H*W backward (dL/dF = (dG + dG^T) F / norm). ReLU, pooling, the losses
and L-BFGS's vector updates are O(C*H*W) and are not counted (they are memory-bound, a few percent).

Each GEMM shape above is timed with ``torch.mm`` on this machine (best of a few runs); the bound is the sum
over all GEMMs of FLOPs / (that shape's measured FLOP/s). The measured time is the median interval between
iterations of ``bridge.engine.stylize`` at this size (no coarse-to-fine), from its progress callback.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import RESULTS, machine, sample  # noqa: E402

TARGET = 0.85
_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


def conv_gemms(height: int, width: int, deepest: str) -> list[tuple[str, int, int, int]]:
    """(layer, M=Cout, K=9*Cin, N=H*W) of every conv up to ``deepest`` (e.g. 'relu5_1'), in order."""
    out = []
    cin, h, w = 3, height, width
    block_last, conv_last = int(deepest[4]), int(deepest[6])
    for b, (cout, n) in enumerate(_BLOCKS, start=1):
        for c in range(1, n + 1):
            out.append((f"conv{b}_{c}", cout, 9 * cin, h * w))
            cin = cout
            if (b, c) == (block_last, conv_last):
                return out
        h, w = h // 2, w // 2
    return out


def gram_gemms(height: int, width: int, style_layers: tuple[str, ...]) -> list[tuple[str, int, int, int]]:
    """(layer, C, H*W, C) of each style layer's Gram product F F^T."""
    out = []
    for name in style_layers:
        b = int(name[4])
        c = _BLOCKS[b - 1][0]
        h, w = height >> (b - 1), width >> (b - 1)
        out.append((f"gram_{name}", c, h * w, c))
    return out


def gemm_seconds(m: int, k: int, n: int, repeats: int = 3) -> float:
    """Best wall time of one float32 (m x k) @ (k x n) with torch.mm."""
    import torch

    a = torch.randn(m, k)
    b = torch.randn(k, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return best


def measured_iteration(size: int, iterations: int, content: str, style: str) -> tuple[float, tuple[int, int], dict]:
    """Median seconds between consecutive iterations of the engine at ``size`` (one stage), and the dims."""
    from bridge.engine import stylize
    from bridge.engine.types import StyleInput
    from bridge.imaging import load_image
    from bridge.settings import DEFAULTS

    photo = load_image(sample(content))
    settings = DEFAULTS.replace(size=size, coarse_to_fine=False, iterations=iterations, seed=0, preview_every=0)
    stamps: list[float] = []
    result = stylize(photo, [StyleInput(style, load_image(sample(style)))], settings,
                     progress=lambda p: stamps.append(time.perf_counter()))
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    w, h = result.working_size
    return statistics.median(gaps), (h, w), settings.to_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=6, help="engine iterations timed (first gap dropped)")
    ap.add_argument("--pair", default="coffee:starry_night")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for both measurements")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import torch

    from bridge.settings import DEFAULTS

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    content, _, style = args.pair.partition(":")
    per_iter, (h, w), settings = measured_iteration(args.size, args.iterations, content, style)
    load_mid = os.getloadavg()

    layers = DEFAULTS.style_layers + DEFAULTS.content_layers
    deepest = max(layers, key=lambda n: (int(n[4]), int(n[6])))
    gemms = [(name, m, k, n, 2) for name, m, k, n in conv_gemms(h, w, deepest)]      # forward + grad input
    gemms += [(name, m, k, n, 2) for name, m, k, n in gram_gemms(h, w, DEFAULTS.style_layers)]
    print(f"load {' '.join(f'{v:.2f}' for v in load_before)}; {h}x{w} px, VGG-19 through {deepest}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'gemm':12} {'M':>5} {'K':>6} {'N':>7} {'GFLOP/it':>9} {'GFLOP/s':>8} {'s/it':>7}")
    total_flops = bound = 0.0
    rows = []
    for name, m, k, n, times in gemms:
        flops = 2.0 * m * k * n * times
        rate = 2.0 * m * k * n / gemm_seconds(m, k, n)
        total_flops += flops
        bound += flops / rate
        rows.append({"gemm": name, "M": m, "K": k, "N": n, "gflop_per_iteration": flops / 1e9,
                     "gflops": rate / 1e9})
        print(f"{name:12} {m:5d} {k:6d} {n:7d} {flops / 1e9:9.2f} {rate / 1e9:8.1f} {flops / rate:7.3f}")
    efficiency = bound / per_iter
    load_after = os.getloadavg()
    print(f"counted {total_flops / 1e9:.1f} GFLOP per iteration; matmul bound {bound:.2f} s/iteration "
          f"(= {total_flops / bound / 1e9:.1f} GFLOP/s effective)")
    print(f"measured {per_iter:.2f} s/iteration -> efficiency {efficiency:.0%} (target >= {TARGET:.0%}) "
          f"{'MET' if efficiency >= TARGET else 'NOT MET'}; load {' '.join(f'{v:.2f}' for v in load_mid)} | "
          f"{' '.join(f'{v:.2f}' for v in load_after)}")
    if str(args.results):
        args.results.mkdir(parents=True, exist_ok=True)
        out = args.results / f"iteration_{args.size}.json"
        out.write_text(json.dumps({"machine": machine(), "dims": [h, w], "deepest": deepest,
                                   "gflop_per_iteration": total_flops / 1e9, "bound_s": bound,
                                   "measured_s": per_iter, "efficiency": efficiency, "target": TARGET,
                                   "loads": [load_before, load_mid, load_after], "gemms": rows,
                                   "settings": settings}, indent=1))
        print(f"summary in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
