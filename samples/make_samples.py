"""Rebuild the shipped sample images in samples/ (content photo + procedural style images).

Why procedural styles: paintings with a clear licence are not available offline, and images we draw
ourselves can ship under the project's own licence. Each style has strong texture and colour so that
the stylisation is obvious. Everything is seeded, so a re-run gives the same pixels.

    python samples/make_samples.py --coffee PATH/TO/coffee.png   # content photo + styles
    python samples/make_samples.py                                # styles only

``coffee.png`` comes from the scikit-image wheel (``skimage/data/coffee.png``, CC0 by Rachel Michetti):
``pip download --no-deps scikit-image==0.26.0`` and ``unzip -j *.whl skimage/data/coffee.png``.
Only numpy and Pillow are used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
W, H = 512, 384          # landscape, like the photo
QUALITY = 90


def _save(arr: np.ndarray, name: str) -> None:
    img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB")
    path = HERE / name
    img.save(path, "JPEG", quality=QUALITY, optimize=True, progressive=True)
    print(f"{path.name}: {img.size[0]}x{img.size[1]}, {path.stat().st_size // 1024} KB")


def _palette(t: np.ndarray, stops: list[tuple[float, tuple[int, int, int]]]) -> np.ndarray:
    """Map a 0..1 field through colour stops (piecewise linear)."""
    xs = np.array([s for s, _ in stops])
    cols = np.array([c for _, c in stops], dtype=np.float32) / 255.0
    return np.stack([np.interp(t, xs, cols[:, k]) for k in range(3)], axis=-1)


def _blur(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """3x3 box blur repeated ``passes`` times (Pillow's filters do not take float images)."""
    for _ in range(passes):
        p = np.pad(a, 1, mode="edge")
        a = sum(p[dy:dy + a.shape[0], dx:dx + a.shape[1]] for dy in range(3) for dx in range(3)) / 9.0
    return a


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise: a coarse random grid resized with bicubic interpolation, 0..1."""
    small = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    img = Image.fromarray(small, "F").resize((w + 2 * cell, h + 2 * cell), Image.BICUBIC)
    out = np.asarray(img)[cell:cell + h, cell:cell + w]
    return (out - out.min()) / (np.ptp(out) + 1e-8)


def swirls(seed: int = 1) -> np.ndarray:
    """Brush strokes along a field of vortices (line integral convolution), night-sky palette."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    vx = np.zeros((H, W), np.float32)
    vy = np.zeros((H, W), np.float32)
    for _ in range(9):                                   # vortices of random spin and size
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        r = rng.uniform(40, 130)
        s = rng.choice([-1.0, 1.0])
        dx, dy = xx - cx, yy - cy
        fall = np.exp(-(dx * dx + dy * dy) / (2 * r * r))
        vx += -s * dy / r * fall
        vy += s * dx / r * fall
    vx += 0.35                                            # a gentle wind so strokes never stall
    norm = np.sqrt(vx * vx + vy * vy) + 1e-6
    vx, vy = vx / norm, vy / norm
    noise = rng.random((H, W)).astype(np.float32)
    noise = _blur(noise)
    acc = np.zeros((H, W), np.float32)
    for direction in (1.0, -1.0):                        # integrate forward and backward
        px, py = xx.copy(), yy.copy()
        for _ in range(18):
            ix = np.clip(px.astype(np.int32), 0, W - 1)
            iy = np.clip(py.astype(np.int32), 0, H - 1)
            acc += noise[iy, ix]
            px += direction * vx[iy, ix] * 1.5
            py += direction * vy[iy, ix] * 1.5
    lic = acc / 36.0
    lic = (lic - lic.mean()) / (lic.std() + 1e-6)
    base = _smooth_noise(rng, H, W, 96)
    t = np.clip(0.75 * base + 0.12 * lic, 0, 1)
    rgb = _palette(t, [(0.0, (12, 24, 70)), (0.35, (30, 70, 150)), (0.55, (90, 140, 200)),
                       (0.7, (230, 210, 110)), (0.85, (245, 180, 40)), (1.0, (255, 245, 200))])
    shade = np.clip(1.0 + 0.22 * lic, 0.55, 1.4)[..., None]
    return np.clip(rgb * shade, 0, 1)


def stained_glass(seed: int = 2) -> np.ndarray:
    """Voronoi cells in saturated jewel colours with dark lead lines and a little glass mottling."""
    rng = np.random.default_rng(seed)
    n = 140
    pts = np.stack([rng.uniform(0, W, n), rng.uniform(0, H, n)], axis=1).astype(np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    best = np.full((H, W), np.inf, np.float32)
    second = np.full((H, W), np.inf, np.float32)
    label = np.zeros((H, W), np.int32)
    for i, (px, py) in enumerate(pts):                   # nearest and second-nearest seed
        d = np.sqrt((xx - px) ** 2 + (yy - py) ** 2)
        closer = d < best
        second = np.where(closer, best, np.minimum(second, d))
        label = np.where(closer, i, label)
        best = np.where(closer, d, best)
    jewels = np.array([(170, 20, 40), (20, 60, 160), (240, 180, 20), (20, 130, 70), (120, 30, 140),
                       (230, 100, 20), (40, 150, 190), (200, 200, 170)], np.float32) / 255.0
    colours = jewels[rng.integers(0, len(jewels), n)] * rng.uniform(0.75, 1.1, (n, 1))
    rgb = colours[label]
    mottle = _smooth_noise(rng, H, W, 12)
    rgb = rgb * (0.8 + 0.35 * mottle[..., None])
    glow = np.clip(1.0 - best / 60.0, 0.6, 1.0)[..., None]      # brighter cell centres
    rgb = rgb * glow
    lead = np.clip((second - best - 1.5) / 2.0, 0, 1)[..., None]  # dark borders ~3 px wide
    return np.clip(rgb * lead + (1 - lead) * 0.06, 0, 1)


def colour_field(seed: int = 3) -> np.ndarray:
    """Bold bands of flat colour with hard wavy edges and dry-brush streaks (op-art / poster)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    warp = _smooth_noise(rng, H, W, 64) - 0.5
    phase = (xx + yy * 0.6) / 34.0 + 5.0 * warp + 2.0 * np.sin(yy / 45.0)
    band = np.floor(phase).astype(np.int64)
    colours = np.array([(230, 57, 70), (241, 250, 238), (29, 53, 87), (255, 183, 3), (42, 157, 143),
                        (0, 0, 0), (251, 133, 0)], np.float32) / 255.0
    rgb = colours[band % len(colours)]
    streak = _blur(rng.random((H, W)).astype(np.float32), 2)
    dry = np.clip((streak - streak.mean()) * 6.0, -0.18, 0.18)[..., None]
    return np.clip(rgb + dry, 0, 1)


def photo(coffee: Path) -> None:
    """The content photo: coffee.png (600x400) scaled to 512 px on its long side, JPEG q90."""
    with Image.open(coffee) as im:
        im = im.convert("RGB")
        scale = 512 / max(im.size)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
    path = HERE / "photo.jpg"
    im.save(path, "JPEG", quality=QUALITY, optimize=True, progressive=True)
    print(f"{path.name}: {im.size[0]}x{im.size[1]}, {path.stat().st_size // 1024} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coffee", type=Path, help="skimage/data/coffee.png from the scikit-image wheel")
    args = parser.parse_args()
    if args.coffee:
        photo(args.coffee)
    _save(swirls(), "style_swirls.jpg")
    _save(stained_glass(), "style_glass.jpg")
    _save(colour_field(), "style_bands.jpg")


if __name__ == "__main__":
    main()
