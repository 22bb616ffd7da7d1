"""Blend-mode maths (Photoshop's formulas) and a banded composite of a :class:`LayerStack`.

The PSD writer stores this composite as the file's merged image ("maximize compatibility"),
so readers that only show the flattened image (previews, ImageMagick's ``[0]``, the hot
folder's own reader) see what Photoshop would show.  Computed band by band in float32, so a
24 MP document costs a few hundred MB rather than a float copy per layer.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from .model import Group, Layer, LayerStack

BlendFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

_LUM = np.array([0.3, 0.59, 0.11], np.float32)


def _lum(c: np.ndarray) -> np.ndarray:
    return (c @ _LUM)[..., None]


def _clip_color(c: np.ndarray) -> np.ndarray:
    lum = _lum(c)
    n = c.min(axis=-1, keepdims=True)
    x = c.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.where(n < 0.0, lum + (c - lum) * lum / np.where(lum - n == 0, 1, lum - n), c)
        high = np.where(x > 1.0, lum + (low - lum) * (1 - lum) / np.where(x - lum == 0, 1, x - lum), low)
    return high


def _set_lum(c: np.ndarray, lum: np.ndarray) -> np.ndarray:
    return _clip_color(c + (lum - _lum(c)))


def _soft_light(b: np.ndarray, s: np.ndarray) -> np.ndarray:
    # Photoshop's soft light (not the W3C variant): 2bs + b^2(1-2s) / 2b(1-s) + sqrt(b)(2s-1)
    return np.where(s <= 0.5, 2 * b * s + b * b * (1 - 2 * s), 2 * b * (1 - s) + np.sqrt(b) * (2 * s - 1))


def _overlay(b: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.where(b <= 0.5, 2 * b * s, 1 - 2 * (1 - b) * (1 - s))


BLEND_FUNCTIONS: dict[str, BlendFn] = {
    "normal": lambda b, s: s,
    "multiply": lambda b, s: b * s,
    "screen": lambda b, s: b + s - b * s,
    "overlay": _overlay,
    "hard_light": lambda b, s: _overlay(s, b),
    "soft_light": _soft_light,
    "linear_light": lambda b, s: np.clip(b + 2 * s - 1, 0.0, 1.0),
    "darken": np.minimum,
    "lighten": np.maximum,
    "difference": lambda b, s: np.abs(b - s),
    "color": lambda b, s: _set_lum(s, _lum(b)),
    "luminosity": lambda b, s: _set_lum(b, _lum(s)),
}


def quantized_opacity(opacity: float) -> float:
    """Opacity as PSD stores it (0..255), so the merged image matches what Photoshop shows."""
    return round(max(0.0, min(1.0, float(opacity))) * 255) / 255.0


def blend(mode: str, backdrop: np.ndarray, source: np.ndarray) -> np.ndarray:
    """B(backdrop, source) for one of :data:`bridge.settings.BLEND_MODES` (float 0..1, ... x 3)."""
    try:
        fn = BLEND_FUNCTIONS[mode]
    except KeyError:
        raise ValueError(f"unknown blend mode {mode!r}") from None
    return fn(backdrop, source)


def _band(arr: np.ndarray, y0: int, y1: int) -> np.ndarray:
    top = 65535.0 if arr.dtype == np.uint16 else 255.0
    return arr[y0:y1].astype(np.float32) / np.float32(top)


def _layer_band(layer: Layer, stack: LayerStack, y0: int, y1: int
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """(colour H x W x 3, coverage H x W x 1) of a layer's rows in document space, or None if empty."""
    if layer.pixels is None:
        return None
    h, w = y1 - y0, stack.width
    ly0, ly1 = max(y0, layer.top), min(y1, layer.top + layer.height)
    lx0, lx1 = max(0, layer.left), min(w, layer.left + layer.width)
    if ly0 >= ly1 or lx0 >= lx1:
        return None
    color = np.zeros((h, w, 3), np.float32)
    cover = np.zeros((h, w, 1), np.float32)
    px = _band(layer.pixels, ly0 - layer.top, ly1 - layer.top)[:, lx0 - layer.left:lx1 - layer.left]
    color[ly0 - y0:ly1 - y0, lx0:lx1] = px[:, :, :3]
    cover[ly0 - y0:ly1 - y0, lx0:lx1, 0] = px[:, :, 3] if px.shape[2] == 4 else 1.0
    if layer.mask is not None:
        m = _band(layer.mask, ly0 - layer.top, ly1 - layer.top)[:, lx0 - layer.left:lx1 - layer.left]
        cover[ly0 - y0:ly1 - y0, lx0:lx1, 0] *= m
    opacity = quantized_opacity(layer.opacity)
    if opacity < 1.0:
        cover *= np.float32(opacity)
    if not cover.any():
        return None
    return color, cover


