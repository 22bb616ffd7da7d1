"""Saving a :class:`~.picture.Picture` as PNG, TIFF, JPEG or WebP, with its profile and resolution."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..outputs import write_bytes
from .picture import ImageError, Picture, to_dtype
from .png import _channels, encode_png
from .tiff import encode_tiff

_SAVE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG",
                 ".webp": "WEBP"}


def save_image(picture: Picture, path: str | os.PathLike, *, unique: bool = False) -> Path:
    """Save PNG/TIFF/JPEG/WebP by extension, atomically; returns the path really written.

    With ``unique`` an existing file is never replaced: the result goes to ``path`` or its first free
    ``stem-N`` name, claimed atomically (:func:`bridge.outputs.publish`); without it ``path`` is replaced.

    PNG and TIFF keep 16 bits and alpha; JPEG and WebP are 8-bit, and JPEG, having no alpha,
    is flattened over white. ICC and DPI are written to all four (WebP stores no DPI).
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension (use .png, .tif, .jpg or .webp)")
    if not path.parent.is_dir():
        raise ImageError(f"{path.parent}: no such folder")
    if fmt == "PNG":
        data = encode_png(picture, compress_level=6)
    elif fmt == "TIFF":
        data = encode_tiff(picture)
    else:
        pic8 = picture.to_bit_depth(8)
        if fmt == "JPEG" and pic8.alpha is not None:
            a = pic8.alpha_float()[..., None]
            pic8 = replace(pic8, rgb=to_dtype(pic8.rgb_float() * a + (1.0 - a), np.uint8), alpha=None)
        buf = io.BytesIO()
        options = {"quality": 95} if fmt == "JPEG" else {"quality": 95, "method": 4}
        meta = _meta_kwargs(pic8)
        if fmt == "WEBP":
            meta.pop("dpi", None)
        _to_pil8(pic8).save(buf, format=fmt, **options, **meta)
        data = buf.getvalue()
    return write_bytes(path, data, unique=unique)


def _meta_kwargs(picture: Picture) -> dict:
    kw: dict = {}
    if picture.icc_profile:
        kw["icc_profile"] = picture.icc_profile
    if picture.dpi:
        kw["dpi"] = picture.dpi
    return kw


def _to_pil8(picture: Picture) -> Image.Image:
    pic = picture.to_bit_depth(8)
    if pic.alpha is not None:
        return Image.fromarray(_channels(pic), "RGBA")
    return Image.fromarray(np.ascontiguousarray(pic.rgb), "RGB")
