"""How honest are the engine's percent and ETA (issue 14)? And the CPU cost model they start from.

    PYTHONPATH=. .venv/bin/python bench/bench_eta.py --size 256 [--styles glass,swirls,bands]
    PYTHONPATH=. .venv/bin/python bench/bench_eta.py --model [--sizes 64,128,256,512]

Run mode: one in-process ``stylize`` of samples/photo.jpg with the given styles at the given settings
(defaults otherwise), every Progress event timed. The real time left at an event is (the moment
``stylize`` returned) - (the event's moment). At the first event at or past 25%, 50% and 75% (the
engine's percent) it prints the engine's ``eta_seconds`` against that, and for comparison the old
estimate (iterations counted as equal: elapsed / fraction x (1 - fraction), what the daemon computed).
"Time fraction" is how much of the run's wall time had really passed when the bar said 25/50/75%.

Replay mode (``--replay results/eta_256_*.json``): feeds a recorded run's event times to the estimator
with other smoothing settings (``RECENT`` 0 = no recent-speed factor), to compare them on the same
timelines; the stage starts are taken as the previous event's time.

Model mode: seconds per iteration at several sizes (single stage, median of the steady iterations),
and the least-squares fit t = seconds_per_pixel x (pixels + overhead_pixels) used in
``bridge.engine.eta.DEVICE_MODELS``.
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
RESULTS = REPO / "bench" / "results"


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_mode(args: argparse.Namespace) -> dict:
    from bridge.engine import StyleInput, stylize
    from bridge.imaging import load_image
    from bridge.settings_parse import settings_from_mapping

    overrides = dict(item.split("=", 1) for item in args.set)
    overrides.update(size=args.size, seed=7)
    settings, _, _ = settings_from_mapping(overrides)
    photo = load_image(REPO / "samples" / "photo.jpg")
    styles = [StyleInput(n, load_image(REPO / "samples" / f"style_{n}.jpg")) for n in args.styles.split(",")]
    events: list[dict] = []
    t0 = time.perf_counter()

    def progress(p) -> None:
        events.append({"t": round(time.perf_counter() - t0, 3), "percent": round(p.percent, 2),
                       "eta": round(p.eta_seconds, 1), "done": p.done_iterations, "total": p.total_iterations,
                       "stage": p.stage, "iteration": p.iteration, "style": p.style_index})

    load_before = load_avg()
    result = stylize(photo, styles, settings, progress=progress)
    t_end = time.perf_counter() - t0
    rows = []
    for mark in (25.0, 50.0, 75.0):
        e = next(ev for ev in events if ev["percent"] >= mark)
        real = t_end - e["t"]
        it_fraction = e["done"] / e["total"]
        old = e["t"] / it_fraction * (1.0 - it_fraction)
        rows.append({"mark": mark, "t": round(e["t"], 1), "percent": round(e["percent"], 1),
                     "eta": round(e["eta"], 1), "real_left": round(real, 1),
                     "eta_error": round((e["eta"] - real) / real, 3),
                     "old_eta": round(old, 1), "old_error": round((old - real) / real, 3),
                     "old_percent": round(100 * it_fraction, 1), "time_fraction": round(e["t"] / t_end, 3)})
    out = {"size": args.size, "styles": args.styles, "settings": overrides, "seconds": round(t_end, 1),
           "working_size": result.working_size, "load_before": load_before, "load_after": load_avg(),
           "rows": rows, "events": events}
    print(f"size {args.size}, styles {args.styles}: {t_end:.1f} s, load {load_before} -> {out['load_after']}")
    print("mark  at(s)  eta(s)  real left(s)  error   | old percent  old eta  old error | time fraction")
    for r in rows:
        print(f"{r['mark']:4.0f}% {r['t']:6.1f} {r['eta']:7.1f} {r['real_left']:12.1f} {r['eta_error']:+7.1%}  |"
              f" {r['old_percent']:10.1f}% {r['old_eta']:8.1f} {r['old_error']:+9.1%} | {r['time_fraction']:.2f}")
    return out


def replay_mode(args: argparse.Namespace) -> dict:
    from bridge.engine import eta
    from bridge.engine.plan import stage_dims, working_ladder
    from bridge.settings_parse import settings_from_mapping

    out: dict = {}
    for path in args.replay:
        run = json.loads(Path(path).read_text())
        settings, _, _ = settings_from_mapping(run["settings"])
        ladder = working_ladder(settings, 512, 341)       # samples/photo.jpg
        pixels = [h * w for h, w in (stage_dims(512, 341, side) for side in ladder)]
        iters = [settings.coarse_iterations] * (len(ladder) - 1) + [settings.iterations]
        events, end = run["events"], run["seconds"]
        jobs = max(e["style"] for e in events) + 1
        print(f"{Path(path).name}: {jobs} style(s), {end} s")
        for recent in (0.0, 0.05, 0.1, 0.2):
            clock = {"now": 0.0}
            est = eta.RunEstimator(pixels, iters, jobs, eta.cost_model("cpu"), clock=lambda: clock["now"])
            old_recent, eta.RECENT = eta.RECENT, recent
            old_swing = eta.SPEED_SWING
            eta.SPEED_SWING = 1.0 if recent == 0 else old_swing
            try:
                key, errors, marks = None, [], [25.0, 50.0, 75.0]
                for i, e in enumerate(events):
                    if (e["style"], e["stage"]) != key:
                        if key is not None:
                            est.end_stage()
                        key = (e["style"], e["stage"])
                        start = events[i - 1]["t"] if i else e["t"] - (events[1]["t"] - e["t"])
                        clock["now"] = start
                        est.start_stage(e["style"], e["stage"] - 1)
                    clock["now"] = e["t"]
                    estimate = est.iteration(e["iteration"])
                    if marks and estimate.percent >= marks[0]:
                        real = end - e["t"]
                        errors.append(round((estimate.eta_seconds - real) / real, 3))
                        marks.pop(0)
            finally:
                eta.RECENT, eta.SPEED_SWING = old_recent, old_swing
            out.setdefault(Path(path).name, {})[str(recent)] = errors
            print(f"  RECENT {recent:4.2f}: " + "  ".join(f"{x:+.1%}" for x in errors))
    return out


def model_mode(args: argparse.Namespace) -> dict:
    from bridge.engine import StyleInput, stylize
    from bridge.imaging import load_image
    from bridge.settings import Settings

    photo = load_image(REPO / "samples" / "photo.jpg")
    style = StyleInput("glass", load_image(REPO / "samples" / "style_glass.jpg"))
    points = []
    load_before = load_avg()
    for size in (int(s) for s in args.sizes.split(",")):
        stamps: list[float] = []
        settings = Settings(size=size, iterations=args.iterations, coarse_to_fine=False, seed=7,
                            preview_every=0)
        result = stylize(photo, [style], settings, progress=lambda p: stamps.append(time.perf_counter()))
        w, h = result.working_size
        steady = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))
        points.append({"size": size, "pixels": w * h, "seconds_per_iteration": round(steady, 4)})
        print(f"{size:5d} px ({w}x{h}): {steady:.4f} s/iteration", flush=True)
    n = len(points)
    xs = [p["pixels"] for p in points]
    ys = [p["seconds_per_iteration"] for p in points]
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    fit = {"seconds_per_pixel": slope, "overhead_pixels": intercept / slope}
    print(f"fit: seconds_per_pixel {slope:.3g}, overhead_pixels {intercept / slope:.0f}; "
          f"load {load_before} -> {load_avg()}")
    return {"points": points, "fit": fit, "load_before": load_before, "load_after": load_avg()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--styles", default="glass", help="comma-separated: glass, swirls, bands")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a Settings override")
    ap.add_argument("--model", action="store_true", help="measure the cost model instead of a run")
    ap.add_argument("--sizes", default="64,128,181,256,362,512")
    ap.add_argument("--iterations", type=int, default=8, help="iterations per size in --model")
    ap.add_argument("--replay", nargs="+", default=None, metavar="JSON", help="recorded runs to replay")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = ap.parse_args(argv)
    if args.replay:
        figures, name = replay_mode(args), "eta_replay.json"
    elif args.model:
        figures, name = model_mode(args), "eta_model.json"
    else:
        figures, name = run_mode(args), f"eta_{args.size}.json"
    out = (args.out or RESULTS / name).resolve()
    out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