def _apply(layer: Layer, stack: LayerStack, y0: int, y1: int,
           color: np.ndarray, alpha: np.ndarray) -> None:
    """Composite one visible layer onto (color, alpha) in place (W3C compositing with Photoshop's B)."""
    got = _layer_band(layer, stack, y0, y1)
    if got is None:
        return
    cs, a_s = got
    _source_over(layer.mode, cs, a_s, color, alpha)


def _source_over(mode: str, cs: np.ndarray, a_s: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> None:
    """Blend source (cs, a_s) onto backdrop (color, alpha) in place: W3C compositing, the mode as B."""
    ab = alpha
    mixed = (1.0 - ab) * cs + ab * blend(mode, color, cs)
    ao = a_s + ab * (1.0 - a_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        co = np.where(ao > 0, (a_s * mixed + (1.0 - a_s) * ab * color) / np.where(ao > 0, ao, 1), 0.0)
    color[...] = co
    alpha[...] = ao


def composite_band(stack: LayerStack, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``y0:y1`` of the flattened document: (colour rows x W x 3, alpha rows x W x 1), float32.

    Hidden layers and groups do not count; a group is pass-through or normal (isolated), and its
    mask and opacity fade its whole result in over what lay below it.
    """
    h = y1 - y0
    color = np.zeros((h, stack.width, 3), np.float32)
    alpha = np.zeros((h, stack.width, 1), np.float32)
    for item in stack.items:
        if not item.visible:
            continue
        if isinstance(item, Group):
            _apply_group(item, stack, y0, y1, color, alpha)
        else:
            _apply(item, stack, y0, y1, color, alpha)
    return color, alpha


def _apply_group(group: Group, stack: LayerStack, y0: int, y1: int,
                 color: np.ndarray, alpha: np.ndarray) -> None:
    fade = np.full((y1 - y0, stack.width, 1), np.float32(quantized_opacity(group.opacity)), np.float32)
    if group.mask is not None:
        fade *= _band(group.mask, y0, y1)[:, :, None]
    if not fade.any():
        return
    if group.mode == "pass_through":
        c, a = color.copy(), alpha.copy()
        for child in group.children:
            if child.visible:
                _apply(child, stack, y0, y1, c, a)
        color[...] = color + (c - color) * fade
        alpha[...] = alpha + (a - alpha) * fade
        return
    # isolated group: flatten children on transparency, then blend as one layer
    c = np.zeros_like(color)
    a = np.zeros_like(alpha)
    for child in group.children:
        if child.visible:
            _apply(child, stack, y0, y1, c, a)
    a *= fade
    _source_over(group.mode, c, a, color, alpha)


def iter_composite(stack: LayerStack, band_rows: int = 256
                   ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Yield ``(y0, y1, colour, alpha)`` bands of the flattened document, top to bottom."""
    for y0 in range(0, stack.height, band_rows):
        y1 = min(stack.height, y0 + band_rows)
        color, alpha = composite_band(stack, y0, y1)
        yield y0, y1, color, alpha


def composite(stack: LayerStack, band_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The flattened document at its depth: (H x W x 3, H x W) uint8/uint16 colour and alpha."""
    dtype = np.uint16 if stack.depth == 16 else np.uint8
    top = 65535.0 if stack.depth == 16 else 255.0
    rgb = np.empty((stack.height, stack.width, 3), dtype)
    a = np.empty((stack.height, stack.width), dtype)
    for y0, y1, color, alpha in iter_composite(stack, band_rows):
        rgb[y0:y1] = (np.clip(color, 0, 1) * top + 0.5).astype(dtype)
        a[y0:y1] = (np.clip(alpha[:, :, 0], 0, 1) * top + 0.5).astype(dtype)
    return rgb, a
