"""Reading an image file or bytes: the one entry (:func:`load_image`, :func:`load_mask`, :func:`image_size`)
that picks the decoder by the file's first bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..settings import LIMITS
from .picture import (
    SUPPORTED,
    ImageError,
    Picture,
    _bomb_message,
    short_reason,
    to_dtype,
)
from .pillow import _load_pillow
from .png import _load_png16
from .probe import HEAD_BYTES, image_kind
from .tiff import _load_tiff


def load_image(source: str | os.PathLike | bytes | BinaryIO, *, max_pixels: int = LIMITS.max_pixels,
               name: str | None = None) -> Picture:
    """Read PNG/JPEG/TIFF/WebP (8/16-bit, RGB/RGBA/grey(+alpha)) from a path, bytes or a file object.

    Applies EXIF orientation, keeps ICC profile and DPI, keeps alpha (straight). Refuses images
    over ``max_pixels`` from their header, before decoding. Any problem -> :class:`ImageError`.
    """
    data, label, stem = _read_source(source)
    name = name or stem
    if not data:
        raise ImageError(f"{label}: the file is empty; export the image again")
    try:
        kind = image_kind(data[:HEAD_BYTES])
        if kind == "tiff":
            pic = _load_tiff(data, label, max_pixels)
        elif kind == "png" and len(data) > 24 and data[12:16] == b"IHDR" and data[24] == 16:
            pic = _load_png16(data, label, max_pixels)
        else:
            pic = _load_pillow(data, label, max_pixels)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(_bomb_message(label, exc, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file this program can read ({SUPPORTED} are supported)") from None
    except MemoryError:
        raise ImageError(f"{label}: not enough memory to decode this image; scale it down first") from None
    except Exception as exc:  # decoders raise OSError, ValueError, RuntimeError, their own types...
        raise ImageError(f"{label}: cannot read the image ({short_reason(exc)}); the file may be truncated "
                         "or damaged, export it again") from None
    pic.name = name or "image"
    if pic.icc_profile and pic.icc_profile[16:20] != b"RGB ":
        # A grey (or other) profile does not describe the RGB pixels we hand on, and readers reject
        # it in an RGB file: drop it (grey values are then read as sRGB, which sGray matches).
        pic.icc_profile = None
    return pic


def load_mask(source: str | os.PathLike | bytes | BinaryIO, size: tuple[int, int], *,
              depth: int | None = None, max_pixels: int = LIMITS.max_pixels) -> np.ndarray:
    """A grey H x W mask from any image, checked against ``size`` = (width, height).

    Returns float32 0..1 when ``depth`` is None, else uint8 (8) or uint16 (16). Grey images give
    their grey; colour images their luminance (Rec. 601); transparency counts as black
    (value x alpha), except a single-colour image with alpha, whose alpha is the mask (a painted
    selection exported on a transparent layer). White = fully selected.
    """
    if depth not in (None, 8, 16):
        raise ValueError(f"mask depth must be None, 8 or 16, not {depth}")
    pic = load_image(source, max_pixels=max_pixels, name="mask")
    want_w, want_h = int(size[0]), int(size[1])
    if (pic.width, pic.height) != (want_w, want_h):
        raise ImageError(f"mask is {pic.width}x{pic.height} but the image is {want_w}x{want_h}; "
                         "export the mask at the image's size")
    rgb = pic.rgb
    is_grey = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    if pic.alpha is None and is_grey and depth == pic.bit_depth:
        return np.ascontiguousarray(rgb[..., 0])                 # exact, no float detour
    top = np.float32(pic.max_value)
    if is_grey:
        grey = rgb[..., 0].astype(np.float32) / top
    else:
        grey = (rgb[..., 0] * np.float32(0.299) + rgb[..., 1] * np.float32(0.587)
                + rgb[..., 2] * np.float32(0.114)) / top
    if pic.alpha is not None:
        alpha = pic.alpha.astype(np.float32) / top
        flat = bool((rgb == rgb.reshape(-1, 3)[0]).all())
        grey = alpha if flat else grey * alpha
    if depth is None:
        return np.clip(grey, 0.0, 1.0).astype(np.float32, copy=False)
    return to_dtype(grey, np.uint16 if depth == 16 else np.uint8)


def _read_source(source: str | os.PathLike | bytes | BinaryIO) -> tuple[bytes, str, str]:
    """(file bytes, a label for messages, a name stem)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "upload", "upload"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image file")
        if not path.is_file():
            raise ImageError(f"{path}: not a regular file (a device or pipe?); give an image file")
        try:
            return path.read_bytes(), str(path), path.stem
        except PermissionError:
            raise ImageError(f"{path}: permission denied; check the file's permissions") from None
        except OSError as exc:
            raise ImageError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if hasattr(source, "read"):
        fname = getattr(source, "name", None)
        label = str(fname) if isinstance(fname, str) and fname else "upload"
        try:
            data = source.read()
        except OSError as exc:
            raise ImageError(f"{label}: cannot read the upload ({exc})") from None
        if not isinstance(data, (bytes, bytearray)):
            raise ImageError(f"{label}: the file object must be opened in binary mode")
        return bytes(data), label, Path(label).stem if label != "upload" else "upload"
    raise TypeError(f"load_image takes a path, bytes or a binary file object, not {type(source).__name__}")
