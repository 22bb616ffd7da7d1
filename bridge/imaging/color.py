"""Colour data from untrusted files: ICC profiles checked before they are kept, Lab and CMYK to sRGB."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageCms

from ..settings import LIMITS
from .picture import _dropped


def valid_icc(icc: bytes | None, label: str, *, cap: int = LIMITS.max_metadata_bytes) -> bytes | None:
    """``icc`` when it is a sane ICC profile, else None with a :class:`MetadataWarning`.

    Sane: at most ``cap`` bytes, the ``acsp`` signature, a declared size that fits (the profile
    is cut to it: trailing bytes are not part of it), and LittleCMS can open it.  Only such a
    profile is carried into outputs.
    """
    if not icc:
        return None
    icc = bytes(icc)
    if len(icc) > cap:
        return _dropped(label, "ICC profile", f"{len(icc):,} bytes, over the limit of {cap:,} bytes")
    declared = int.from_bytes(icc[:4], "big") if len(icc) >= 4 else 0
    if len(icc) < 132 or icc[36:40] != b"acsp":
        return _dropped(label, "ICC profile", "not an ICC profile")
    if declared < 132 or declared > len(icc):
        return _dropped(label, "ICC profile", f"damaged: it says {declared:,} bytes but has {len(icc):,}")
    icc = icc[:declared]
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        mode = {b"RGB ": "RGB", b"CMYK": "CMYK", b"GRAY": "L"}.get(icc[16:20])
        if mode:   # LittleCMS reads tags lazily: only a transform proves the profile is usable
            ImageCms.buildTransform(profile, srgb_profile(), mode, "RGB")
    except Exception as exc:  # LittleCMS refuses it: PyCMSError, OSError...
        return _dropped(label, "ICC profile", f"damaged: {exc}")
    return icc


@functools.lru_cache(maxsize=1)
def srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


# CIE XYZ relative to D50 (the ICC connection space, and the white of Photoshop's and TIFF's Lab)
# -> linear sRGB (D65), chromatically adapted by Bradford: Lindbloom's "sRGB, D50" matrix, i.e.
# the inverse of the sRGB primaries' XYZ adapted to D50, as the ICC sRGB profile's colorants are.
_XYZ_D50_TO_LINEAR_SRGB = np.array([[3.1338561, -1.6168667, -0.4906146],
                                    [-0.9787684, 1.9161415, 0.0334540],
                                    [0.0719453, -0.2289914, 1.4052427]])


_D50_WHITE = np.array([0.9642, 1.0, 0.8249])       # the ICC PCS illuminant (s15Fixed16 values)


def lab_to_srgb(L: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D50; L 0..100, a/b about -128..127) -> sRGB-encoded floats 0..1, H x W x 3.

    CIE 1976 inverse (with the linear segment below (6/29)^3), Bradford D50 -> D65 adaptation,
    the IEC 61966-2-1 transfer curve; colours outside sRGB are clipped (relative colorimetric,
    as a colour-managed "convert to sRGB" without perceptual mapping does).
    """
    L, a, b = (np.asarray(v, np.float64) for v in (L, a, b))
    fy = (L + 16.0) / 116.0
    f = np.stack([fy + a / 500.0, fy, fy - b / 200.0], axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f ** 3, 3 * delta * delta * (f - 4.0 / 29.0)) * _D50_WHITE
    linear = np.clip(xyz @ _XYZ_D50_TO_LINEAR_SRGB.T, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[np.ndarray, None, bytes]:
    """CMYK -> sRGB: through the embedded CMYK profile when there is one, else Pillow's naive formula.

    The result is tagged sRGB (its profile is embedded), so outputs say what their numbers mean.
    """
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    out = None
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, src, srgb, outputMode="RGB",
                                            renderingIntent=ImageCms.Intent.PERCEPTUAL)
        except Exception:  # a profile that is not CMYK or is broken: fall back below
            out = None
    if out is None:
        out = im.convert("RGB")
    return np.asarray(out).copy(), None, srgb.tobytes()
