"""Build the fusion document's layer stack from a stylisation result.

Bottom to top::

    Original            the photo at native size (role original)
    <group>             one masked layer per style (role style; the blended result role blend); with regions
                        "Fused" on top (role fused): every region painted in one run, masked by their union
    Detail              the photo's high-frequency detail, mid-grey based (role detail)
    Original colours    the photo in Color mode, hidden, black mask (role colors)
    Refine              an empty transparent layer to paint on (role refine)

Every default (names, reveal, detail mode/opacity/radius...) comes from
:class:`bridge.settings.DocumentSettings`.  Arrays keep the document's depth (uint8/uint16);
the photo's array is shared, not copied, between ``Original`` and ``Original colours``, and the
detail is computed in bands so a 24 MP photo never needs full-size float copies.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..engine.types import StyledImage, StylizeResult
from ..imaging import Picture, convert_depth
from ..settings import DocumentSettings, Reveal
from .model import Group, Layer, LayerStack

#: Fixed layer names (the group's comes from the settings or the run name).
ORIGINAL_NAME = "Original"
DETAIL_NAME = "Detail"
COLORS_NAME = "Original colours"
REFINE_NAME = "Refine"
FUSED_NAME = "Fused"      # the regions' result (engine result "fused"), the top of the Styles group

_BAND_ROWS = 256          # rows per band when computing the detail layer



# --------------------------------------------------------------------------------------------
# depth helpers

def _top(dtype: np.dtype) -> int:
    return 65535 if np.dtype(dtype) == np.uint16 else 255


def _with_alpha(rgb: np.ndarray, alpha: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    rgb = convert_depth(rgb, dtype)
    if alpha is None:
        return rgb
    return np.dstack([rgb, convert_depth(alpha, dtype)])


def normalize_mask(mask: np.ndarray, width: int, height: int, dtype: np.dtype | type,
                   label: str = "mask") -> np.ndarray:
    """Grayscale mask (uint8/uint16/float 0..1/bool, H x W or H x W x 1/3/4) -> H x W at ``dtype``.

    White reveals.  A colour mask uses its first channel (selections exported as RGB are grey).
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f"{label}: expected a grayscale H x W array, got shape {arr.shape}")
    if arr.shape != (height, width):
        raise ValueError(f"{label}: is {arr.shape[1]}x{arr.shape[0]} pixels but the photo is "
                         f"{width}x{height}; masks must have the photo's size")
    dtype = np.dtype(dtype)
    top = _top(dtype)
    if arr.dtype == np.bool_:
        return np.where(arr, dtype.type(top), dtype.type(0)).astype(dtype)
    if arr.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(convert_depth(arr, dtype))
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{label}: contains NaN or infinite values")
        return (np.clip(arr, 0.0, 1.0) * top + 0.5).astype(dtype)
    if arr.dtype.kind in "iu":
        lo, hi = int(arr.min(initial=0)), int(arr.max(initial=0))
        src_top = 255 if hi <= 255 else 65535
        if lo < 0 or hi > 65535:
            raise ValueError(f"{label}: integer values must be in 0..255 or 0..65535")
        return convert_depth(arr.astype(np.uint8 if src_top == 255 else np.uint16), dtype)
    raise ValueError(f"{label}: unsupported mask type {arr.dtype}")


# --------------------------------------------------------------------------------------------
# detail (high-pass) layer

def default_detail_radius(native_size: tuple[int, int], working_size: tuple[int, int]) -> float:
    """Gaussian sigma (native pixels) of what the neural output cannot hold.

    The optimisation ran at ``working_size``; shrinking by a factor r behaves like a Gaussian
    of sigma ~ r/2 (anti-aliased resampling), so everything finer than that is missing from the
    upsampled style and is exactly what the detail layer must add back.  At least 1 px.
    """
    nw, nh = native_size
    ww, wh = working_size
    if ww <= 0 or wh <= 0:
        return 1.0
    ratio = max(nw / ww, nh / wh)
    return max(1.0, 0.5 * ratio)


def _box_sizes(sigma: float, n: int = 3) -> list[int]:
    """Widths of ``n`` box filters whose cascade approximates a Gaussian (Kovesi 2010)."""
    if sigma <= 0:
        return [1] * n
    w_ideal = math.sqrt(12.0 * sigma * sigma / n + 1.0)
    wl = int(math.floor(w_ideal))
    if wl % 2 == 0:
        wl -= 1
    wl = max(wl, 1)
    wu = wl + 2
    m = round((12.0 * sigma * sigma - n * wl * wl - 4 * n * wl - 3 * n) / (-4.0 * wl - 4.0))
    return [wl if i < m else wu for i in range(n)]


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Symmetric (edge-repeating) reflection of indices into 0..n-1, for any distance."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - 1 - idx, idx)


