"""Figures for print resolution (issue 12): optimising at the photo's native size through stylize().

    .venv/bin/python bench/bench_print.py native  [--megapixels 24] [--iterations 2] [--device cpu] [--budget MB]
    .venv/bin/python bench/bench_print.py quality [--long-side 1024 | --photo P] [--style S] [--device cpu]
    .venv/bin/python bench/bench_print.py stages  [--megapixels 6] [--iterations 2] [--device cpu]
    .venv/bin/python bench/bench_print.py all --device cuda        # every figure, each in its own process

native   stylize() at size "native", one stage (no coarse-to-fine) of --iterations on a --megapixels photo
         (samples/photo.jpg upscaled, plus seeded noise so it is not smooth; style tests/data/starry_night):
         seconds per native iteration (CPU s and wall; from the progress events, the first iteration carries
         the set-up and is left out) / (pixel ratio x seconds per iteration of a whole-image 512 px stylize()
         measured before and after in the same process). Target <= 2.5. Peak memory: the process's peak RSS
         (CPU; target <= 8 GB at 24 MP) or torch.cuda.max_memory_allocated (CUDA). The plan (blocks, inner
         side, L-BFGS history) is printed. With 2 iterations L-BFGS holds 1 history pair; the full
         history's extra (plan.history - 1 pairs) is added to the peak and printed apart.
quality  the print preset against today's result on a --long-side photo (samples/photo.jpg upscaled):
         one print run; its 512 px stage is exactly the normal preset's last stage (same ladder, iterations
         and seed up to there: it is taken from the run's checkpoint), upsampled as today (guided filter).
         Gatys style distance (losses.style_distance: sum over the style layers of the Gram MSE) of 512 px
         crops of each result at native resolution, against the style image at the scale the native stage
         uses (style_scale x the long side), print / upsampled. Target <= 0.2. Crops side by side in
         bench/results/print_quality_crops.jpg. --iterations/--coarse-iterations/--large-iterations shorten the
         schedule (both results alike: the 512 px result is the same run's 512 px stage).
stages   the print preset's ladder on a --megapixels photo with --iterations per stage (timing only):
         per stage the set-up + first iteration and the seconds per further iteration; the preset's whole
         run extrapolated from them (preset iterations x measured seconds per iteration + set-ups). With
         --full, the preset's own iterations are run and the wall time is measured (hours on a CPU).
all      native (24 MP), quality and stages (6 MP, --full on CUDA) each in its own process, results in
         bench/results/print_*.json. Made for a CUDA machine; on a CPU it takes many hours.

Every figure is printed with the machine and its load; on the shared 2-core CPU run with OMP_NUM_THREADS=1
(CPU-second ratios stay meaningful under other people's load).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import RESULTS, machine, side_by_side  # noqa: E402
from bridge.engine import StyleInput, stylize, upsample  # noqa: E402
from bridge.engine import plan as run_plan  # noqa: E402
from bridge.engine import tiled  # noqa: E402
from bridge.engine.checkpoint import EngineState  # noqa: E402
from bridge.engine.losses import gram_matrix, style_distance  # noqa: E402
from bridge.engine.pixels import picture_tensor, resize  # noqa: E402
from bridge.engine.vgg import load_vgg  # noqa: E402
from bridge.imaging import Picture, load_image  # noqa: E402
from bridge.settings import NATIVE_SIZE, Settings  # noqa: E402
from bridge.settings_parse import settings_from_mapping  # noqa: E402

PHOTO = REPO / "samples" / "photo.jpg"
STYLE = REPO / "tests" / "data" / "starry_night.jpg"


def _load() -> str:
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def photo_of(width: int, height: int, noise: float = 12.0, seed: int = 5) -> Picture:
    """samples/photo.jpg upscaled (bicubic) to width x height, plus seeded grain (an upscaled photo is
    smoother than a real one)."""
    base = load_image(PHOTO)
    rgb = np.asarray(Image.fromarray(base.rgb).resize((width, height), Image.BICUBIC), dtype=np.float32)
    if noise:
        rng = np.random.default_rng(seed)
        for y in range(0, height, 512):      # in bands: a 24 MP float noise image would cost 288 MB more
            band = rgb[y:y + 512]
            band += rng.normal(0.0, noise, band.shape).astype(np.float32)
    return dataclasses.replace(base, rgb=np.clip(rgb, 0, 255).astype(np.uint8), name="photo")


def dims_of(megapixels: float) -> tuple[int, int]:
    width = int(round((megapixels * 1e6 * 3 / 2) ** 0.5))
    return width, int(round(width * 2 / 3))


class Clock:
    """Progress callback recording (stage, iteration, wall, CPU) per iteration."""

    def __init__(self, device: str) -> None:
        self.device, self.events = device, []
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def __call__(self, p) -> None:
        if p.block is not None:          # progress within a tiled iteration: this clock times whole iterations
            return
        _sync(self.device)
        self.events.append((p.stage, p.iteration, time.perf_counter() - self.t0, time.process_time() - self.c0))
        print(f"    stage {p.stage}/{p.stages} ({p.stage_size} px) iteration {p.iteration}/{p.stage_iterations}: "
              f"{self.events[-1][2]:.1f} s wall, {self.events[-1][3]:.1f} s CPU, peak {_peak_mb(self.device):.0f} MB; "
              f"{p.percent:.1f}%, ETA {p.eta_seconds or 0:.0f} s; {_load()}", flush=True)

    def per_stage(self) -> dict[int, dict[str, float]]:
        """Per stage: set-up + first iteration (since the previous stage's last event or the start), and the
        median seconds of the further iterations (wall and CPU)."""
        out: dict[int, dict[str, float]] = {}
        prev = (0.0, 0.0)
        for stage in sorted({e[0] for e in self.events}):
            ev = [e for e in self.events if e[0] == stage]
            walls = [b[2] - a[2] for a, b in zip(ev, ev[1:])]
            cpus = [b[3] - a[3] for a, b in zip(ev, ev[1:])]
            out[stage] = {"first_wall_s": ev[0][2] - prev[0], "first_cpu_s": ev[0][3] - prev[1],
                          "iter_wall_s": statistics.median(walls) if walls else float("nan"),
                          "iter_cpu_s": statistics.median(cpus) if cpus else float("nan"), "iterations": len(ev)}
            prev = (ev[-1][2], ev[-1][3])
        return out


def _style(path: Path = STYLE) -> list[StyleInput]:
    return [StyleInput(path.stem, load_image(path))]


def timed_stylize(photo: Picture, styles: list[StyleInput], settings: Settings, device: str,
                  **kwargs) -> tuple[object, float, "Clock"]:
    """One stylize() with the peak memory counter reset (CUDA) and its progress clocked: (result, seconds, clock)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock = Clock(device)
    t = time.perf_counter()
    result = stylize(photo, styles, settings, progress=clock, **kwargs)
    return result, time.perf_counter() - t, clock


def whole512(device: str, iterations: int = 4) -> dict[str, float]:
    """Seconds per iteration of a whole-image stylize() at 512 px (one stage), median of the further ones."""
    photo = photo_of(512, 341)
    clock = Clock(device)
    stylize(photo, _style(), Settings(size=512, coarse_to_fine=False, iterations=iterations, seed=1,
                                      preview_every=0, device=device), progress=clock)
    stage = clock.per_stage()[1]
    return {"pixels": 512 * 341, "iter_wall_s": stage["iter_wall_s"], "iter_cpu_s": stage["iter_cpu_s"]}


def cmd_native(args: argparse.Namespace) -> dict:
    width, height = dims_of(args.megapixels)
    before = whole512(args.device)
    print(f"whole-image 512 px iteration: {before['iter_wall_s']:.2f} s wall, {before['iter_cpu_s']:.2f} s CPU; "
          f"{_load()}", flush=True)
    photo = photo_of(width, height)
    settings = Settings(size=NATIVE_SIZE, coarse_to_fine=False, iterations=args.iterations, seed=1, preview_every=0,
                        device=args.device, block_memory=args.budget, style_scale=args.style_scale)
    vgg = load_vgg(settings.weights, settings.pooling, args.device)
    plan = run_plan.plan_stages(vgg, settings, [(height, width)], [args.iterations], torch.device(args.device))[0]
    blocks = (tiled.block_count(vgg, tuple(dict.fromkeys([*settings.content_layers, *settings.style_layers])),
                                         height, width, plan.inner) if plan.inner else 1)
    print(f"{width}x{height} ({width * height / 1e6:.1f} MP): plan {plan}, {blocks} blocks; budget "
          f"{tiled.budget_bytes(settings, torch.device(args.device)) / 2**20:.0f} MB; {_load()}", flush=True)
    result, total, clock = timed_stylize(photo, _style(), settings, args.device)
    peak = _peak_mb(args.device)
    after = whole512(args.device)
    stage = clock.per_stage()[1]
    pixel_ratio = width * height / before["pixels"]
    base_cpu = (before["iter_cpu_s"] + after["iter_cpu_s"]) / 2
    base_wall = (before["iter_wall_s"] + after["iter_wall_s"]) / 2
    overhead_cpu = stage["iter_cpu_s"] / (pixel_ratio * base_cpu)
    overhead_wall = stage["iter_wall_s"] / (pixel_ratio * base_wall)
    history_extra = max(0, plan.history - 1) * 2 * 4 * 3 * width * height / 2**20
    print(f"native iteration: {stage['iter_wall_s']:.1f} s wall, {stage['iter_cpu_s']:.1f} s CPU; overhead "
          f"(CPU s) {stage['iter_cpu_s']:.1f} / ({pixel_ratio:.1f} x {base_cpu:.3f}) = {overhead_cpu:.2f} "
          f"(target <= 2.5), wall {overhead_wall:.2f}; peak {peak / 1024:.2f} GB (+ {history_extra / 1024:.2f} GB "
          f"for the full history = {(peak + history_extra) / 1024:.2f} GB; target <= 8 GB at 24 MP); run {total:.0f} s; "
          f"{_load()}", flush=True)
    return {"width": width, "height": height, "plan": dataclasses.asdict(plan), "blocks": blocks,
            "whole512_before": before, "whole512_after": after, "native_stage": stage, "pixel_ratio": pixel_ratio,
            "overhead_cpu": overhead_cpu, "overhead_wall": overhead_wall, "peak_mb": peak,
            "history_extra_mb": history_extra, "peak_with_full_history_mb": peak + history_extra,
            "run_s": total, "warnings": result.warnings, "events": clock.events}


class _Keep:
    """A Checkpoint that keeps the state saved at the end of one stage (the normal preset's last one)."""

    interval_s = 1e12

    def __init__(self, stage: int) -> None:
        self.stage, self.state = stage, None

    def load(self) -> EngineState | None:
        return None

    def save(self, state: EngineState) -> None:
        if state.stage == self.stage and self.state is None and state.iteration > 0:
            self.state = state


def _crops(image: np.ndarray, side: int) -> list[tuple[int, int]]:
    h, w = image.shape[:2]
    xs = sorted({0, max(0, (w - side) // 2), max(0, w - side)})
    ys = sorted({0, max(0, h - side)})
    return [(y, x) for y in ys for x in xs]


def cmd_quality(args: argparse.Namespace) -> dict:
    style_path = args.style or STYLE
    if args.photo:          # a real photo at its own size (an upscaled one has no fine detail to paint)
        photo = load_image(args.photo)
        width, height = photo.width, photo.height
    else:
        width = args.long_side
        height = int(round(width * 341 / 512))
        photo = photo_of(width, height, noise=0.0)
    shorter = {k: v for k, v in (("iterations", args.iterations), ("coarse_iterations", args.coarse_iterations),
                                 ("large_iterations", args.large_iterations)) if v is not None}
    settings, _, _ = settings_from_mapping({"preset": "print", "seed": 3, "preview_every": 0, "device": args.device,
                                            **shorter})
    ladder = run_plan.working_ladder(settings, width, height)
    base = ladder.index(settings.base_size)
    keep = _Keep(base)
    clock = Clock(args.device)
    t = time.perf_counter()
    result = stylize(photo, _style(style_path), settings, progress=clock, checkpoint=keep)
    seconds = time.perf_counter() - t
    assert keep.state is not None and keep.state.iteration == settings.iterations
    # today's result: the normal preset's last stage (512 px), upsampled to native size as stylize() does it
    dims = run_plan.stage_dims(width, height, ladder[base])
    guide = resize(picture_tensor(photo), dims)
    today = upsample.to_native(torch.from_numpy(keep.state.image)[None] / 255.0, photo, guide,
                               mode=settings.upsample, eps=settings.guided_eps)
    printed = result.images[0].picture
    vgg = load_vgg(settings.weights, settings.pooling, args.device)
    style = picture_tensor(load_image(style_path))
    sdims = run_plan.stage_dims(style.shape[-1], style.shape[-2], int(round(width * settings.style_scale)))
    with torch.no_grad():
        target = {k: gram_matrix(v) for k, v in vgg((resize(style, sdims) * 255.0).to(args.device),
                                                   settings.style_layers).items()}

    def distance(rgb: np.ndarray) -> float:
        x = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None].to(args.device)
        with torch.no_grad():
            return style_distance(vgg(x, settings.style_layers), target)

    side = min(512, height, width)
    rows = []
    for y, x in _crops(printed.rgb, side):
        d_print = distance(printed.rgb[y:y + side, x:x + side])
        d_today = distance(today.rgb[y:y + side, x:x + side])
        d_photo = distance(photo.rgb[y:y + side, x:x + side])
        rows.append({"y": y, "x": x, "print": d_print, "upsampled": d_today, "photo": d_photo,
                     "ratio": d_print / d_today})
        print(f"  crop at ({x}, {y}) {side} px: style distance print {d_print:.4g}, upsampled {d_today:.4g}, "
              f"photo {d_photo:.4g}; print / upsampled {d_print / d_today:.3f}", flush=True)
    ratio = statistics.mean(r["print"] for r in rows) / statistics.mean(r["upsampled"] for r in rows)
    # side by side: a 384 px crop at 1:1 from the middle of each
    out = RESULTS / "print_quality_crops.jpg"
    c = min(384, height, width)
    y0, x0 = (height - c) // 2, (width - c) // 2
    files = []
    for name, pic in (("photo", photo), ("upsampled_512", today), ("print_native", printed)):
        f = RESULTS / f"_crop_{name}.png"
        Image.fromarray(pic.rgb[y0:y0 + c, x0:x0 + c]).save(f)
        files.append(f)
    side_by_side(files, [f"photo {width}x{height} (1:1 crop)", "today: 512 px, guided upsampling",
                         "print preset: native size"], out, height=c, max_bytes=400_000)
    for f in files:
        f.unlink()
    full = RESULTS / "print_quality_full.jpg"
    Image.fromarray(np.concatenate([today.rgb, np.full((height, 8, 3), 255, np.uint8), printed.rgb], axis=1)).save(
        full, quality=85)
    print(f"print / upsampled style distance (mean over {len(rows)} crops of {side} px): {ratio:.3f} (target "
          f"<= 0.2); run {seconds:.0f} s; crops in {out.relative_to(REPO)}; {_load()}", flush=True)
    return {"width": width, "height": height, "ladder": ladder, "iterations": settings.ladder_iterations(ladder),
            "photo_file": str(args.photo or "samples/photo.jpg upscaled"), "style_file": str(style_path),
            "overrides": shorter, "crops": rows, "ratio": ratio, "run_s": seconds, "per_stage": clock.per_stage(),
            "warnings": result.warnings, "losses": result.images[0].losses}


def cmd_stages(args: argparse.Namespace) -> dict:
    width, height = dims_of(args.megapixels)
    photo = photo_of(width, height)
    preset, _, _ = settings_from_mapping({"preset": "print", "seed": 1, "preview_every": 0, "device": args.device,
                                          "block_memory": args.budget})
    ladder = run_plan.working_ladder(preset, width, height)
    full_iters = preset.ladder_iterations(ladder)
    settings = preset if args.full else preset.replace(iterations=args.iterations, coarse_iterations=args.iterations,
                                                       large_iterations=(args.iterations,))
    vgg = load_vgg(settings.weights, settings.pooling, args.device)
    dims = [run_plan.stage_dims(width, height, s) for s in ladder]
    plans = run_plan.plan_stages(vgg, settings, dims, settings.ladder_iterations(ladder), torch.device(args.device))
    print(f"{width}x{height}: ladder {ladder}, preset iterations {full_iters}; tiled stages "
          f"{[ladder[k] for k, p in enumerate(plans) if p.inner]} (inner {[p.inner for p in plans if p.inner]}, "
          f"history {[p.history for p in plans]}); {_load()}", flush=True)
    result, seconds, clock = timed_stylize(photo, _style(), settings, args.device)
    stages = clock.per_stage()
    rows, total_wall, total_cpu = [], 0.0, 0.0
    for k, side in enumerate(ladder, start=1):
        st = stages[k]
        n = full_iters[k - 1]
        it_w = st["iter_wall_s"] if st["iter_wall_s"] == st["iter_wall_s"] else st["first_wall_s"]
        it_c = st["iter_cpu_s"] if st["iter_cpu_s"] == st["iter_cpu_s"] else st["first_cpu_s"]
        est_w = st["first_wall_s"] + (n - 1) * it_w
        est_c = st["first_cpu_s"] + (n - 1) * it_c
        total_wall += est_w
        total_cpu += est_c
        rows.append({"stage": k, "long_side": side, "tiled": plans[k - 1].inner is not None, "preset_iterations": n,
                     **st, "extrapolated_wall_s": est_w, "extrapolated_cpu_s": est_c})
        print(f"  {side:5d} px {'tiled' if plans[k - 1].inner else 'whole'}: set-up + 1st {st['first_wall_s']:.1f} s "
              f"wall / {st['first_cpu_s']:.1f} CPU, then {it_w:.2f} s wall / {it_c:.2f} CPU per iteration; "
              f"x {n} -> {est_w / 60:.1f} min wall, {est_c / 60:.1f} min CPU", flush=True)
    peak = _peak_mb(args.device)
    print(f"print preset at {width}x{height}: {'measured' if args.full else 'extrapolated'} "
          f"{(seconds if args.full else total_wall) / 3600:.2f} h wall ({total_cpu / 3600:.2f} h CPU); this run "
          f"{seconds:.0f} s, peak {peak / 1024:.2f} GB; {_load()}", flush=True)
    return {"width": width, "height": height, "ladder": ladder, "preset_iterations": full_iters, "full": args.full,
            "stages": rows, "run_s": seconds, "extrapolated_wall_s": total_wall, "extrapolated_cpu_s": total_cpu,
            "peak_mb": peak, "warnings": result.warnings}


def cmd_all(args: argparse.Namespace) -> dict:
    """Each figure in its own process (peaks are per process), results in bench/results/print_*.json."""
    out = {}
    full = ["--full"] if args.device == "cuda" else ["--iterations", "2"]
    for name, extra in (("quality", []), ("stages", ["--megapixels", "6", *full]),
                        ("native", ["--megapixels", "24", "--iterations", "2"])):
        cmd = [sys.executable, __file__, name, "--device", args.device, "--save", *extra]
        print("$", " ".join(cmd), flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd)
        out[name] = {"rc": rc, "seconds": time.perf_counter() - t}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("native", "quality", "stages", "all"):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
        p.add_argument("--save", action="store_true", help="write bench/results/print_<cmd>[_cuda].json")
        p.add_argument("--budget", type=int, default=0, help="block_memory in MB (0 = from free memory)")
        if name == "native":
            p.add_argument("--megapixels", type=float, default=24.0)
            p.add_argument("--iterations", type=int, default=2)
            p.add_argument("--style-scale", type=float, default=1.0)
        if name == "quality":
            p.add_argument("--long-side", type=int, default=1024)
            p.add_argument("--photo", type=Path, help="a photo at its own size instead of samples/photo.jpg upscaled")
            p.add_argument("--style", type=Path, help=f"the style image (default {STYLE.relative_to(REPO)}); use "
                           "one at least as large as the photo")
            p.add_argument("--iterations", type=int, help="override the preset's (a shorter run on a busy CPU)")
            p.add_argument("--coarse-iterations", type=int)
            p.add_argument("--large-iterations", help="e.g. 10 (comma-separated)")
        if name == "stages":
            p.add_argument("--megapixels", type=float, default=6.0)
            p.add_argument("--iterations", type=int, default=2)
            p.add_argument("--full", action="store_true", help="the preset's own iterations (a real whole run)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_print: --device cuda but torch sees no CUDA device")
    info = machine()
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    result = {"cmd": args.cmd, "device": args.device, "machine": info, **globals()[f"cmd_{args.cmd}"](args)}
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=1, default=str)
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        suffix = "_cuda" if args.device == "cuda" else ""
        (RESULTS / f"print_{args.cmd}{suffix}.json").write_text(text + "\n")
    print(text[-3000:] if len(text) > 3000 else text)


if __name__ == "__main__":
    main()
