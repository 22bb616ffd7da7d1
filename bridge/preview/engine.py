"""Any style image -> a fast feed-forward *preview* of the photo under that style (never the result).

A preview shows in a fraction of a second roughly what a style will do, so an artist can choose styles
before spending minutes on the real Gatys optimisation (:mod:`bridge.engine`), whose result differs: it
is a different method (a network trained to imitate style losses) working at a different scale.

The transform network only takes 384 x 384. The photo (its long side at 384, aspect kept) is centred in
that square and the rest filled by reflecting the photo, not by bars, so the network's instance
normalisation sees photo-like statistics. Two ways to reach the preview size:

* ``guided`` (default): one network run at 384 px, then the engine's own edge-aware upsampling
  (:func:`bridge.engine.upsample.to_native`, guided by the photo), which puts the photo's detail finer
  than 384 px back. One run per style: 512 and 1024 px previews cost the same network time.
* ``tiles``: the photo at the preview size cut into overlapping 384 px tiles, each stylised, blended with
  feathered weights. Finer strokes (they keep the network's scale in preview pixels) but one run per tile,
  and each tile normalises its own colours.
* ``auto`` (default): ``guided`` up to 1.5 x 384 = 576 px, ``tiles`` above. Judged on the samples
  (bench/results/preview_methods_1024.jpg): at 512 px both look alike and guided costs one run instead of
  two; at 1024 px guided is visibly soft (a 2.7x upsampling of blobs) while tiles keep crisp strokes and show
  no seams, for 6 runs instead of 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..imaging import Picture, to_dtype
from ..settings import PREVIEW
from .models import NETWORK_SIZE, STYLE_SIZE, PreviewModels, load_models

DEFAULT_LONG_SIDE = PREVIEW.size            # its home: bridge.settings.PREVIEW
MAX_LONG_SIDE = 4096
METHODS = ("auto", "guided", "tiles")
AUTO_GUIDED_MAX = NETWORK_SIZE * 3 // 2   # auto: guided up to here, tiles above
TILE_OVERLAP = 64


@dataclass(frozen=True)
class StylePreview:
    """A feed-forward impression of one style on the photo: a preview, not the Gatys result."""

    style_name: str
    picture: Picture           # 8-bit RGB at the preview size, named "<style> (preview)"
    method: str                # "guided" or "tiles" (what "auto" chose)
    seconds: float             # network and upsampling time, without loading the models

    @property
    def label(self) -> str:
        return f"{self.style_name} (preview)"


def preview_size(width: int, height: int, long_side: int = DEFAULT_LONG_SIDE) -> tuple[int, int]:
    """(w, h) with the photo's aspect and ``long_side`` on the long side, never larger than the photo."""
    long_side = min(int(long_side), max(width, height))
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def rgb8(picture: Picture) -> np.ndarray:
    """H x W x 3 uint8: 16-bit reduced, transparency composited over white (what a viewer shows)."""
    pic = picture.to_bit_depth(8)
    if pic.alpha is None:
        return np.ascontiguousarray(pic.rgb)
    a = pic.alpha_float()[..., None]
    return to_dtype(pic.rgb_float() * a + (1.0 - a), np.uint8)


