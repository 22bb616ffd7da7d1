"""Faithful vs instant preview (issue 23): which one looks more like the real result, and what each costs.

    PYTHONPATH=$PWD python bench/bench_preview_fidelity.py [--full-size 256] [--variants 40] [--full-dir DIR]

Per photo/style pair (the repository's pictures: samples/ and tests/data, bench.common.SAMPLES):

* the full result: ``bridge.engine.stylize`` with the ``--full-preset`` schedule (draft) at ``--full-size``,
  seed 1, everything else the defaults (cached as PNG in ``--full-dir``, so a re-run for tuning reuses it);
* the instant preview (:func:`bridge.preview.preview`, the ONNX network) at the faithful preview's size;
* the faithful preview (:func:`bridge.preview.faithful.faithful_preview`) for each ``--variants`` entry
  (``ITERATIONS[@SIZE]``, e.g. ``40`` or ``20@192``).

Both previews are compared with the full result downscaled (Lanczos) to the preview's size:

* SSIM of luminance (BT.601 Y, Gaussian window sigma 1.5, K1 0.01, K2 0.03, L 255; Wang et al. 2004); 1 = same;
* colour-histogram distance: 1 - intersection of normalised 8x8x8 RGB histograms; 0 = same colours.

The photo itself (at the same size) is the baseline row. Times are wall and CPU seconds per style, torch with
``--threads`` (1: the CPU time is then the work itself, whatever else shares the machine), with the load average.

Writes results/preview_fidelity.json, results/preview_fidelity.log (printed lines, appended) and
results/preview_fidelity.jpg (per pair: photo | instant | faithful | full result, all at preview size).
On a busy machine run each pair in its own process (``--pairs P --tag T``), then ``--merge T1,T2,...``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import SAMPLES  # noqa: E402
from bridge.imaging import Picture, load_image, save_image  # noqa: E402
from bridge.settings import DEFAULTS, PRESETS, PREVIEW  # noqa: E402

RESULTS = REPO / "bench" / "results"
PAIRS = ("photo:style_swirls", "photo:style_glass", "photo:style_bands", "photo:starry_night",
         "photo:the_scream", "shipwreck:style_swirls")
LINES: list[str] = []


def say(text: str) -> None:
    print(text, flush=True)
    LINES.append(text)


def load() -> str:
    return "load %.1f %.1f %.1f" % os.getloadavg()


def luminance(rgb: np.ndarray) -> np.ndarray:
    x = rgb.astype(np.float64)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def ssim_y(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luminance of two uint8 RGB images of the same size (Gaussian window, sigma 1.5)."""
    x, y = luminance(a), luminance(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, 1.5, mode="reflect", truncate=3.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = 8) -> float:
    """1 - intersection of the normalised bins^3 RGB histograms of two uint8 images (as bench_preview.py)."""
    def hist(x: np.ndarray) -> np.ndarray:
        q = (x.reshape(-1, 3).astype(np.int64) * bins) // 256
        h = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins ** 3).astype(np.float64)
        return h / h.sum()
    return float(1.0 - np.minimum(hist(a), hist(b)).sum())


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))


def timed(fn):
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def full_result(photo: Picture, style: Picture, key: str, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    from bridge.engine import stylize
    from bridge.engine.types import StyleInput

    path = Path(args.full_dir) / f"{key}_{args.full_preset}_{args.full_size}.png"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        return load_image(path).rgb, json.loads(meta_path.read_text())
    settings = DEFAULTS.replace(**PRESETS[args.full_preset]).replace(size=args.full_size, seed=1, preview_every=0)
    result, wall, cpu = timed(lambda: stylize(photo, [StyleInput(style.name, style)], settings))
    picture = result.images[0].picture
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(picture, path)
    meta = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "working_size": list(result.working_size),
            "ladder": settings.ladder(args.full_size), "load": os.getloadavg()}
    meta_path.write_text(json.dumps(meta))
    say(f"  full result {key}: {wall:.1f} s wall, {cpu:.1f} s CPU, working size {result.working_size} ({load()})")
    return picture.rgb, meta


