"""Everything Pillow decodes (8-bit PNG, JPEG, WebP, GIF, BMP...), and the one note for dropped frames."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from .color import valid_icc
from .picture import IgnoredFramesWarning, Picture, _check_size
from .pixels import _clean_dpi, _exif_orientation, _oriented, _pixels
from .png import PNG_SIGNATURE, _png_prepare


def _load_pillow(data: bytes, label: str, max_pixels: int) -> Picture:
    png_meta = None
    if data[:8] == PNG_SIGNATURE:
        # Our bounded chunk walk reads the PNG's metadata; Pillow gets the file without the chunks
        # it would otherwise inflate itself (iCCP, text), so it can neither blow up nor refuse them.
        data, png_meta = _png_prepare(data, label, max_pixels)
    with Image.open(io.BytesIO(data)) as im:
        _check_size(label, *im.size, max_pixels)
        _warn_frames(im, label)
        im.load()
        if png_meta is not None:
            icc, orientation = png_meta[0], png_meta[2]
        else:
            icc = valid_icc(im.info.get("icc_profile"), label)
            orientation = _exif_orientation(im)
        dpi = _clean_dpi(im.info.get("dpi"))
        rgb, alpha, icc = _pixels(im, icc)
    return _oriented(Picture(rgb=rgb, alpha=alpha, icc_profile=icc, dpi=dpi), orientation)


#: Formats whose extra frames are an animation.  Not MPO: a camera JPEG's second "frame" is a preview or a
#: depth map, not something the user lost.
_ANIMATED_FORMATS = ("PNG", "WEBP", "GIF")


def _warn_frames(im: Image.Image, label: str) -> None:
    """One :class:`IgnoredFramesWarning` for an animation (APNG, animated WebP/GIF); leaves ``im`` at its
    first frame, the one that is read."""
    if im.format not in _ANIMATED_FORMATS or not getattr(im, "is_animated", False):
        return
    try:
        count = int(im.n_frames)
    except Exception:  # noqa: BLE001 - the count is for the message only
        count = 0
    im.seek(0)
    frames = f"{count} frames" if count > 1 else "several frames"
    warnings.warn(f"{label}: animated {im.format} with {frames}; only the first frame is used",
                  IgnoredFramesWarning, stacklevel=4)
