"""Every GPU figure in one command (issue 23, item 10).

    .venv/bin/python bench/bench_gpu.py [--device cuda] [--only default,quality,print6mp,native24,previews]
    .venv/bin/python bench/bench_gpu.py --tiny --device cpu      # a smoke run at tiny sizes (seconds)

Figures (each printed as it is measured, then a table; JSON in bench/results/gpu[_tiny].json, the table in
gpu[_tiny].txt; --out DIR elsewhere):

default   stylize() at the committed defaults (size 512, coarse-to-fine ladder, 150 final iterations, L-BFGS) on
          samples/photo.jpg + starry_night: seconds and peak memory (torch.cuda.max_memory_allocated on CUDA,
          the process's peak RSS on a CPU), per-stage seconds per iteration.
quality   time to pastiche's quality, as bench/bench_peer.py measures it: pastiche (300 L-BFGS steps, its layer
          weights set so its loss equals ours) and stylebridge (defaults, bench/run_ours.py) on the same
          pre-resized inputs, each in its own process on the device; the bar is pastiche's output judged by
          bench.common.judge; ours is the process wall time until its last stage's running loss drops below it.
          Ratio = ours to reach / pastiche's time (issue 7's target: <= 0.35).
print6mp  the print preset's whole run (its own iterations, native size) on a 6 MP photo: seconds per stage and in
          all, peak memory (bench/bench_print.py's ``stages --full``).
native24  one native-size stage of 24 MP (samples/photo.jpg upscaled plus grain): seconds per native iteration
          (the first, which carries the set-up, left out) and peak memory; the tiled plan (blocks, history).
previews  per style: the instant preview (the ONNX network, bridge.preview; on the CPU whatever --device says)
          and a small real Gatys run at 176 px (the draft schedule; what the faithful preview runs) on the device.

``--tiny`` shrinks every figure (32-64 px, a few iterations, pastiche 3 steps) so the whole command runs in
seconds on a CPU: tests/test_bench_gpu.py runs it so the GPU command cannot rot unseen.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import RESULTS, judge, measure, prepare, sample  # noqa: E402
from bridge.engine import StyleInput, stylize  # noqa: E402
from bridge.imaging import load_image  # noqa: E402
from bridge.settings import DEFAULTS, NATIVE_SIZE, Settings  # noqa: E402
from bridge.settings_parse import settings_from_mapping  # noqa: E402

FIGURES = ("default", "quality", "print6mp", "native24", "previews")
PHOTO = "coffee"
STYLE = "starry_night"
PREVIEW_STYLES = ("starry_night", "the_scream", "style_swirls")
PASTICHE_CHANNELS = {"relu1": 64, "relu2": 128, "relu3": 256, "relu4": 512, "relu5": 512}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each figure runs at: the real figures, or --tiny's."""

    default: dict                 # Settings overrides for the default run
    quality_size: int
    pastiche_steps: int
    quality_ours: dict            # run_ours --set overrides
    print_megapixels: float
    print_overrides: dict         # over the print preset (none: its own whole schedule)
    native_megapixels: float
    native_iterations: int
    preview_side: int
    faithful: dict                # the small Gatys run of a faithful preview
    preview_styles: tuple[str, ...] = PREVIEW_STYLES


FULL = Sizes(default={}, quality_size=512, pastiche_steps=300, quality_ours={}, print_megapixels=6.0,
             print_overrides={}, native_megapixels=24.0, native_iterations=3, preview_side=512,
             faithful={"preset": "draft", "size": 176})
TINY = Sizes(default={"size": 48, "min_size": 24, "iterations": 2, "coarse_iterations": 1},
             quality_size=32, pastiche_steps=3,
             quality_ours={"size": 32, "min_size": 16, "iterations": 3, "coarse_iterations": 1},
             print_megapixels=0.004,
             print_overrides={"iterations": 1, "coarse_iterations": 1, "large_iterations": (1,), "min_size": 16,
                              "base_size": 32},
             native_megapixels=0.004, native_iterations=3, preview_side=32,
             faithful={"preset": "draft", "size": 32, "min_size": 16, "iterations": 1, "coarse_iterations": 1},
             preview_styles=PREVIEW_STYLES[:1])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str) -> float:
    """Peak memory since the last reset: CUDA's allocator, or the process's peak RSS (never reset) on a CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Clock:
    """Per-iteration (stage, wall) from stylize()'s progress (whole iterations, not tiled blocks)."""

    def __init__(self, device: str) -> None:
        self.device, self.t0, self.events = device, time.perf_counter(), []

    def __call__(self, p) -> None:
        if p.block is not None:
            return
        _sync(self.device)
        self.events.append((p.stage, p.stage_size, time.perf_counter() - self.t0))

    def per_stage(self) -> list[dict]:
        """Per stage: long side, iterations, set-up + first iteration, median further iteration (seconds)."""
        out, prev = [], 0.0
        for stage in sorted({e[0] for e in self.events}):
            ev = [e for e in self.events if e[0] == stage]
            steps = [b[2] - a[2] for a, b in zip(ev, ev[1:])]
            out.append({"stage": stage, "long_side": ev[0][1], "iterations": len(ev), "first_s": ev[0][2] - prev,
                        "iter_s": statistics.median(steps) if steps else None, "stage_s": ev[-1][2] - prev})
            prev = ev[-1][2]
        return out


