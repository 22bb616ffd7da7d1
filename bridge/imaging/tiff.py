"""TIFF, both ways: ``tifffile`` (+ ``imagecodecs``) reads any depth (Pillow truncates 16-bit RGB(A)), with its
ICC, resolution and orientation tags; kinds it does not map (CMYK, YCbCr, Lab...) fall back to Pillow at 8 bits."""

from __future__ import annotations

import io
import warnings
from dataclasses import replace

import numpy as np
import tifffile

from .color import valid_icc
from .picture import (
    IgnoredFramesWarning,
    ImageError,
    Picture,
    _check_size,
    convert_depth,
    to_dtype,
)
from .pillow import _load_pillow
from .pixels import _ICC_TAG, _clean_dpi, _oriented, _split_channels
from .png import _channels


def _load_tiff(data: bytes, label: str, max_pixels: int) -> Picture:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        _check_size(label, int(page.imagewidth), int(page.imagelength), max_pixels)
        _warn_pages(tif, label)
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if offset + count > len(data) or (count == 0 and page.compression != 1):
                raise ImageError(f"{label}: the TIFF file is truncated (its pixel data ends early); "
                                 "export it again")
        tags = page.tags
        orientation = int(tags[274].value) if 274 in tags else 1
        icc = valid_icc(bytes(tags[_ICC_TAG].value), label) if _ICC_TAG in tags else None
        dpi = _tiff_dpi(tags)
        photometric = int(page.photometric)
        if photometric not in (0, 1, 2, 3) or int(page.bitspersample) not in (1, 8, 16, 32):
            # CMYK, YCbCr, Lab...: Pillow knows these (at 8 bits) and converts them to RGB.
            pic = _load_pillow(data, label, max_pixels)
            return replace(pic, dpi=pic.dpi or dpi)
        arr = page.asarray()
        axes = page.axes
        if "S" in axes and axes.index("S") < axes.index("Y"):   # planar: samples first
            arr = np.moveaxis(arr, 0, -1)
        extras = tuple(int(e) for e in (page.extrasamples or ()))
        colormap = page.colormap
    base = 3 if photometric == 2 else 1
    if photometric == 3 and colormap is not None:               # palette: look the raw indices up
        index = arr if arr.ndim == 2 else arr[:, :, 0]
        arr = np.asarray(colormap)[:, index.astype(np.intp)].transpose(1, 2, 0)
        arr = convert_depth(arr.astype(np.uint16), np.uint8)    # TIFF colormaps are 16-bit
        base = 3
    arr = _tiff_samples_to_depth(arr, label)
    if photometric == 0:                                        # min-is-white
        arr = np.iinfo(arr.dtype).max - arr
    if arr.ndim == 2:
        arr = arr[:, :, None]
    colour = arr[:, :, :base]
    alpha = None
    if extras and arr.shape[2] > base and extras[0] in (1, 2):   # 1 associated, 2 unassociated
        alpha = arr[:, :, base]
        if extras[0] == 1:
            colour = _unpremultiply(colour, alpha)
    rgb, _ = _split_channels(colour)
    return _oriented(Picture(rgb=rgb, alpha=None if alpha is None else np.ascontiguousarray(alpha),
                             icc_profile=icc, dpi=dpi), orientation)


_TIFF_PAGES_LOOKED_AT = 1000   # a file with more IFDs than this is said to have "over 1000" pages


def _warn_pages(tif: tifffile.TiffFile, label: str) -> None:
    """One :class:`IgnoredFramesWarning` for a multi-page TIFF; reduced-resolution copies (thumbnails,
    previews) and transparency masks are parts of the first image, not pages the user lost."""
    extra, more = 0, False
    try:
        for i, page in enumerate(tif.pages):
            if i > _TIFF_PAGES_LOOKED_AT:
                more = True
                break
            if i and not int(getattr(page, "subfiletype", 0) or 0) & 0b101:      # REDUCEDIMAGE | MASK
                extra += 1
    except Exception:  # noqa: BLE001 - a damaged later IFD does not matter for the first page
        pass
    if extra:
        pages = f"over {_TIFF_PAGES_LOOKED_AT}" if more else str(extra + 1)
        warnings.warn(f"{label}: TIFF with {pages} pages; only the first page is used",
                      IgnoredFramesWarning, stacklevel=4)


def _tiff_samples_to_depth(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * np.uint8(255)
    if arr.dtype.kind == "f":
        return to_dtype(np.nan_to_num(arr.astype(np.float32)), np.uint16)
    raise ImageError(f"{label}: TIFF samples of type {arr.dtype} are not supported; save it as 8 or 16 bits")


def _unpremultiply(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    top = float(np.iinfo(colour.dtype).max)
    a = alpha.astype(np.float64)[..., None]
    out = np.where(a > 0, colour.astype(np.float64) * top / np.maximum(a, 1), 0.0)
    return np.clip(np.rint(out), 0, top).astype(colour.dtype)


def _tiff_dpi(tags) -> tuple[float, float] | None:
    if 282 not in tags or 283 not in tags:
        return None
    unit = int(tags[296].value) if 296 in tags else 2
    if unit not in (2, 3):
        return None

    def value(tag) -> float:
        v = tags[tag].value
        return v[0] / v[1] if isinstance(v, tuple) and v[1] else float(v if not isinstance(v, tuple) else 0)

    scale = 2.54 if unit == 3 else 1.0
    return _clean_dpi((value(282) * scale, value(283) * scale))


def encode_tiff(picture: Picture) -> bytes:
    """TIFF bytes (deflate, predictor) at the picture's depth, unassociated alpha, ICC and resolution."""
    kwargs: dict = {}
    if picture.alpha is not None:
        kwargs["extrasamples"] = ("unassalpha",)
    if picture.dpi:
        kwargs["resolution"] = (float(picture.dpi[0]), float(picture.dpi[1]))
        kwargs["resolutionunit"] = "INCH"
    buf = io.BytesIO()
    tifffile.imwrite(buf, _channels(picture), photometric="rgb", compression="zlib", predictor=True,
                     iccprofile=picture.icc_profile or None, metadata=None, **kwargs)
    return buf.getvalue()