def variant(text: str) -> tuple[int, int]:
    its, _, size = text.partition("@")
    return int(its), int(size or PREVIEW.faithful_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default=",".join(PAIRS), help="PHOTO:STYLE,... (names from bench.common.SAMPLES)")
    parser.add_argument("--full-size", type=int, default=256)
    parser.add_argument("--full-preset", default="draft", choices=tuple(PRESETS))
    parser.add_argument("--variants", default=str(PREVIEW.faithful_iterations),
                        help="faithful variants, ITERATIONS[@SIZE],... (default: the PREVIEW defaults)")
    parser.add_argument("--full-dir", default=str(Path("/tmp") / "stylebridge_fidelity_full"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="suffix of the output files (tuning runs)")
    parser.add_argument("--merge", default="", metavar="TAG,...",
                        help="no runs: merge the outputs of earlier runs with these --tag values (pairs run in "
                             "parallel processes on a busy machine) into the untagged files")
    parser.add_argument("--full-only", action="store_true",
                        help="only compute the full results into --full-dir (a second process can fill the cache)")
    args = parser.parse_args()
    if args.merge:
        return merge(args)

    import torch

    from bridge.preview import load_models, preview
    from bridge.preview.faithful import faithful_preview

    torch.set_num_threads(args.threads)
    models = load_models(threads=args.threads)
    variants = [variant(v) for v in args.variants.split(",") if v.strip()]
    say(f"== bench_preview_fidelity {time.strftime('%Y-%m-%d %H:%M')} full: {args.full_preset} at {args.full_size} px; "
        f"faithful variants {args.variants}; torch threads {args.threads}; {load()}")
    rows, strips = [], []
    for pair in args.pairs.split(","):
        photo_name, style_name = pair.split(":")
        photo, style = load_image(SAMPLES[photo_name]), load_image(SAMPLES[style_name])
        full, full_meta = full_result(photo, style, f"{photo_name}_{style_name}", args)
        if args.full_only:
            continue
        row: dict = {"pair": pair, "full": full_meta, "faithful": {}}
        tiles = []
        for its, side in variants:
            fp, wall, cpu = timed(lambda: faithful_preview(photo, style, long_side=side, iterations=its))
            size = (fp.picture.width, fp.picture.height)
            ref = resize(full, size)
            if not tiles:      # instant and photo at the first variant's size
                ip, iwall, icpu = timed(lambda: preview(photo, style, long_side=max(size), models=models))
                photo_small = resize(photo.rgb, size)
                row["size"] = list(size)
                row["photo"] = {"ssim": ssim_y(photo_small, ref), "hist": histogram_distance(photo_small, ref)}
                row["instant"] = {"ssim": ssim_y(ip.picture.rgb, ref), "hist": histogram_distance(ip.picture.rgb, ref),
                                  "wall_s": round(iwall, 3), "cpu_s": round(icpu, 3)}
                tiles = [photo_small, ip.picture.rgb]
            key = f"{its}@{side}"
            row["faithful"][key] = {"ssim": ssim_y(fp.picture.rgb, resize(full, size)),
                                    "hist": histogram_distance(fp.picture.rgb, resize(full, size)),
                                    "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": os.getloadavg()[0]}
            tiles.append(resize(fp.picture.rgb, (tiles[0].shape[1], tiles[0].shape[0])))
        tiles.append(resize(full, (tiles[0].shape[1], tiles[0].shape[0])))
        strips.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
        f = row["faithful"]
        say(f"{pair:24s} SSIM(Y) photo {row['photo']['ssim']:.3f} instant {row['instant']['ssim']:.3f} "
            + " ".join(f"faithful[{k}] {v['ssim']:.3f}" for k, v in f.items())
            + f" | hist photo {row['photo']['hist']:.3f} instant {row['instant']['hist']:.3f} "
            + " ".join(f"faithful[{k}] {v['hist']:.3f}" for k, v in f.items())
            + f" | s/style instant {row['instant']['wall_s']:.2f} "
            + " ".join(f"faithful[{k}] {v['wall_s']:.1f} wall {v['cpu_s']:.1f} CPU" for k, v in f.items())
            + f" ({load()})")
        rows.append(row)

    if args.full_only:
        return 0
    sheet = _sheet(strips)
    write(rows, [f"{its}@{side}" for its, side in variants], Image.fromarray(sheet), args)
    return 0


def _sheet(strips: list[np.ndarray]) -> np.ndarray:
    width = max(s.shape[1] for s in strips)
    return np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips])


def merge(args: argparse.Namespace) -> int:
    rows, sheets, keys = [], [], None
    for tag in args.merge.split(","):
        data = json.loads((RESULTS / f"preview_fidelity_{tag}.json").read_text())
        rows += data["pairs"]
        keys = keys or [k for k in data["summary"] if k.startswith("faithful ")]
        sheets.append(np.asarray(Image.open(RESULTS / f"preview_fidelity_{tag}.jpg").convert("RGB")))
        args.full_preset, args.full_size, args.threads = data["full_preset"], data["full_size"], data["threads"]
        args.variants = data["variants"]
    say(f"== merged {args.merge}")
    write(rows, [k.split(" ", 1)[1] for k in keys or []], Image.fromarray(_sheet(sheets)), args)
    return 0


def write(rows: list[dict], keys: list[str], sheet: Image.Image, args: argparse.Namespace) -> None:
    """The summary over the pairs, printed and written (json, jpg, log)."""
    summary: dict = {}
    for kind in ("photo", "instant"):
        summary[kind] = {m: round(statistics.mean(r[kind][m] for r in rows), 4) for m in ("ssim", "hist")}
    for key in keys:
        vals = [r["faithful"][key] for r in rows]
        summary[f"faithful {key}"] = {
            "ssim": round(statistics.mean(v["ssim"] for v in vals), 4),
            "hist": round(statistics.mean(v["hist"] for v in vals), 4),
            "median_wall_s": round(statistics.median(v["wall_s"] for v in vals), 2),
            "median_cpu_s": round(statistics.median(v["cpu_s"] for v in vals), 2),
            "closer_ssim": sum(v["ssim"] > r["instant"]["ssim"] for v, r in zip(vals, rows)),
            "closer_hist": sum(v["hist"] < r["instant"]["hist"] for v, r in zip(vals, rows)),
            "pairs": len(rows)}
    for name, s in summary.items():
        say(f"mean {name:22s} SSIM(Y) {s['ssim']:.3f}  hist {s['hist']:.3f}"
            + (f"  closer than instant: SSIM {s['closer_ssim']}/{s['pairs']}, hist {s['closer_hist']}/{s['pairs']}; "
               f"median {s['median_wall_s']:.1f} s wall, {s['median_cpu_s']:.1f} s CPU per style" if "pairs" in s else ""))
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag and not args.merge else ""
    (RESULTS / f"preview_fidelity{tag}.json").write_text(json.dumps(
        {"full_preset": args.full_preset, "full_size": args.full_size, "threads": args.threads,
         "variants": args.variants, "summary": summary, "pairs": rows}, indent=1))
    sheet.save(RESULTS / f"preview_fidelity{tag}.jpg", quality=88)
    with open(RESULTS / "preview_fidelity.log", "a") as fh:
        fh.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    sys.exit(main())
