"""Loading and saving images without losing what the artist cares about.

A :class:`Picture` keeps the pixels at their own bit depth (uint8 or uint16), the alpha channel
apart from the colour, and the ICC profile and resolution, so that every output can carry them
back. Only this module touches image files; the engine and the document model get arrays.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .settings import LIMITS


class ImageError(ValueError):
    """An input image cannot be used; the message says why and what to do."""


@dataclass
class Picture:
    rgb: np.ndarray                  # H x W x 3, uint8 or uint16, sRGB-encoded (or the ICC's space)
    alpha: np.ndarray | None = None  # H x W, same dtype as rgb, or None when opaque
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    name: str = "image"              # a human name (file stem), used for layer and file names

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def bit_depth(self) -> int:
        return 16 if self.rgb.dtype == np.uint16 else 8

    @property
    def max_value(self) -> int:
        return 65535 if self.bit_depth == 16 else 255

    def rgb_float(self) -> np.ndarray:
        """H x W x 3 float32 in 0..1 (a new array)."""
        return self.rgb.astype(np.float32) / float(self.max_value)

    def alpha_float(self) -> np.ndarray | None:
        return None if self.alpha is None else self.alpha.astype(np.float32) / float(self.max_value)

    def with_rgb_float(self, rgb: np.ndarray, name: str | None = None) -> "Picture":
        """Same size, alpha, ICC and DPI; new colour pixels given as float 0..1 at this depth."""
        return replace(self, rgb=to_dtype(rgb, self.rgb.dtype), name=name or self.name)


def to_dtype(values: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Float 0..1 -> uint8/uint16 with rounding and clipping."""
    top = 65535.0 if np.dtype(dtype) == np.uint16 else 255.0
    out = np.clip(values, 0.0, 1.0) * top + 0.5
    return out.astype(dtype)


def load_image(source: str | os.PathLike | BinaryIO, *, max_pixels: int = LIMITS.max_pixels,
               name: str | None = None) -> Picture:
    """Read PNG/JPEG/TIFF/WebP (8/16-bit, RGB/RGBA/grey), apply EXIF orientation, keep ICC and DPI."""
    label = str(source) if isinstance(source, (str, os.PathLike)) else (name or "upload")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty")
        name = name or path.stem
    try:
        with Image.open(source) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{label}: {w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,}; "
                                 "scale it down first")
            im.load()
            icc = im.info.get("icc_profile") or None
            dpi = _dpi(im)
            im = ImageOps.exif_transpose(im)
            rgb, alpha = _pixels(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: too many pixels ({exc}); scale it down first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file Pillow can read (PNG, JPEG, TIFF, WebP are supported)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: cannot read the image ({exc}); the file may be truncated or damaged") from None
    return Picture(rgb=rgb, alpha=alpha, icc_profile=icc, dpi=dpi, name=name or "image")


def _dpi(im: Image.Image) -> tuple[float, float] | None:
    dpi = im.info.get("dpi")
    if dpi and len(dpi) == 2 and all(float(v) > 0 for v in dpi):
        return (float(dpi[0]), float(dpi[1]))
    return None


def _pixels(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Pillow image -> (rgb, alpha) at 8 or 16 bits."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(im, dtype=np.int64)
        grey = np.clip(grey, 0, 65535).astype(np.uint16)
        return np.repeat(grey[:, :, None], 3, axis=2), None
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3])
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        top = 1.0 if arr.max(initial=0.0) <= 1.0 else 65535.0
        grey = to_dtype(arr / top, np.uint16)
        return np.repeat(grey[:, :, None], 3, axis=2), None
    return np.asarray(im.convert("RGB")).copy(), None


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to a temporary name beside ``path`` and rename, so no half-written file appears."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def unique_path(path: str | os.PathLike) -> Path:
    """``path`` itself if free, else ``stem-2.ext``, ``stem-3.ext``...: never overwrite a user file."""
    path = Path(path)
    if not path.exists():
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def encode_png(picture: Picture, *, compress_level: int = 1) -> bytes:
    """PNG bytes with alpha, ICC and DPI (8-bit; 16-bit pictures are written at 16 bits)."""
    import io
    buf = io.BytesIO()
    _to_pil(picture).save(buf, format="PNG", compress_level=compress_level,
                          **_meta_kwargs(picture))
    return buf.getvalue()


def save_image(picture: Picture, path: str | os.PathLike) -> Path:
    """Save PNG/TIFF/JPEG/WebP by extension, atomically; returns the path written."""
    import io
    path = Path(path)
    fmt = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG",
           ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unknown image extension (use .png, .tif, .jpg or .webp)")
    if fmt == "PNG":
        atomic_write(path, encode_png(picture, compress_level=6))
        return path
    pic = picture if picture.bit_depth == 8 else replace(
        picture, rgb=to_dtype(picture.rgb_float(), np.uint8),
        alpha=None if picture.alpha is None else to_dtype(picture.alpha_float(), np.uint8))
    im = _to_pil(pic)
    if fmt == "JPEG" and im.mode == "RGBA":
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format=fmt, **_meta_kwargs(picture))
    atomic_write(path, buf.getvalue())
    return path


def _meta_kwargs(picture: Picture) -> dict:
    kw: dict = {}
    if picture.icc_profile:
        kw["icc_profile"] = picture.icc_profile
    if picture.dpi:
        kw["dpi"] = picture.dpi
    return kw


def _to_pil(picture: Picture) -> Image.Image:
    if picture.bit_depth == 16:
        return _to_pil16(picture)
    if picture.alpha is not None:
        return Image.fromarray(np.dstack([picture.rgb, picture.alpha]), "RGBA")
    return Image.fromarray(picture.rgb, "RGB")


def _to_pil16(picture: Picture) -> Image.Image:
    # Pillow cannot hold 16-bit RGB; callers that need true 16-bit files use the PSD writer
    # or save_png16.  Here we fall back to 8 bits rather than fail.
    pic8 = replace(picture, rgb=to_dtype(picture.rgb_float(), np.uint8),
                   alpha=None if picture.alpha is None else to_dtype(picture.alpha_float(), np.uint8))
    return _to_pil(pic8)
