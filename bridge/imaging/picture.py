"""A picture as the artist's file holds it, and what can go wrong reading one.

:class:`Picture` keeps the pixels at their own bit depth (uint8 or uint16), the alpha channel apart from the
colour (straight, not premultiplied), and the ICC profile and resolution, so every output can carry them back.
The errors and warnings every reader raises, and the size checks made before decoding, live here too.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from ..settings import LIMITS

# Our own guard (``max_pixels``, checked from the header before decoding) is the one that speaks;
# Pillow's lower default would otherwise refuse or warn first, with a less helpful message.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < LIMITS.max_pixels:
    Image.MAX_IMAGE_PIXELS = LIMITS.max_pixels


SUPPORTED = "PNG, JPEG, TIFF and WebP (8 or 16 bits, RGB, RGBA or grey)"


class ImageError(ValueError):
    """An input image cannot be used; the message says why and what to do."""


class MetadataWarning(UserWarning):
    """A piece of an input's metadata (ICC profile, EXIF...) was too big or broken and was dropped;
    the pixels were read.  Front ends may show it; the result is then untagged (read as sRGB)."""


class IgnoredFramesWarning(MetadataWarning):
    """An animated PNG/WebP/GIF or a multi-page TIFF: only its first frame (page) is read.  A kind of
    :class:`MetadataWarning`, so every front end that shows those shows this one line too."""


@dataclass
class Picture:
    rgb: np.ndarray                  # H x W x 3, uint8 or uint16, sRGB-encoded (or the ICC's space)
    alpha: np.ndarray | None = None  # H x W, same dtype as rgb, straight alpha, or None when opaque
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

    def to_bit_depth(self, bits: int) -> "Picture":
        """The same picture at 8 or 16 bits (exact: 8 -> 16 multiplies by 257, 16 -> 8 rounds)."""
        if bits not in (8, 16):
            raise ValueError(f"bit depth must be 8 or 16, not {bits}")
        if bits == self.bit_depth:
            return self
        dtype = np.uint16 if bits == 16 else np.uint8
        return replace(self, rgb=convert_depth(self.rgb, dtype),
                       alpha=None if self.alpha is None else convert_depth(self.alpha, dtype))


def to_dtype(values: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """Float 0..1 -> uint8/uint16 with rounding and clipping."""
    top = 65535.0 if np.dtype(dtype) == np.uint16 else 255.0
    out = np.clip(values, 0.0, 1.0) * top + 0.5
    return out.astype(dtype)


def convert_depth(values: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """uint8 <-> uint16 exactly (x * 257, round(x / 257)): the one depth conversion; the same array when
    already right."""
    dtype = np.dtype(dtype)
    if values.dtype == dtype:
        return values
    if values.dtype == np.uint8 and dtype == np.uint16:
        return values.astype(np.uint16) * np.uint16(257)
    if values.dtype == np.uint16 and dtype == np.uint8:
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ValueError(f"cannot convert {values.dtype} pixels to {dtype}")


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """A decoder's exception as one short line: some put whole tuples of file values in theirs."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _bomb_message(label: str, exc: Exception, max_pixels: int) -> str:
    """Pillow's own guard spoke first (it knows the size before we do for some formats): say the
    limit that applies, which is ours (``max_pixels``) unless Pillow's is lower, and the value."""
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    limit = min(max_pixels, pillow_limit) if pillow_limit else max_pixels
    m = re.search(r"\((\d+) pixels\)", str(exc))
    value = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
    return f"{label}: the image has {value}, over the limit of {limit:,}; scale it down first"


def _check_size(label: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{label}: the image has no pixels ({width}x{height}); export it again")
    if width * height > max_pixels:
        raise ImageError(f"{label}: {width}x{height} is {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,}; scale it down first")


def _dropped(label: str, what: str, why: str) -> None:
    warnings.warn(f"{label}: {what} dropped ({why}); the image is read without it",
                  MetadataWarning, stacklevel=3)
    return None