def _settings(overrides: dict, device: str, **extra) -> Settings:
    settings, _, _ = settings_from_mapping({**overrides, **extra})
    return settings.replace(device=device, preview_every=0)


def _photo(megapixels: float):
    """samples/photo.jpg upscaled to ``megapixels`` (3:2) plus seeded grain (bench_print.photo_of)."""
    from bench.bench_print import dims_of, photo_of
    width, height = dims_of(megapixels)
    return photo_of(max(16, width), max(16, height))


def _timed(photo, styles: list[StyleInput], settings: Settings, device: str) -> dict:
    _reset_peak(device)
    clock = Clock(device)
    t = time.perf_counter()
    result = stylize(photo, styles, settings, progress=clock)
    _sync(device)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_mb": _peak_mb(device), "stages": clock.per_stage(),
            "working_size": list(result.working_size), "warnings": result.warnings}


def fig_default(sizes: Sizes, device: str, work: Path) -> dict:
    settings = _settings(sizes.default, device, seed=1)
    photo = load_image(sample(PHOTO))
    out = _timed(photo, [StyleInput(STYLE, load_image(sample(STYLE)))], settings, device)
    out["summary"] = f"{out['seconds']:.1f} s, peak {out['peak_mb']:.0f} MB"
    return out


def fig_quality(sizes: Sizes, device: str, work: Path) -> dict:
    """bench_peer's method on the device: pastiche's final loss is the bar; ours is timed until it passes it."""
    from bench.bench_peer import pastiche_layer, time_to_reach
    ours = _settings(sizes.quality_ours, device)
    cw, sw, tvw = ours.content_weight, ours.style_weight * ours.style_strength, ours.tv_weight
    content = prepare(sample(PHOTO), sizes.quality_size, work)
    style = prepare(sample(STYLE), sizes.quality_size, work)
    out_p, out_o, trace = work / "pastiche.png", work / "ours.png", work / "ours.json"
    p_cmd = [sys.executable, "-m", "pastiche", "--device", device, "--seed", "0", "--no-verbose",
             "--num-steps", str(sizes.pastiche_steps), "--size", str(sizes.quality_size),
             "--style-size", str(sizes.quality_size), "--content-weight", str(cw), "--tv-weight", "0",
             "--pooling", ours.pooling, "--optimizer", ours.optimizer,
             "--content-layers", *[pastiche_layer(n) for n in ours.content_layers],
             "--content-layer-weights", *["1.0"] * len(ours.content_layers),
             "--style-layers", *[pastiche_layer(n) for n in ours.style_layers],
             "--style-layer-weights", *[repr(sw / PASTICHE_CHANNELS[n[:5]] ** 2) for n in ours.style_layers],
             "-c", str(content), "-s", str(style), "-o", str(out_p)]
    sets = {"size": sizes.quality_size, "seed": 0, "device": device, **sizes.quality_ours}
    o_cmd = [sys.executable, str(REPO / "bench" / "run_ours.py"), str(content), str(style), str(out_o), str(trace),
             *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    runs = {"pastiche": measure(p_cmd), "stylebridge": measure(o_cmd)}
    for tool, m in runs.items():
        if m.returncode != 0:
            raise RuntimeError(f"{tool} failed ({m.returncode}): {m.stderr.strip()[-600:]}")
    layers = {"content_layers": ours.content_layers, "style_layers": ours.style_layers}
    bar = judge(out_p, content, style, content_weight=cw, style_weight=sw, tv_weight=tvw, **layers)["total"]
    final = judge(out_o, content, style, content_weight=cw, style_weight=sw, tv_weight=tvw, **layers)["total"]
    reach = time_to_reach(json.loads(trace.read_text()), runs["stylebridge"].seconds, bar)
    ratio = None if reach is None else reach / runs["pastiche"].seconds
    return {"size": sizes.quality_size, "pastiche_steps": sizes.pastiche_steps, "bar": bar, "ours_final": final,
            "pastiche_s": runs["pastiche"].seconds, "ours_s": runs["stylebridge"].seconds, "reach_s": reach,
            "ratio": ratio, "summary": f"reach {'not reached' if reach is None else f'{reach:.1f} s'} / pastiche "
                                       f"{runs['pastiche'].seconds:.1f} s = "
                                       f"{'-' if ratio is None else f'{ratio:.2f}'} (target <= 0.35)"}


def fig_print6mp(sizes: Sizes, device: str, work: Path) -> dict:
    photo = _photo(sizes.print_megapixels)
    settings = _settings({"preset": "print", **sizes.print_overrides}, device, seed=1)
    out = _timed(photo, [StyleInput(STYLE, load_image(sample(STYLE)))], settings, device)
    out.update(width=photo.width, height=photo.height,
               summary=f"{photo.width}x{photo.height}: {out['seconds']:.1f} s, peak {out['peak_mb']:.0f} MB, "
                       f"{len(out['stages'])} stages")
    return out


def fig_native24(sizes: Sizes, device: str, work: Path) -> dict:
    from bridge.engine import plan as run_plan
    from bridge.engine.vgg import load_vgg
    photo = _photo(sizes.native_megapixels)
    settings = Settings(size=NATIVE_SIZE, coarse_to_fine=False, iterations=sizes.native_iterations, seed=1,
                        preview_every=0, device=device)
    vgg = load_vgg(settings.weights, settings.pooling, device)
    plan = run_plan.plan_stages(vgg, settings, [(photo.height, photo.width)], [settings.iterations],
                                torch.device(device))[0]
    del vgg
    out = _timed(photo, [StyleInput(STYLE, load_image(sample(STYLE)))], settings, device)
    stage = out["stages"][0]
    out.update(width=photo.width, height=photo.height, plan=dataclasses.asdict(plan), iter_s=stage["iter_s"],
               summary=f"{photo.width}x{photo.height}: {stage['iter_s'] or float('nan'):.2f} s per native "
                       f"iteration, peak {out['peak_mb']:.0f} MB ({'tiled' if plan.inner else 'whole image'})")
    return out


def fig_previews(sizes: Sizes, device: str, work: Path) -> dict:
    photo = load_image(sample(PHOTO))
    styles = [load_image(sample(s)) for s in sizes.preview_styles]
    rows = []
    try:
        from bridge.preview.engine import preview
        from bridge.preview.models import load_models
        t = time.perf_counter()
        models = load_models()
        load_s = time.perf_counter() - t
        instant = [preview(photo, s, style_name=n, long_side=sizes.preview_side, models=models).seconds
                   for n, s in zip(sizes.preview_styles, styles)]
        note = None
    except Exception as exc:   # noqa: BLE001 - the instant previews need an optional package; say so and go on
        load_s, instant, note = None, [None] * len(styles), f"instant previews unavailable: {exc}"
    faithful = _settings(sizes.faithful, device, seed=1)
    for name, style, inst in zip(sizes.preview_styles, styles, instant):
        run = _timed(photo, [StyleInput(name, style)], faithful, device)
        rows.append({"style": name, "instant_s": inst, "faithful_s": run["seconds"], "peak_mb": run["peak_mb"]})
    gatys = statistics.median(r["faithful_s"] for r in rows)
    inst_done = [r["instant_s"] for r in rows if r["instant_s"] is not None]
    return {"instant_model_load_s": load_s, "rows": rows, "note": note, "faithful_size": faithful.size,
            "summary": f"instant {statistics.median(inst_done) if inst_done else float('nan'):.2f} s, "
                       f"faithful ({faithful.size} px Gatys) {gatys:.2f} s per style (median)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run in seconds (CPU)")
    ap.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated, of {', '.join(FIGURES)}")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu[_tiny].json and .txt")
    args = ap.parse_args(argv)
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in only if f not in FIGURES]
    if unknown:
        print(f"bench_gpu: unknown figure(s) {', '.join(unknown)}: choose from {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"bench_gpu: --device {args.device} but torch sees no CUDA GPU (use --tiny --device cpu for a smoke "
              "run)", file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else FULL
    info = {"host": platform.node(), "cpu": platform.processor(), "torch": torch.__version__,
            "device": args.device, "tiny": args.tiny, "load": os.getloadavg(),
            "gpu": torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None}
    print(f"bench_gpu on {info['gpu'] or 'cpu'} (torch {info['torch']}){' --tiny' if args.tiny else ''}",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    figures: dict[str, dict] = {}
    failed = []
    try:
        for name in only:
            t = time.perf_counter()
            try:
                (work / name).mkdir()
                fig = globals()[f"fig_{name}"](sizes, args.device, work / name)
            except Exception as exc:  # noqa: BLE001 - one figure failing must not lose the others
                fig = {"error": f"{type(exc).__name__}: {exc}", "summary": f"FAILED: {exc}"}
                failed.append(name)
            fig["figure_s"] = time.perf_counter() - t
            figures[name] = fig
            print(f"  {name:9} {fig['summary']}  ({fig['figure_s']:.1f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = _table(figures, info)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_tiny" if args.tiny else "gpu"
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": info, "figures": figures,
                                                       "defaults": DEFAULTS.to_dict()}, indent=1, default=str) + "\n")
    (args.out / f"{stem}.txt").write_text(table + "\n")
    return 1 if failed else 0


def _table(figures: dict[str, dict], info: dict) -> str:
    lines = [f"| figure | result | ({info['gpu'] or 'cpu'}, torch {info['torch']}{', tiny' if info['tiny'] else ''}) |",
             "|---|---|---|"]
    for name, fig in figures.items():
        lines.append(f"| {name} | {fig['summary']} | {fig['figure_s']:.0f} s to measure |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