def _box_valid(arr: np.ndarray, width: int, axis: int) -> np.ndarray:
    """Mean over a sliding window of ``width`` along ``axis`` ('valid' part only), float64."""
    if width <= 1:
        return arr
    c = np.cumsum(arr, axis=axis, dtype=np.float64)
    n = c.shape[axis]

    def cut(start: int, stop: int) -> tuple[slice, ...]:
        index = [slice(None)] * c.ndim
        index[axis] = slice(start, stop)
        return tuple(index)

    out = c[cut(width - 1, n)].copy()           # sum of the first `width` values, then sliding
    out[cut(1, n - width + 1)] -= c[cut(0, n - width)]
    out *= 1.0 / width
    return out


def blur_rows(img: np.ndarray, y0: int, y1: int, sigma: float) -> np.ndarray:
    """Gaussian-blurred rows ``y0:y1`` of ``img`` (H x W x C, any depth) as float32 0..1.

    Three box filters (exact sliding sums), symmetric edges; only the band plus a margin is
    read, so big images blur band by band with bounded memory.
    """
    h, w = img.shape[:2]
    top = float(_top(img.dtype))
    sizes = _box_sizes(sigma)
    margin = sum((s - 1) // 2 for s in sizes)
    rows = _reflect_index(np.arange(y0 - margin, y1 + margin), h)
    cols = _reflect_index(np.arange(-margin, w + margin), w)
    band = img[rows][:, cols].astype(np.float64) / top
    for s in sizes:
        band = _box_valid(band, s, axis=0)
    for s in sizes:
        band = _box_valid(band, s, axis=1)
    return band.astype(np.float32)


def detail_pixels(rgb: np.ndarray, sigma: float, mode: str) -> np.ndarray:
    """The photo's high-pass ``0.5 + k * (photo - blur(photo))`` at the photo's depth.

    ``k`` is 1/2 for linear light, whose result is ``base + 2 * (detail - 0.5)``: the layer at
    100 % then adds exactly ``photo - blur(photo)`` back onto the style, i.e. over a style as
    blurry as the working size it restores the photo's edges.  Other modes (overlay, soft light)
    use the conventional unscaled high-pass.  Values are clipped to 0..1; at 8 bits mid-grey is
    128/255, so neutral areas carry a +1/255 bias under linear light (Photoshop's as well).
    """
    h, w = rgb.shape[:2]
    k = 0.5 if mode == "linear_light" else 1.0
    top = float(_top(rgb.dtype))
    out = np.empty((h, w, 3), rgb.dtype)
    color = rgb[:, :, :3]
    for y0 in range(0, h, _BAND_ROWS):
        y1 = min(h, y0 + _BAND_ROWS)
        blurred = blur_rows(color, y0, y1, sigma)
        band = color[y0:y1].astype(np.float32) / top
        band -= blurred
        band *= k
        band += 0.5
        np.clip(band, 0.0, 1.0, out=band)
        band *= top
        band += 0.5
        out[y0:y1] = band.astype(rgb.dtype)
    return out


# --------------------------------------------------------------------------------------------
# the stack

def _default_mask(reveal: str, index: int, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    white = reveal == Reveal.ALL or (reveal == Reveal.FIRST and index == 0)
    return np.full(shape, _top(dtype) if white else 0, dtype)


def _fused_layer(styled: StyledImage, regions: Mapping[str, np.ndarray], dtype: np.dtype,
                 run_settings: dict) -> Layer:
    """The layer "Fused" (every style painted in its region): masked by the union of the regions, so pixels of
    no region show the photo."""
    pic = styled.picture
    union = np.maximum.reduce([np.asarray(r, np.float32) for r in regions.values()])
    return Layer(name=FUSED_NAME, role="fused", pixels=_with_alpha(pic.rgb, pic.alpha, dtype),
                 mask=normalize_mask(union, pic.width, pic.height, dtype, "union of the regions"),
                 meta={"style": styled.name, "regions": sorted(regions), "settings": run_settings,
                       "losses": dict(styled.losses)})


def build_stack(result: StylizeResult, settings: DocumentSettings,
                masks: Mapping[str, np.ndarray] | np.ndarray | None = None,
                run_name: str | None = None,
                regions: Mapping[str, np.ndarray] | None = None) -> LayerStack:
    """The layer stack for ``result`` (see the module docstring for the order).

    ``masks``: one grayscale array for every style layer (e.g. a GIMP selection), or a mapping
    style name -> array (styles not named keep the ``settings.reveal`` default); arrays may be
    uint8/uint16/float 0..1/bool and must have the photo's size (else ``ValueError``).
    ``run_name`` names the group (else ``settings.group_name``) and the stack. ``regions`` (style name -> where
    it is painted, photo-sized 0..1): the engine's ``fused`` result becomes the layer "Fused" at the top of the
    group, masked by the union of the regions (pixels of no region show the photo). ``settings`` come validated
    (they were parsed once, by :meth:`bridge.job.JobSpec.build`).
    """
    photo: Picture = result.content
    width, height = photo.width, photo.height
    depth = settings.depth or photo.bit_depth
    dtype = np.dtype(np.uint16 if depth == 16 else np.uint8)
    shape = (height, width)

    if isinstance(masks, Mapping) and not regions:     # with regions a style may have no layer of its own
        names = {img.name for img in result.images}
        unknown = [n for n in masks if n not in names]
        if unknown:
            raise ValueError(f"mask for unknown style {unknown[0]!r} (styles: {', '.join(sorted(names))})")

    photo_px = _with_alpha(photo.rgb, photo.alpha, dtype)
    items: list[Layer | Group] = [Layer(name=ORIGINAL_NAME, role="original", pixels=photo_px)]

    run_settings = result.settings.to_dict()
    group_name = run_name or settings.group_name
    group = Group(name=group_name, meta={"role": "group", "settings": run_settings})
    is_fused = [bool(regions) and img.name == "fused" for img in result.images]
    ordered = [img for img, f in zip(result.images, is_fused) if not f] + \
        [img for img, f in zip(result.images, is_fused) if f]          # "Fused" at the top of the group
    fused_ids = {id(img) for img, f in zip(result.images, is_fused) if f}
    for i, styled in enumerate(ordered):
        pic = styled.picture
        if (pic.width, pic.height) != (width, height):
            raise ValueError(f"style result {styled.name!r} is {pic.width}x{pic.height}, "
                             f"the photo {width}x{height}")
        if id(styled) in fused_ids:
            group.children.append(_fused_layer(styled, regions or {}, dtype, run_settings))
            continue
        if masks is None:
            mask = _default_mask(settings.reveal, i, shape, dtype)
        elif isinstance(masks, Mapping):
            mask = (normalize_mask(masks[styled.name], width, height, dtype, f"mask for {styled.name!r}")
                    if styled.name in masks else _default_mask(settings.reveal, i, shape, dtype))
        else:
            mask = normalize_mask(masks, width, height, dtype)
        role = "blend" if styled.name == "blend" else "style"
        group.children.append(Layer(
            name=styled.name, role=role, pixels=_with_alpha(pic.rgb, pic.alpha, dtype), mask=mask,
            meta={"style": styled.name, "settings": run_settings, "losses": dict(styled.losses)}))
    items.append(group)

    radius = settings.detail_radius or default_detail_radius((width, height), result.working_size)
    if settings.detail_layer:
        items.append(Layer(
            name=DETAIL_NAME, role="detail",
            pixels=detail_pixels(convert_depth(photo.rgb, dtype), radius, settings.detail_mode),
            mask=np.full(shape, _top(dtype), dtype), mode=settings.detail_mode,
            opacity=settings.detail_opacity, visible=settings.detail_visible,
            meta={"radius": radius}))
    if settings.colors_layer:
        items.append(Layer(name=COLORS_NAME, role="colors", pixels=photo_px,
                           mask=np.zeros(shape, dtype), mode="color", visible=False))
    if settings.refine_layer:
        items.append(Layer(name=REFINE_NAME, role="refine", pixels=np.zeros((height, width, 4), dtype)))

    return LayerStack(
        width=width, height=height, depth=depth, items=items, icc_profile=photo.icc_profile,
        dpi=photo.dpi, name=run_name or photo.name,
        meta={"settings": run_settings, "document": settings.to_dict(),
              "working_size": list(result.working_size), "detail_radius": radius,
              "cancelled": result.cancelled, "seconds": result.seconds})


# --------------------------------------------------------------------------------------------
# the protocol's layer JSON (daemon)

def layer_records(stack: LayerStack) -> list[dict[str, Any]]:
    """The protocol's layer JSON (docs/protocol.md) minus URLs, bottom to top.

    Each: index, name, kind (pixel|group), parent (group index or None), mode, opacity,
    visible, left, top, width, height, has_image, has_mask, meta (with ``role``).  A group
    reports the document's size.  ``index`` is the position in :meth:`LayerStack.walk`.
    """
    out: list[dict[str, Any]] = []
    index_of: dict[int, int] = {}
    for index, (item, parent) in enumerate(stack.walk()):
        index_of[id(item)] = index
        is_group = isinstance(item, Group)
        meta = dict(item.meta)
        meta["role"] = item.role
        out.append({
            "index": index,
            "name": item.name,
            "kind": "group" if is_group else "pixel",
            "parent": None if parent is None else index_of[id(parent)],
            "mode": item.mode,
            "opacity": float(item.opacity),
            "visible": bool(item.visible),
            "left": 0 if is_group else int(item.left),
            "top": 0 if is_group else int(item.top),
            "width": stack.width if is_group else item.width,
            "height": stack.height if is_group else item.height,
            "has_image": (not is_group) and item.pixels is not None,
            "has_mask": item.mask is not None,
            "meta": meta,
        })
    return out
