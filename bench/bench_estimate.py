"""Is the daemon's time estimate (``POST /v1/estimate``, bridge/daemon/speed.py) near the real run time?

    PYTHONPATH=. .venv/bin/python bench/bench_estimate.py --presets draft,normal [--style glass]

For each preset: the start-up probe (speed.measure, as ``stylebridge serve`` does), the estimate for
samples/photo.jpg with one style, then one real in-process ``stylize`` at that preset; prints estimate,
actual engine seconds and their ratio, the machine load before/after, and the engine's ETA error at the
first progress event at or past 25/50/75 % (the engine's RunEstimator, as bench_eta.py measures it).
Then what the meter learns from the run (record_finished) and the estimate for the next preset with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_eta import load_avg  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="draft,normal")
    ap.add_argument("--style", default="glass")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from bridge.daemon import speed
    from bridge.engine import StyleInput, stylize
    from bridge.engine.eta import cost_model
    from bridge.engine.vgg import load_vgg
    from bridge.imaging import load_image
    from bridge.settings import DEFAULTS
    from bridge.settings_parse import settings_from_mapping

    photo = load_image(REPO / "samples" / "photo.jpg")
    style = StyleInput(args.style, load_image(REPO / "samples" / f"style_{args.style}.jpg"))
    vgg = load_vgg(DEFAULTS.weights, DEFAULTS.pooling, "cpu")
    t = time.perf_counter()
    meter = speed.SpeedMeter("cpu", probe_spp=speed.measure(vgg, "cpu", DEFAULTS))
    print(f"photo {photo.width}x{photo.height}; probe {time.perf_counter() - t:.1f} s, "
          f"{meter.probe_spp:.3g} s/px-equivalent (cpu prior {cost_model('cpu').seconds_per_pixel:.3g}); "
          f"load {load_avg()}")
    rows = []
    for preset in args.presets.split(","):
        settings, _, _ = settings_from_mapping({"preset": preset, "seed": 7})
        est = speed.estimate(settings, photo.width, photo.height, 1, meter)
        probe_only = speed.estimate(settings, photo.width, photo.height, 1, meter, corrected=False).seconds
        events: list[tuple[float, float, float]] = []
        t0 = time.perf_counter()

        def progress(p) -> None:
            events.append((time.perf_counter() - t0, p.percent, p.eta_seconds))

        before = load_avg()
        stylize(photo, [style], settings, progress=progress)
        actual = time.perf_counter() - t0
        eta_err = {}
        for mark in (25, 50, 75):
            hit = next((e for e in events if e[1] >= mark), None)
            if hit is not None and hit[2] is not None:
                real = actual - hit[0]
                eta_err[mark] = round(100.0 * (hit[2] - real) / real, 1) if real > 0 else None
        monotonic = all(b[1] >= a[1] for a, b in zip(events, events[1:]))
        row = {"preset": preset, "stages": est.stages, "estimate_s": round(est.seconds, 1),
               "probe_only_s": round(probe_only, 1), "actual_s": round(actual, 1),
               "ratio": round(est.seconds / actual, 2), "eta_error_pct": eta_err, "percent_monotonic": monotonic,
               "load_before": before, "load_after": load_avg(), "factor_before": _factor(meter)}
        speed.record_finished(meter, settings, photo.width, photo.height, 1, actual)
        row["factor_after"] = _factor(meter)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def _factor(meter) -> float:
    """Finished jobs' speed over the probe's (1.0 before any)."""
    return 1.0 if meter.learnt_spp is None else round(meter.learnt_spp / meter.probe_spp, 2)


if __name__ == "__main__":
    raise SystemExit(main())
