"""One stylebridge optimisation in its own process, with a timed loss trace (for time-to-reach figures).

    .venv/bin/python bench/run_ours.py CONTENT STYLE OUT.png TRACE.json [--set key=value ...]

Runs ``bridge.engine.stylize`` exactly as the CLI does (defaults from ``bridge.settings``, overridden by
``--set``), and records every iteration's (seconds since this process started, stage, loss). In the last
stage the loss is the full objective (content + style + tv, default weights and layers) at the working
size on the current image, so "the first time it drops below a bar" is measured directly. Seconds are
counted from the interpreter's start (``time.perf_counter`` at import is close to it; bench.common.measure
adds the few ms before) so they compare with another tool's whole wall time.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("content", type=Path)
    ap.add_argument("style", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("trace", type=Path)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a Settings override")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args(argv)

    import torch

    from bridge.engine import stylize
    from bridge.engine.types import StyleInput
    from bridge.imaging import load_image, save_image
    from bridge.settings import DEFAULTS
    from bridge.settings_parse import settings_from_mapping

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(item.split("=", 1) for item in args.set)
    settings, _, _ = settings_from_mapping(overrides, base=DEFAULTS)
    content = load_image(args.content)
    style = load_image(args.style)
    trace: list[tuple[float, int, int, float]] = []

    def progress(p) -> None:
        trace.append((time.perf_counter() - T0, p.stage, p.stages, float(p.loss)))

    t_start = time.perf_counter() - T0
    result = stylize(content, [StyleInput(args.style.stem, style)], settings, progress=progress)
    t_opt = time.perf_counter() - T0
    save_image(result.images[0].picture, args.out)
    t_end = time.perf_counter() - T0
    args.trace.write_text(json.dumps({
        "settings": settings.to_dict(), "stage_sizes": settings.stage_sizes, "threads": torch.get_num_threads(),
        "start": t_start, "optimised": t_opt, "end": t_end, "losses": result.images[0].losses,
        "trace": trace}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