def resized(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos resize of an H x W x 3 uint8 array to (w, h)."""
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))


def style_vector(style: Picture, models: PreviewModels | None = None) -> np.ndarray:
    """The style's 100-number vector: its central square at 256 px through the style predictor."""
    models = models or load_models()
    rgb = rgb8(style)
    h, w = rgb.shape[:2]
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    square = resized(rgb[top:top + side, left:left + side], (STYLE_SIZE, STYLE_SIZE))
    return models.style_vector((square.astype(np.float32) / 255.0)[None])


def _letterbox(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The (at most 384 px) photo centred in a 384 square, filled by reflection; returns (1x384x384x3, offset)."""
    h, w = rgb.shape[:2]
    top, left = (NETWORK_SIZE - h) // 2, (NETWORK_SIZE - w) // 2
    x = rgb.astype(np.float32) / 255.0
    pad = ((top, NETWORK_SIZE - h - top), (left, NETWORK_SIZE - w - left), (0, 0))
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.ascontiguousarray(np.pad(x, pad, mode=mode)[None]), (top, left)


def _stylise_fit(models: PreviewModels, rgb: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """One network run on a picture that fits in 384 x 384; float32 H x W x 3 in 0..1, same size."""
    h, w = rgb.shape[:2]
    boxed, (top, left) = _letterbox(rgb)
    out = models.stylise(boxed, vector)[0]
    return np.clip(out[top:top + h, left:left + w], 0.0, 1.0)


def _network_dims(width: int, height: int) -> tuple[int, int]:
    scale = NETWORK_SIZE / max(width, height)
    return max(1, min(NETWORK_SIZE, round(width * scale))), max(1, min(NETWORK_SIZE, round(height * scale)))


def _guided(models: PreviewModels, photo_rgb: np.ndarray, size: tuple[int, int], vector: np.ndarray) -> np.ndarray:
    """One run at 384 px, brought to ``size`` by the engine's photo-guided upsampling."""
    net = resized(photo_rgb, _network_dims(photo_rgb.shape[1], photo_rgb.shape[0]))
    styled = _stylise_fit(models, net, vector)
    if max(size) <= max(net.shape[:2]):   # preview no bigger than the network's output: plain downsizing
        return resized(to_dtype(styled, np.uint8), size)
    import torch   # only here: a small preview needs neither torch nor its start-up time

    from ..engine.upsample import to_native

    target = Picture(rgb=resized(photo_rgb, size))
    styled_t = torch.from_numpy(styled).permute(2, 0, 1).unsqueeze(0)
    guide_t = torch.from_numpy(net.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    return to_native(styled_t, target, guide_t, mode="guided").rgb


def _tile_starts(length: int) -> list[int]:
    if length <= NETWORK_SIZE:
        return [0]
    n = math.ceil((length - NETWORK_SIZE) / (NETWORK_SIZE - TILE_OVERLAP)) + 1
    return [round(i * (length - NETWORK_SIZE) / (n - 1)) for i in range(n)]


def _feather(length: int) -> np.ndarray:
    """Blending weight across a tile: ramps up over the overlap at both ends, never zero."""
    i = np.arange(length, dtype=np.float32)
    return np.minimum(1.0, np.minimum(i + 1, length - i) / TILE_OVERLAP)


def _tiles(models: PreviewModels, photo_rgb: np.ndarray, size: tuple[int, int], vector: np.ndarray) -> np.ndarray:
    """Overlapping 384 px tiles of the photo at ``size``, each stylised, blended with feathered edges."""
    rgb = resized(photo_rgb, size)
    h, w = rgb.shape[:2]
    if max(h, w) <= NETWORK_SIZE:
        return to_dtype(_stylise_fit(models, rgb, vector), np.uint8)
    acc = np.zeros((h, w, 3), np.float32)
    weight = np.zeros((h, w, 1), np.float32)
    for y in _tile_starts(h):
        for x in _tile_starts(w):
            tile = rgb[y:y + NETWORK_SIZE, x:x + NETWORK_SIZE]
            th, tw = tile.shape[:2]
            wgt = (_feather(th)[:, None] * _feather(tw)[None, :])[..., None]
            acc[y:y + th, x:x + tw] += _stylise_fit(models, tile, vector) * wgt
            weight[y:y + th, x:x + tw] += wgt
    return to_dtype(acc / weight, np.uint8)


def preview(photo: Picture, style: Picture | np.ndarray, *, style_name: str | None = None,
            long_side: int = DEFAULT_LONG_SIDE, method: str = "auto",
            models: PreviewModels | None = None) -> StylePreview:
    """A preview of ``photo`` under ``style`` (a style image, or a vector from :func:`style_vector`).

    The preview has the photo's aspect ratio and ``long_side`` pixels on its long side (never more than
    the photo has). It is 8-bit RGB without the photo's alpha, ICC or DPI: for looking at, not for editing.
    """
    if method not in METHODS:
        raise ValueError(f"preview method {method!r} is not one of {', '.join(METHODS)}")
    if not 1 <= int(long_side) <= MAX_LONG_SIDE:
        raise ValueError(f"preview size {long_side} is not between 1 and {MAX_LONG_SIDE}")
    models = models or load_models()
    start = time.perf_counter()
    if isinstance(style, Picture):
        name = style_name or style.name
        vector = style_vector(style, models)
    else:
        name = style_name or "style"
        vector = np.asarray(style, dtype=np.float32).reshape(1, 1, 1, -1)
    photo_rgb = rgb8(photo)
    size = preview_size(photo.width, photo.height, long_side)
    if method == "auto":
        method = "guided" if max(size) <= AUTO_GUIDED_MAX else "tiles"
    render = _guided if method == "guided" else _tiles
    rgb = render(models, photo_rgb, size, vector)
    picture = Picture(rgb=rgb, name=f"{name} (preview)")
    return StylePreview(name, picture, method, time.perf_counter() - start)


def previews(photo: Picture, styles: Sequence[Picture], *, long_side: int = DEFAULT_LONG_SIDE,
             method: str = "auto", models: PreviewModels | None = None) -> list[StylePreview]:
    """One preview per style, in order (the models are loaded once)."""
    models = models or load_models()
    return [preview(photo, s, long_side=long_side, method=method, models=models) for s in styles]
