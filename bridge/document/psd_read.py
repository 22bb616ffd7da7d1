"""Read Photoshop files (PSD/PSB) as stylebridge input: the hot folder's way in.

What comes out (:class:`PsdContent`):

- ``composite``: what Photoshop shows, as an RGB :class:`~bridge.imaging.Picture` (8 or 16 bits,
  alpha where the document is transparent, the ICC profile and resolution kept).  The merged
  image Photoshop stored ("maximize compatibility") is used when the file says it is real
  (resource 1057); otherwise psd-tools composites the layers (``ignore_preview``: files from
  other writers would come back black).
- ``content``: the layer named ``content_layer`` (whole canvas, transparent outside the layer,
  its mask applied), or the composite when no name is given.
- ``styles``: style images from layers named by the convention **``style: NAME``**
  (case-insensitive, spaces optional: ``Style:Starry``, ``STYLE : the scream``); each becomes
  ``StyleInput(NAME, picture-of-the-layer's-own-pixels)``.  Style layers may be hidden; when one
  is visible the composite is recomputed without the style layers, so they never leak into
  the content.
- ``channels``: the document's named alpha channels (Photoshop's Channels panel: resources 1045/1006 name
  them), each H x W uint8/uint16 as stored (white = selected); the hot folder takes those named after a
  style as that style's region (issue #22). Only the channels of the stored merged image are there: a file
  saved without "maximize compatibility" has none. Layers named **``region: NAME``** give a region too: the
  layer's coverage on the canvas (its alpha times its layer mask: paint white on a transparent layer, or fill
  and mask); like style layers they are left out of the content. A channel wins over a layer of the same name.

Colour: RGB as is; grayscale -> grey RGB; CMYK -> sRGB through the embedded profile (else a naive
formula), tagged sRGB; Lab -> sRGB by the CIE formulas (D50, Bradford to D65:
:func:`bridge.imaging.lab_to_srgb`), tagged sRGB; 32-bit (linear) -> sRGB-encoded 16-bit; bitmap
and indexed through Pillow at 8 bits.  Multichannel and duotone documents are refused with what to
do (:class:`~bridge.imaging.ImageError`), as are damaged files - never a traceback: their stored
composite is ink plates (one per ink, or one ink-density channel plus ink curves) whose colours
depend on inks we do not model, so reading it as grey would silently change the picture.

Fill and shape layers (gradient fills, vector shapes, strokes) are rendered by psd-tools, whose
``composite`` extra (scipy, aggdraw) is a dependency.  The document's own composite is still the
merged image Photoshop stored whenever it is real and no visible style layer must be left out:
Photoshop's pixels are more faithful than any re-render.  Metadata: the ICC profile (resource
1039) is kept only when :func:`bridge.imaging.valid_icc` accepts it (size at most
``Limits.max_metadata_bytes``, a profile LittleCMS can use); else it is dropped with a warning.
PSD image resources are stored uncompressed, so reading them costs at most the file's size.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..engine.types import StyleInput
from ..imaging import ImageError, Picture, short_reason
from ..settings import LIMITS

STYLE_PREFIX = re.compile(r"^\s*style\s*:\s*(?P<name>.*?)\s*$", re.IGNORECASE)
REGION_PREFIX = re.compile(r"^\s*region\s*:\s*(?P<name>.*?)\s*$", re.IGNORECASE)

_SUPPORTED = {"RGB", "GRAYSCALE", "CMYK", "BITMAP", "INDEXED", "LAB"}
_REFUSED_HINT = "convert it to RGB (Image > Mode > RGB Color) and save again"
_REFUSED_WHY = {
    "DUOTONE": "its colours come from ink curves and ink colours this program does not render",
    "MULTICHANNEL": "its channels are separate ink plates with no colour model to show them in",
}
_KIND_NAMES = {"gradientfill": "gradient fill", "solidcolorfill": "solid colour fill", "patternfill": "pattern fill",
               "smartobject": "smart object", "type": "type", "shape": "shape"}
_RENDERER_HINT = ("install psd-tools' renderers (pip install 'psd-tools[composite]': scipy and aggdraw, "
                  "which stylebridge depends on), or rasterize those layers in Photoshop and save again")


@dataclass
class PsdContent:
    composite: Picture                      # what Photoshop shows (style layers left out)
    content: Picture                        # the content layer, or the composite
    styles: list[StyleInput] = field(default_factory=list)
    layer_names: list[str] = field(default_factory=list)   # every layer and group, bottom to top
    channels: dict[str, np.ndarray] = field(default_factory=dict)   # named alpha channels (see the module doc)
    color_mode: str = "RGB"                 # the file's: RGB, GRAYSCALE, CMYK, ...
    depth: int = 8                          # the file's bits per channel (1, 8, 16, 32)
    large_format: bool = False              # PSB


def clean_name(name: str) -> str:
    """Layer names from other tools may carry trailing NULs (C strings) or stray spaces."""
    return name.rstrip("\x00").strip()


def style_name(layer_name: str) -> str | None:
    """``"style: Starry Night"`` -> ``"Starry Night"``; None when the layer is not a style layer."""
    m = STYLE_PREFIX.match(clean_name(layer_name))
    if not m or not m.group("name"):
        return None
    return m.group("name")


def region_name(layer_name: str) -> str | None:
    """``"region: Starry Night"`` -> ``"Starry Night"``; None when the layer is not a region layer."""
    m = REGION_PREFIX.match(clean_name(layer_name))
    if not m or not m.group("name"):
        return None
    return m.group("name")


def read_psd(path: str | os.PathLike, *, content_layer: str | None = None,
             max_pixels: int = LIMITS.max_pixels) -> PsdContent:
    """Read ``path`` (see the module docstring).  Raises :class:`ImageError` with a clear message."""
    from psd_tools import PSDImage

    path = Path(path)
    label = str(path)
    if not path.exists():
        raise ImageError(f"{label}: no such file")
    if path.is_dir():
        raise ImageError(f"{label}: is a folder, not a PSD file")
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:4] != b"8BPS":
        raise ImageError(f"{label}: not a Photoshop file (PSD/PSB signature missing)")
    version = int.from_bytes(head[4:6], "big")
    height, width = (int.from_bytes(head[14:18], "big"),
                     int.from_bytes(head[18:22], "big"))
    depth, mode_id = int.from_bytes(head[22:24], "big"), int.from_bytes(head[24:26], "big")
    if version not in (1, 2):
        raise ImageError(f"{label}: unknown PSD version {version}")
    mode_names = {0: "BITMAP", 1: "GRAYSCALE", 2: "INDEXED", 3: "RGB", 4: "CMYK", 7: "MULTICHANNEL",
                  8: "DUOTONE", 9: "LAB"}
    mode = mode_names.get(mode_id, f"mode {mode_id}")
    if mode not in _SUPPORTED:
        why = _REFUSED_WHY.get(mode, "this colour mode is not supported")
        raise ImageError(f"{label}: {mode.title()} documents are not supported ({why}); {_REFUSED_HINT}")
    if depth not in (1, 8, 16, 32):
        raise ImageError(f"{label}: {depth} bits per channel is not a valid PSD depth")
    if width <= 0 or height <= 0:
        raise ImageError(f"{label}: the document has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{label}: {width}x{height} is {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,}; scale it down first")
    if max(width, height) > 30000:
        # psd-tools applies the PSD limit (30000 px/side) to PSB too; PSB allows 300000
        from psd_tools.api import utils as psd_utils
        psd_utils.MAX_DIMENSION_PSD = max(psd_utils.MAX_DIMENSION_PSD, 300_000)
    try:
        psd = PSDImage.open(path)
        return _read(psd, label, path.stem, mode, content_layer)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{label}: not enough memory to read this document") from None
    except ImportError as exc:   # a psd-tools renderer (scipy, aggdraw) is missing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"{label}: a layer of this document needs a renderer that is not installed "
                         f"({first}); {_RENDERER_HINT}") from None
    except Exception as exc:  # psd-tools raises many kinds on damaged files
        raise ImageError(f"{label}: cannot read the PSD ({type(exc).__name__}: {short_reason(exc)}); "
                         "the file may be truncated or damaged") from None


def _read(psd: Any, label: str, stem: str, mode: str, content_layer: str | None) -> PsdContent:
    icc, dpi = _icc_and_dpi(psd, label)
    layers = list(psd.descendants())
    names = [clean_name(layer.name) for layer in layers]
    style_layers = [(style_name(layer.name), layer) for layer in layers
                    if style_name(layer.name) is not None]

    region_layers = [(region_name(layer.name), layer) for layer in layers
                     if region_name(layer.name) is not None and not layer.is_group()]
    composite = _composite(psd, mode, icc, dpi, stem,
                           exclude={id(layer) for _, layer in style_layers + region_layers})

    content = composite
    if content_layer is not None:
        wanted = clean_name(content_layer)
        matches = [layer for layer in layers if clean_name(layer.name) == wanted]
        if not matches:
            matches = [layer for layer in layers if clean_name(layer.name).casefold() == wanted.casefold()]
        if not matches:
            shown = ", ".join(repr(n) for n in names) or "none"
            raise ImageError(f"{label}: no layer named {content_layer!r} (layers: {shown})")
        content = _layer_picture(psd, matches[-1], mode, composite, canvas=True, label=label)

    styles = []
    for name, layer in style_layers:
        pic = _layer_picture(psd, layer, mode, composite, canvas=False, label=label)
        if pic is None:
            raise ImageError(f"{label}: style layer {clean_name(layer.name)!r} is empty")
        styles.append(StyleInput(name=name, picture=pic))

    channels = _named_channels(psd, mode)
    for name, layer in region_layers:
        if name in channels:
            continue
        pic = _layer_picture(psd, layer, mode, composite, canvas=True, label=label)
        if pic is not None:
            channels[str(name)] = pic.alpha if pic.alpha is not None else \
                np.full((pic.height, pic.width), pic.max_value, pic.rgb.dtype)
    return PsdContent(composite=composite, content=content, styles=styles, layer_names=names,
                      channels=channels, color_mode=mode, depth=int(psd.depth), large_format=psd.version == 2)


def _named_channels(psd: Any, mode: str) -> dict[str, np.ndarray]:
    """The named alpha channels of the merged image: name -> H x W uint8/uint16 (32-bit: uint16).

    The names (1045 Unicode, else 1006 Pascal) are the user's alpha channels, the last channels of the merged
    image: a transparency channel before them has no name. The first channel of a name wins."""
    from psd_tools.constants import Resource

    res = psd.image_resources
    raw = None
    for rid in (Resource.ALPHA_NAMES_UNICODE, Resource.ALPHA_NAMES_PASCAL):
        if rid in res:
            raw = res.get_data(rid)
            break
    ncolor = {"RGB": 3, "GRAYSCALE": 1, "CMYK": 4, "LAB": 3}.get(mode)
    depth = int(psd.depth)
    if not raw or ncolor is None or depth not in (8, 16, 32):
        return {}
    names = []
    for item in raw:
        value = getattr(item, "value", item)
        names.append(clean_name(value.decode("latin-1") if isinstance(value, bytes) else str(value)))
    extra = int(psd.channels) - ncolor
    if extra <= 0:
        return {}
    names = names[-extra:]
    planes = psd._record.image_data.get_data(psd._record.header, True)
    first = ncolor + extra - len(names)
    out: dict[str, np.ndarray] = {}
    dt = {8: ">u1", 16: ">u2", 32: ">f4"}[depth]
    for name, plane in zip(names, planes[first:first + len(names)]):
        if not name or name in out:
            continue
        arr = np.frombuffer(plane, dtype=dt).reshape(psd.height, psd.width)
        if depth == 32:
            arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
        out[name] = np.ascontiguousarray(arr.astype(np.uint8 if depth == 8 else np.uint16))
    return out


# ------------------------------------------------------------------------------ metadata

def _icc_and_dpi(psd: Any, label: str = "document") -> tuple[bytes | None, tuple[float, float] | None]:
    from psd_tools.constants import Resource

    from ..imaging import valid_icc

    res = psd.image_resources
    icc = res.get_data(Resource.ICC_PROFILE) if Resource.ICC_PROFILE in res else None
    if icc is not None and not isinstance(icc, (bytes, bytearray)):
        icc = None
    dpi = None
    info = res.get_data(Resource.RESOLUTION_INFO) if Resource.RESOLUTION_INFO in res else None
    if info is not None:
        try:
            h, v = info.horizontal / 65536.0, info.vertical / 65536.0
            if info.horizontal_unit == 2:          # pixels per cm
                h *= 2.54
            if info.vertical_unit == 2:
                v *= 2.54
            if h > 0 and v > 0:
                dpi = (round(h, 3), round(v, 3))
        except (AttributeError, TypeError):
            dpi = None
    return valid_icc(bytes(icc) if icc else None, label), dpi


# ------------------------------------------------------------------------------ pixels

def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def _to_picture(color: np.ndarray, alpha: np.ndarray | None, mode: str, depth: int,
                icc: bytes | None, dpi, name: str) -> Picture:
    """Float colour (H x W x C in the document's space, 0..1) -> RGB Picture at 8/16 bits."""
    from ..imaging import to_dtype

    if mode == "CMYK":
        return _cmyk_picture(color, alpha, icc, dpi, name)
    if mode == "LAB":
        return _lab_picture(color, alpha, depth, dpi, name)
    if color.shape[2] == 1:                     # grayscale (a grey ICC cannot tag RGB numbers)
        color = np.repeat(color, 3, axis=2)
        icc = None
    else:
        color = color[:, :, :3]
    if depth == 32:                             # linear light -> sRGB-encoded 16-bit
        color = _srgb_encode(color)
        icc = None
    dtype = np.uint16 if depth >= 16 else np.uint8
    a = _alpha(alpha, dtype)
    return Picture(rgb=to_dtype(color, dtype), alpha=a, icc_profile=icc, dpi=dpi, name=name)


def _alpha(alpha: np.ndarray | None, dtype: type) -> np.ndarray | None:
    """psd-tools' 0..1 alpha as a 2-D channel of ``dtype``, or None when it is fully opaque."""
    from ..imaging import to_dtype

    if alpha is None:
        return None
    alpha = alpha.reshape(alpha.shape[0], alpha.shape[1])
    return to_dtype(alpha, dtype) if float(alpha.min(initial=1.0)) < 1.0 else None


def _cmyk_picture(color: np.ndarray, alpha: np.ndarray | None, icc: bytes | None, dpi,
                  name: str) -> Picture:
    """CMYK (psd-tools' convention: 1 = no ink) -> sRGB 8-bit through the embedded profile."""
    from ..imaging import to_dtype
    from ..imaging.color import cmyk_to_rgb

    ink = to_dtype(1.0 - color[:, :, :4], np.uint8)          # PIL CMYK: 0 = no ink
    im = Image.fromarray(np.ascontiguousarray(ink), "CMYK")
    rgb, _, srgb = cmyk_to_rgb(im, icc)
    a = _alpha(alpha, np.uint8)
    return Picture(rgb=rgb, alpha=a, icc_profile=srgb, dpi=dpi, name=name)


def _lab_picture(color: np.ndarray, alpha: np.ndarray | None, depth: int, dpi, name: str) -> Picture:
    """Lab (psd-tools' 0..1 of the stored values: L x 100, a/b x 255 - 128) -> sRGB, tagged sRGB.

    Photoshop's Lab is CIE L*a*b* relative to D50 (the ICC connection space); 8-bit channels
    store L as 0..255 and a/b with 128 = 0, 16-bit the same scaled by 257.
    """
    from ..imaging import lab_to_srgb, to_dtype
    from ..imaging.color import srgb_profile

    lab = color[:, :, :3].astype(np.float64)
    rgb = lab_to_srgb(lab[..., 0] * 100.0, lab[..., 1] * 255.0 - 128.0, lab[..., 2] * 255.0 - 128.0)
    dtype = np.uint16 if depth >= 16 else np.uint8
    a = _alpha(alpha, dtype)
    return Picture(rgb=to_dtype(rgb, dtype), alpha=a, icc_profile=srgb_profile().tobytes(), dpi=dpi, name=name)


def _has_real_merged_data(psd: Any) -> bool:
    from psd_tools.constants import Resource

    res = psd.image_resources
    if Resource.VERSION_INFO not in res:
        return False
    info = res.get_data(Resource.VERSION_INFO)
    return bool(getattr(info, "has_composite", False))


def _composite(psd: Any, mode: str, icc, dpi, name: str, exclude: set[int]) -> Picture:
    from psd_tools.composite import composite

    visible_excluded = any(id(layer) in exclude and layer.is_visible() for layer in psd.descendants())
    if mode in ("BITMAP", "INDEXED"):
        im = psd.topil(apply_icc=False) if (_has_real_merged_data(psd) and not visible_excluded) else None
        if im is None:
            im = psd.composite(ignore_preview=True, apply_icc=False,
                               layer_filter=lambda layer: layer.is_visible() and id(layer) not in exclude)
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[:, :, 3]
        return Picture(rgb=np.ascontiguousarray(rgba[:, :, :3]), alpha=alpha if alpha.min() < 255 else None,
                       icc_profile=icc if mode == "INDEXED" else None, dpi=dpi, name=name)
    if _has_real_merged_data(psd) and not visible_excluded:
        stored = psd.numpy()
        if stored is not None:
            ncolor = {"RGB": 3, "GRAYSCALE": 1, "CMYK": 4, "LAB": 3}[mode]
            color = stored[:, :, :ncolor]
            alpha = stored[:, :, ncolor] if stored.shape[2] > ncolor else None
            return _to_picture(color, alpha, mode, int(psd.depth), icc, dpi, name)
    color, _, alpha = composite(psd, color=1.0, alpha=0.0,
                                layer_filter=lambda layer: layer.is_visible() and id(layer) not in exclude)
    return _to_picture(color, alpha, mode, int(psd.depth), icc, dpi, name)


def _layer_picture(psd: Any, layer: Any, mode: str, composite: Picture, *, canvas: bool,
                   label: str = "document") -> Picture | None:
    """A layer's pixels with its mask applied: on the whole canvas (content) or cropped to it (style)."""
    name = clean_name(layer.name)
    depth = int(psd.depth)
    if layer.kind == "pixel":
        arr = layer.numpy()
        if arr is None or arr.size == 0:
            return None if not canvas else _blank(psd, composite, name)
        ncolor = {"RGB": 3, "GRAYSCALE": 1, "CMYK": 4, "LAB": 3}.get(mode)
        if ncolor is None:
            im = layer.composite(apply_icc=False)
            arr = np.asarray(im.convert("RGBA")).astype(np.float32) / 255.0
            ncolor, mode, depth = 3, "RGB", 8
        color = arr[:, :, :ncolor]
        alpha = arr[:, :, ncolor] if arr.shape[2] > ncolor else np.ones(arr.shape[:2], np.float32)
        if layer.has_mask() and not layer.mask.disabled:
            alpha = alpha * _mask_on_layer(layer)
        left, top = layer.left, layer.top
    else:                                      # type, shape, smart object, fill: psd-tools renders it
        if mode == "LAB":                      # psd-tools renders fills and shapes in RGB terms only
            kind = _KIND_NAMES.get(layer.kind, layer.kind)
            raise ImageError(f"{label}: layer {name!r} is a {kind} layer in a Lab document, which "
                             "cannot be rendered here; rasterize it (Layer > Rasterize > Layer) or convert "
                             "the document to RGB (Image > Mode > RGB Color) and save again")
        # Rendered over the canvas and the layer's box together: a stroke centred on a shape's path
        # reaches outside the path's box, which is all psd-tools renders by default.
        x0, y0, x1, y1 = layer.bbox
        view = (min(0, x0), min(0, y0), max(psd.width, x1), max(psd.height, y1))
        im = layer.composite(viewport=view, apply_icc=False)
        if im is None:
            return None if not canvas else _blank(psd, composite, name)
        arr = np.asarray(im.convert("RGBA")).astype(np.float32) / 255.0
        left, top = view[0], view[1]
        if not canvas:                         # a style image: cropped to what the layer covers
            ys, xs = np.nonzero(arr[:, :, 3])
            if ys.size == 0:
                return None
            arr = arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            left, top = left + int(xs.min()), top + int(ys.min())
        color, alpha = arr[:, :, :3], arr[:, :, 3]
        if mode == "CMYK":
            mode = "RGB"                       # psd-tools' render is already RGB
        depth = 8
    if canvas:
        h, w = psd.height, psd.width
        full_c = np.zeros((h, w, color.shape[2]), np.float32)
        full_a = np.zeros((h, w), np.float32)
        y0, x0 = max(0, top), max(0, left)
        y1, x1 = min(h, top + color.shape[0]), min(w, left + color.shape[1])
        if y0 < y1 and x0 < x1:
            full_c[y0:y1, x0:x1] = color[y0 - top:y1 - top, x0 - left:x1 - left]
            full_a[y0:y1, x0:x1] = alpha[y0 - top:y1 - top, x0 - left:x1 - left]
        color, alpha = full_c, full_a
    pic = _to_picture(color, alpha, mode, depth, composite.icc_profile if mode != "CMYK" else None,
                      composite.dpi, name)
    if mode == "CMYK":
        pic.icc_profile = composite.icc_profile     # composite holds the converted (sRGB) profile
    return pic


def _mask_on_layer(layer: Any) -> np.ndarray:
    """The layer's user mask over the layer's own rectangle (outside the mask: its default colour)."""
    mask = layer.mask
    h, w = layer.height, layer.width
    out = np.full((h, w), mask.background_color / 255.0, np.float32)
    data = layer.numpy("mask", real_mask=False)
    if data is None:
        return out
    data = data.reshape(data.shape[0], data.shape[1])
    my0, mx0 = mask.top - layer.top, mask.left - layer.left
    y0, x0 = max(0, my0), max(0, mx0)
    y1, x1 = min(h, my0 + data.shape[0]), min(w, mx0 + data.shape[1])
    if y0 < y1 and x0 < x1:
        out[y0:y1, x0:x1] = data[y0 - my0:y1 - my0, x0 - mx0:x1 - mx0]
    return out


def _blank(psd: Any, composite: Picture, name: str) -> Picture:
    dtype = composite.rgb.dtype
    return Picture(rgb=np.zeros((psd.height, psd.width, 3), dtype), alpha=np.zeros((psd.height, psd.width), dtype),
                   icc_profile=composite.icc_profile, dpi=composite.dpi, name=name)
