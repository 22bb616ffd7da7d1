"""From a decoded image to a :class:`~.picture.Picture`: channels, colour modes, EXIF orientation, resolution."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from .color import cmyk_to_rgb, lab_to_srgb, srgb_profile
from .picture import ImageError, Picture, to_dtype

_ORIENTATION_TAG = 0x0112


_ICC_TAG = 34675


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not lose the picture
        return 1
    return value if 1 <= value <= 8 else 1


def _pixels(im: Image.Image, icc: bytes | None) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """Pillow image -> (rgb, alpha, icc) at 8 or 16 bits; icc changes only when colours are converted."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
        return np.repeat(grey[:, :, None], 3, axis=2), None, icc
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32))
        top = 1.0 if arr.max(initial=0.0) <= 1.0 else 65535.0
        grey = to_dtype(arr / top, np.uint16)
        return np.repeat(grey[:, :, None], 3, axis=2), None, icc
    if mode == "CMYK":
        return cmyk_to_rgb(im, icc)
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in im.info) \
            or (mode in ("L", "RGB") and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3]), icc
    if mode == "LAB":    # Pillow's LAB -> RGB is a channel copy, not a conversion; its a/b are signed bytes
        lab = np.ascontiguousarray(np.asarray(im))
        signed = lab.view(np.int8)
        rgb = lab_to_srgb(lab[..., 0] * (100.0 / 255.0), signed[..., 1], signed[..., 2])
        return to_dtype(rgb, np.uint8), None, srgb_profile().tobytes()
    if mode in ("RGB", "L", "P", "1", "RGBX", "YCbCr", "HSV"):
        return np.asarray(im.convert("RGB")).copy(), None, icc
    raise ImageError(f"image mode {mode} is not supported; convert the image to RGB first")


def _clean_dpi(dpi) -> tuple[float, float] | None:
    """Positive (x, y) dpi; values within 0.05 of a whole number are rounded (pHYs is per metre)."""
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return None
    if not (x > 0 and y > 0 and np.isfinite(x) and np.isfinite(y)):
        return None
    return tuple(float(round(v)) if abs(v - round(v)) < 0.05 else v for v in (x, y))  # type: ignore


def _oriented(pic: Picture, orientation: int) -> Picture:
    """Apply an EXIF orientation (1..8) to the pixels, as Pillow's ``ImageOps.exif_transpose``."""
    if orientation in (0, 1):
        return pic

    def fix(a: np.ndarray) -> np.ndarray:
        if orientation == 2:
            a = a[:, ::-1]
        elif orientation == 3:
            a = a[::-1, ::-1]
        elif orientation == 4:
            a = a[::-1]
        elif orientation == 5:
            a = a.swapaxes(0, 1)
        elif orientation == 6:
            a = np.rot90(a, k=-1)
        elif orientation == 7:
            a = a[::-1, ::-1].swapaxes(0, 1)
        elif orientation == 8:
            a = np.rot90(a, k=1)
        return np.ascontiguousarray(a)

    dpi = pic.dpi
    if dpi and orientation >= 5:
        dpi = (dpi[1], dpi[0])
    return replace(pic, rgb=fix(pic.rgb), alpha=None if pic.alpha is None else fix(pic.alpha), dpi=dpi)


def _split_channels(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """H x W (x 1..4) -> (H x W x 3, alpha or None): grey, grey+alpha, RGB, RGBA."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    n = arr.shape[2]
    if n in (1, 2):
        rgb = np.repeat(arr[:, :, :1], 3, axis=2)
        return rgb, (np.ascontiguousarray(arr[:, :, 1]) if n == 2 else None)
    if n in (3, 4):
        return np.ascontiguousarray(arr[:, :, :3]), (np.ascontiguousarray(arr[:, :, 3]) if n == 4 else None)
    raise ImageError(f"{n} channels per pixel are not supported; save as RGB or RGBA")
