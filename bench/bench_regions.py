"""Regions (issue #22): guided Gram matrices, measured in process with the real engine.

(a) the Done-when metric: the photo split in left/right halves, a fused run with A=left, B=right and the same
    with the regions swapped; the Gatys style loss (losses.style_distance: unweighted Gram MSE over the style
    layers) of each half-crop against A and against B. Ratio for A: the left half painted with B (swapped run)
    against A / the left half painted with A against A; the same for B on the right. Must be >= 1.4 both ways.
    The same figures for today's way (two single-style runs, each half taken from its style's run) are printed
    beside it.
(b) cost: one fused run vs the two single-style runs it replaces (seconds, and optimiser iterations).
(c) a feathered boundary: a fused run with soft masks (a linear ramp ``--feather`` px wide across the middle)
    vs the two single runs cross-faded by the same masks (today's layer masks); crops at 100 % of the boundary
    saved as PNG, and the style loss of the boundary strip against A and B for both.

The photo is first brought to the working size, so every result is compared at the size it was painted.

    OMP_NUM_THREADS=2 PYTHONPATH=$PWD .venv/bin/python bench/bench_regions.py [--size 256 --iterations 40]

On a busy machine the runs can be split over processes (``--runs ... --no-report``, then ``--runs ''`` for the
report); keep the cost comparison's three runs (single_a, single_b, fused_ab) in one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import RESULTS, sample

from bridge.engine import StyleInput, stylize
from bridge.engine.losses import style_distance
from bridge.engine.pixels import picture_tensor, resize
from bridge.engine.plan import stage_dims
from bridge.engine.targets import style_grams
from bridge.engine.vgg import load_vgg
from bridge.imaging import Picture, load_image
from bridge.settings import Settings

RUNS = ("single_a", "single_b", "fused_ab", "fused_ba", "fused_soft")


def shrink(picture: Picture, long_side: int) -> Picture:
    scale = long_side / max(picture.width, picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    rgb = np.asarray(Image.fromarray(picture.rgb).resize(size, Image.LANCZOS))
    return dataclasses.replace(picture, rgb=rgb, alpha=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", default="photo")
    ap.add_argument("--a", default="style_swirls")
    ap.add_argument("--b", default="style_glass")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--coarse-iterations", type=int, default=10)
    ap.add_argument("--feather", type=int, default=64, help="width in px of the soft boundary of (c)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "regions"))
    ap.add_argument("--runs", default=",".join(RUNS), help="which runs to make now (each is saved as OUT_RUN.npz, "
                    "so two processes can share them on a busy machine); the report uses the saved ones")
    ap.add_argument("--no-report", action="store_true", help="only make the runs")
    args = ap.parse_args()
    torch.manual_seed(0)

    photo = shrink(load_image(sample(args.photo)), args.size)
    style_a, style_b = load_image(sample(args.a)), load_image(sample(args.b))
    settings = Settings(size=args.size, iterations=args.iterations, coarse_iterations=args.coarse_iterations,
                        seed=args.seed, device="cpu")
    h, w = photo.height, photo.width
    left = np.zeros((h, w), np.float32)
    left[:, : w // 2] = 1.0
    ramp = np.clip((np.arange(w, dtype=np.float32) - (w / 2 - args.feather / 2)) / args.feather, 0.0, 1.0)
    soft = np.broadcast_to(1.0 - ramp, (h, w)).astype(np.float32)
    print(f"photo {w}x{h}, A={args.a}, B={args.b}, ladder {settings.ladder(args.size)}, "
          f"iterations {settings.ladder_iterations(settings.ladder(args.size))}, "
          f"torch threads {torch.get_num_threads()}")

    def run(styles: list[StyleInput]) -> tuple[dict[str, np.ndarray], float, int]:
        iters = []
        t = time.perf_counter()

        def progress(p) -> None:
            if p.block is None:
                if p.iteration == p.stage_iterations:
                    print(f"  {p.style_name} stage {p.stage}/{p.stages} done at {time.perf_counter() - t:.0f} s",
                          flush=True)
                iters.append(p.done_iterations)

        result = stylize(photo, styles, settings, progress=progress)
        seconds = time.perf_counter() - t
        return ({i.name: i.picture.rgb_float() for i in result.images}, seconds, max(iters))

    def pair(a_region: np.ndarray, b_region: np.ndarray) -> list[StyleInput]:
        return [StyleInput("A", style_a, region=a_region), StyleInput("B", style_b, region=b_region)]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = {"single_a": [StyleInput("A", style_a)], "single_b": [StyleInput("B", style_b)],
              "fused_ab": pair(left, 1 - left), "fused_ba": pair(1 - left, left), "fused_soft": pair(soft, 1 - soft)}
    for name in [r for r in args.runs.split(",") if r]:
        images, seconds, iters = run(inputs[name])
        np.savez(f"{out}_{name}.npz", seconds=seconds, iterations=iters, **images)
        print(f"{name}: {seconds:.1f} s, {iters} iterations", flush=True)
    if args.no_report:
        return
    runs = {}
    for name in RUNS:
        with np.load(f"{out}_{name}.npz") as z:
            runs[name] = ({k: z[k] for k in z.files if k not in ("seconds", "iterations")}, float(z["seconds"]),
                          int(z["iterations"]))
    single_a = runs["single_a"][0]["A"]
    single_b = runs["single_b"][0]["B"]
    ab, ba, fsoft = runs["fused_ab"][0]["fused"], runs["fused_ba"][0]["fused"], runs["fused_soft"][0]["fused"]

    vgg = load_vgg(settings.weights, settings.pooling, "cpu")
    layers = tuple(settings.style_layers)

    def target(style: Picture) -> dict[str, torch.Tensor]:
        image = picture_tensor(style)
        dims = stage_dims(style.width, style.height, int(round(args.size * settings.style_scale)))
        return style_grams(vgg, resize(image, dims) * 255.0, layers)

    gram_a, gram_b = target(style_a), target(style_b)

    def loss(image: np.ndarray, grams: dict[str, torch.Tensor]) -> float:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None] * 255.0
        with torch.no_grad():
            return style_distance(vgg(x, layers), grams)

    half = w // 2
    L, R = (slice(None), slice(0, half)), (slice(None), slice(half, None))
    table = {
        "fused": {"left_A_vs_A": loss(ab[L], gram_a), "left_B_vs_A": loss(ba[L], gram_a),
                  "right_B_vs_B": loss(ab[R], gram_b), "right_A_vs_B": loss(ba[R], gram_b)},
        "masked_singles": {"left_A_vs_A": loss(single_a[L], gram_a), "left_B_vs_A": loss(single_b[L], gram_a),
                           "right_B_vs_B": loss(single_b[R], gram_b), "right_A_vs_B": loss(single_a[R], gram_b)},
    }
    for row in table.values():
        row["ratio_A"] = row["left_B_vs_A"] / row["left_A_vs_A"]
        row["ratio_B"] = row["right_A_vs_B"] / row["right_B_vs_B"]
    print("(a) per-half style loss (lower = closer); ratio = other style's half / own style's half, must be >= 1.4")
    for name, row in table.items():
        print(f"  {name:15s} " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))

    fused_s, singles_s = runs["fused_ab"][1], runs["single_a"][1] + runs["single_b"][1]
    fused_i, singles_i = runs["fused_ab"][2], runs["single_a"][2] + runs["single_b"][2]
    print(f"(b) cost: fused {fused_s:.1f} s / two singles {singles_s:.1f} s = {fused_s / singles_s:.2f}x "
          f"(iterations {fused_i} / {singles_i}); swapped fused run {runs['fused_ba'][1]:.1f} s")

    cross = single_a * soft[..., None] + single_b * (1.0 - soft[..., None])
    b0, b1 = int(w / 2 - args.feather / 2), int(w / 2 + args.feather / 2)
    strip = (slice(None), slice(b0, b1))
    boundary = {kind: {"vs_A": loss(img[strip], gram_a), "vs_B": loss(img[strip], gram_b)}
                for kind, img in (("fused_soft", fsoft), ("crossfade_singles", cross))}
    print(f"(c) boundary strip (columns {b0}..{b1}, the feather): style loss")
    for name, row in boundary.items():
        print(f"  {name:18s} vs A {row['vs_A']:.4g}  vs B {row['vs_B']:.4g}")

    pad = 16
    crop = (slice(None), slice(max(0, b0 - pad), min(w, b1 + pad)))
    gap = np.ones((h, 4, 3), np.float32)
    sheet = np.concatenate([fsoft[crop], gap, cross[crop], gap, ab[crop]], axis=1)
    Image.fromarray((sheet.clip(0, 1) * 255 + 0.5).astype(np.uint8)).save(f"{out}_boundary_crops.png")
    full = np.concatenate([ab, gap, ba, gap, fsoft, gap, cross], axis=1)
    Image.fromarray((full.clip(0, 1) * 255 + 0.5).astype(np.uint8)).save(f"{out}_full.png")
    report = {"args": vars(args), "size": [w, h], "a": table, "cost": {
        "fused_s": fused_s, "singles_s": singles_s, "ratio": fused_s / singles_s, "fused_iterations": fused_i,
        "singles_iterations": singles_i, "swapped_fused_s": runs["fused_ba"][1]}, "boundary": boundary,
        "torch_threads": torch.get_num_threads()}
    Path(f"{out}.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out}.json, {out}_boundary_crops.png (fused soft | cross-faded singles | fused hard), "
          f"{out}_full.png (fused AB | fused BA | fused soft | cross-faded singles)")


if __name__ == "__main__":
    main()
