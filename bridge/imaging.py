"""Loading and saving images without losing what the artist cares about.

A :class:`Picture` keeps the pixels at their own bit depth (uint8 or uint16), the alpha channel
apart from the colour (straight, not premultiplied), and the ICC profile and resolution, so that
every output can carry them back. Only this module touches image files; the engine and the
document model get arrays.

Who decodes what, and why:

* TIFF (any depth, LZW/deflate/...): ``tifffile`` (+ ``imagecodecs``), because Pillow truncates
  16-bit RGB(A) TIFF to 8 bits. Metadata (ICC tag 34675, resolution, orientation) from its tags.
  TIFF kinds tifffile's path does not map (CMYK, YCbCr, Lab...) fall back to Pillow at 8 bits.
* 16-bit PNG: ``imagecodecs.png_decode`` (Pillow truncates 16-bit RGB/RGBA PNG); the metadata
  chunks (iCCP, pHYs, eXIf) are read by the small chunk walker below.
* everything else (8-bit PNG, JPEG, WebP, GIF, BMP...): Pillow.

Metadata is untrusted input too (issue 15: a 2 MB PNG whose iCCP chunk inflated to 4.2 GB, and
was then copied into every output).  So every piece we keep or decompress is bounded by
``Limits.max_metadata_bytes``: a PNG's iCCP is inflated by us with that ceiling, whatever its
depth, and its text chunks (tEXt/zTXt/iTXt, where XMP lives) are removed before Pillow sees the
file, since nothing here uses them.  Every ICC profile that reaches a :class:`Picture` has been
checked (size, ``acsp`` signature, declared length, parsed by LittleCMS through ``ImageCms``).
Metadata over the cap or broken is dropped with a :class:`MetadataWarning`, and the pixels are
still read: an image without its profile is what browsers show for a broken one, whereas
refusing would stop a file every other program opens.

EXIF orientation is applied to the arrays here (so 16-bit gets it too); outputs carry no
orientation tag. Pillow's ``LOAD_TRUNCATED_IMAGES`` is left False: a truncated file is an error.
"""

from __future__ import annotations

import functools
import io
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Iterator

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageCms, UnidentifiedImageError

from .settings import LIMITS

# Our own guard (``max_pixels``, checked from the header before decoding) is the one that speaks;
# Pillow's lower default would otherwise refuse or warn first, with a less helpful message.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < LIMITS.max_pixels:
    Image.MAX_IMAGE_PIXELS = LIMITS.max_pixels

SUPPORTED = "PNG, JPEG, TIFF and WebP (8 or 16 bits, RGB, RGBA or grey)"
_SAVE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG",
                 ".webp": "WEBP"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ORIENTATION_TAG = 0x0112
_ICC_TAG = 34675


class ImageError(ValueError):
    """An input image cannot be used; the message says why and what to do."""


class MetadataWarning(UserWarning):
    """A piece of an input's metadata (ICC profile, EXIF...) was too big or broken and was dropped;
    the pixels were read.  Front ends may show it; the result is then untagged (read as sRGB)."""


class IgnoredFramesWarning(MetadataWarning):
    """An animated PNG/WebP/GIF or a multi-page TIFF: only its first frame (page) is read.  A kind of
    :class:`MetadataWarning`, so every front end that shows those shows this one line too."""


# Deflate cannot expand more than 1032:1 (a 258-byte match coded in 2 bits), so a PNG whose
# pixel data is smaller than 1/1032 of its declared raw size is damaged or lying: refusing it
# before decoding keeps a few-byte file from allocating hundreds of MB for its claimed size.
_DEFLATE_MAX_RATIO = 1032
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


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


# ----------------------------------------------------------------------------------------- loading

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
        if data[:4] in _TIFF_MAGICS:
            pic = _load_tiff(data, label, max_pixels)
        elif data[:8] == _PNG_SIGNATURE and len(data) > 24 and data[12:16] == b"IHDR" and data[24] == 16:
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


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """A decoder's exception as one short line: some put whole tuples of file values in theirs."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


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


def _load_pillow(data: bytes, label: str, max_pixels: int) -> Picture:
    png_meta = None
    if data[:8] == _PNG_SIGNATURE:
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


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from a file's header, without decoding its pixels (PNG's IHDR, TIFF's first IFD,
    Pillow's lazy open for the rest), as stored (before any EXIF rotation: the pixel count is the same).

    None when the header does not tell: :func:`load_image` then reads the file and says what is wrong.
    Lets a front end refuse a job by the photo's size (``size native`` over ``max_native_pixels``)
    before decoding gigabytes, as the daemon does from an upload's header.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
            if head[:8] == _PNG_SIGNATURE and len(head) >= 24 and head[12:16] == b"IHDR":
                width, height = struct.unpack(">II", head[16:24])
                return int(width), int(height)
            fh.seek(0)
            if head[:4] in _TIFF_MAGICS:
                with tifffile.TiffFile(fh) as tif:
                    page = tif.pages.first
                    return int(page.imagewidth), int(page.imagelength)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(fh) as im:
                    return int(im.size[0]), int(im.size[1])
    except Exception:  # noqa: BLE001 - unreadable header: the full read gives the message
        return None


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
            ImageCms.buildTransform(profile, _srgb_profile(), mode, "RGB")
    except Exception as exc:  # LittleCMS refuses it: PyCMSError, OSError...
        return _dropped(label, "ICC profile", f"damaged: {exc}")
    return icc


@functools.lru_cache(maxsize=1)
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def inflate_bounded(payload: bytes, cap: int = LIMITS.max_metadata_bytes) -> tuple[bytes | None, str]:
    """zlib-inflate at most ``cap`` bytes: (data, "") or (None, why) when over ``cap`` or damaged.

    Never holds more than ``cap + 1`` output bytes, whatever the stream claims.
    """
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, cap + 1)
    except zlib.error as exc:
        return None, f"damaged ({exc})"
    if len(out) > cap:
        return None, f"over {cap:,} bytes once decompressed, the limit"
    if not inflater.eof:
        return None, "damaged (its compressed data ends early)"
    return out, ""


def _dropped(label: str, what: str, why: str) -> None:
    warnings.warn(f"{label}: {what} dropped ({why}); the image is read without it",
                  MetadataWarning, stacklevel=3)
    return None


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
        return _cmyk_to_rgb(im, icc)
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in im.info) \
            or (mode in ("L", "RGB") and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3]), icc
    if mode == "LAB":    # Pillow's LAB -> RGB is a channel copy, not a conversion; its a/b are signed bytes
        lab = np.ascontiguousarray(np.asarray(im))
        signed = lab.view(np.int8)
        rgb = lab_to_srgb(lab[..., 0] * (100.0 / 255.0), signed[..., 1], signed[..., 2])
        return to_dtype(rgb, np.uint8), None, _srgb_profile().tobytes()
    if mode in ("RGB", "L", "P", "1", "RGBX", "YCbCr", "HSV"):
        return np.asarray(im.convert("RGB")).copy(), None, icc
    raise ImageError(f"image mode {mode} is not supported; convert the image to RGB first")


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


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[np.ndarray, None, bytes]:
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


# --- 16-bit PNG

def png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
    """Walk a PNG's chunks: (type, payload, start offset, end offset) for each. Checks lengths."""
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError("not a PNG stream")
    pos = 8
    while pos < len(data):
        if pos + 12 > len(data):
            raise ValueError("PNG stream is truncated")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ValueError("PNG stream is truncated")
        yield ctype, data[pos + 8:pos + 8 + length], pos, end
        pos = end
        if ctype == b"IEND":
            return
    raise ValueError("PNG stream is truncated (no IEND chunk)")


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_metadata_chunks(icc_profile: bytes | None = None, dpi: tuple[float, float] | None = None) -> bytes:
    """iCCP (the ICC profile, deflated) and pHYs (DPI as pixels per metre) chunks; empty when neither."""
    out = b""
    if icc_profile:
        out += png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile, 9))
    if dpi:
        ppm = [max(1, round(float(v) / 0.0254)) for v in dpi]
        out += png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    return out


def _png_metadata(data: bytes, label: str = "image",
                  cap: int = LIMITS.max_metadata_bytes) -> tuple[bytes | None, tuple[float, float] | None, int]:
    """(icc, dpi, EXIF orientation) from a PNG's chunks; the ICC inflated with ``cap`` and checked."""
    icc = dpi = None
    orientation = 1
    for ctype, payload, _, _ in png_chunks(data):
        if ctype == b"iCCP" and icc is None:
            sep = payload.find(b"\x00")
            if 0 < sep < 80 and len(payload) > sep + 2 and payload[sep + 1] == 0:
                raw, why = inflate_bounded(payload[sep + 2:], cap)
                icc = valid_icc(raw, label, cap=cap) if raw is not None else _dropped(label, "ICC profile", why)
            else:
                _dropped(label, "ICC profile", "its iCCP chunk is malformed")
        elif ctype == b"pHYs" and len(payload) == 9:
            px, py, unit = struct.unpack(">IIB", payload)
            if unit == 1:
                dpi = _clean_dpi((px * 0.0254, py * 0.0254))
        elif ctype == b"eXIf":
            if len(payload) > cap:
                _dropped(label, "EXIF", f"{len(payload):,} bytes, over the limit of {cap:,} bytes")
                continue
            try:
                exif = Image.Exif()
                exif.load(payload)
                value = int(exif.get(_ORIENTATION_TAG, 1))
                orientation = value if 1 <= value <= 8 else 1
            except Exception:
                orientation = 1
    return icc, dpi, orientation


def _png_header(data: bytes, label: str, max_pixels: int) -> None:
    """Check the IHDR's size against ``max_pixels`` and against the data that is there to decode."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError(f"{label}: damaged PNG (no IHDR chunk first); export it again")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    _check_size(label, width, height, max_pixels)
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour_type, 1)
    raw = height * (1 + (width * samples * max(1, bit_depth) + 7) // 8)
    compressed = 0
    for ctype, payload, _, _ in png_chunks(data):
        if ctype in (b"IDAT", b"fdAT"):
            compressed += len(payload)
    if raw > compressed * _DEFLATE_MAX_RATIO + 1024:
        raise ImageError(f"{label}: the file holds {compressed:,} bytes of pixel data, too few for its "
                         f"{width}x{height} pixels: it is truncated or damaged; export it again")


def _png_prepare(data: bytes, label: str, max_pixels: int) -> tuple[bytes, tuple]:
    """(the PNG without iCCP and text chunks, its bounded metadata) for Pillow's decoder."""
    _png_header(data, label, max_pixels)
    meta = _png_metadata(data, label)
    drop = (b"iCCP",) + _PNG_TEXT_CHUNKS
    parts = [_PNG_SIGNATURE]
    for ctype, _, start, end in png_chunks(data):
        if ctype not in drop:
            parts.append(data[start:end])
    return b"".join(parts), meta


def _load_png16(data: bytes, label: str, max_pixels: int) -> Picture:
    _png_header(data, label, max_pixels)            # also proves the chunk stream is complete
    icc, dpi, orientation = _png_metadata(data, label)
    for ctype, payload, _, _ in png_chunks(data):   # imagecodecs decodes the default image of an APNG
        if ctype == b"acTL" and len(payload) >= 4 and struct.unpack(">I", payload[:4])[0] > 1:
            warnings.warn(f"{label}: animated PNG with {struct.unpack('>I', payload[:4])[0]} frames; only the "
                          "first frame is used", IgnoredFramesWarning, stacklevel=3)
            break
    arr = imagecodecs.png_decode(data)
    arr = convert_depth(arr, np.uint16)
    rgb, alpha = _split_channels(arr)
    return _oriented(Picture(rgb=rgb, alpha=alpha, icc_profile=icc, dpi=dpi), orientation)


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


# --- TIFF

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


# ------------------------------------------------------------------------------------------ saving

# The one atomic-write / unique-name mechanism lives in bridge.outputs; these names stay importable from here.
from .outputs import atomic_output, atomic_write, unique_path, write_bytes  # noqa: E402,F401


def _channels(picture: Picture) -> np.ndarray:
    """H x W x 3 or H x W x 4 (straight alpha), contiguous, at the picture's depth."""
    if picture.alpha is None:
        return np.ascontiguousarray(picture.rgb)
    return np.ascontiguousarray(np.dstack([picture.rgb, picture.alpha]))


# ----------------------------------------------------------------------------------- the PNG writer

PNG_BAND_BYTES = 4 << 20        # raw bytes per IDAT band: bounds the writer's extra memory


def iter_png(array: np.ndarray, level: int | None = None, *, icc_profile: bytes | None = None,
             dpi: tuple[float, float] | None = None, band_bytes: int = PNG_BAND_BYTES) -> Iterator[bytes]:
    """The one PNG writer: an H x W (grey), H x W x 2 (grey+alpha), x 3 (RGB) or x 4 (RGBA) uint8/uint16
    array, in pieces, with iCCP and pHYs.

    Pillow cannot write 16-bit RGB, and imagecodecs writes no metadata and needs the whole file in
    memory; this streams band by band (one IDAT chunk per band), so a 24 MP 16-bit layer never needs a
    second full-size copy and an HTTP client reads while the next band is encoded.

    ``level`` 0: stored (fastest; loopback does not care about bytes). 1: unfiltered rows deflated with
    the run-length strategy (~0.3-0.5 s on a 12 MP layer; Pillow's filtered level 1 takes 0.6-1 s).
    2-9: adaptive filtering per row (the smallest sum of absolute differences, as libpng) at that zlib
    level: files as small as Pillow's, for files that are kept. ``None`` picks 1 when a sample of
    rows compresses to under half (masks, empty layers), else 0.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"cannot encode an array of shape {arr.shape} and type {arr.dtype} as PNG")
    height, width, channels = arr.shape
    depth = 16 if arr.dtype == np.uint16 else 8
    if level is None:
        sample = _png_rows(arr[:: max(1, height // 32)], 0)
        level = 1 if len(zlib.compress(sample, 1)) * 2 < len(sample) else 0
    level = max(0, min(9, int(level)))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    yield _PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_metadata_chunks(icc_profile, dpi)
    comp = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE if level == 1 else zlib.Z_DEFAULT_STRATEGY)
    pixel_bytes = channels * depth // 8
    rows = max(1, band_bytes // max(1, width * pixel_bytes))
    for y in range(0, height, rows):
        above = arr[y - 1:y] if y > 0 else None
        data = comp.compress(_png_rows(arr[y:y + rows], pixel_bytes if level >= 2 else 0, above))
        if data:
            yield png_chunk(b"IDAT", data)
    yield png_chunk(b"IDAT", comp.flush()) + png_chunk(b"IEND", b"")


def encode_array_png(array: np.ndarray, level: int | None = None, *, icc_profile: bytes | None = None,
                     dpi: tuple[float, float] | None = None) -> bytes:
    """:func:`iter_png` as one bytes object."""
    return b"".join(iter_png(array, level, icc_profile=icc_profile, dpi=dpi))


def _big_endian_bytes(band: np.ndarray) -> np.ndarray:
    """rows x (row bytes) uint8, samples big-endian as PNG stores them."""
    if band.dtype == np.uint16:
        band = band.astype(">u2")
    return np.ascontiguousarray(band).view(np.uint8).reshape(band.shape[0], -1)


def _png_rows(band: np.ndarray, pixel_bytes: int, above: np.ndarray | None = None) -> memoryview:
    """PNG scanlines: a filter byte, then the row. ``pixel_bytes`` 0: filter 0 (none) for every row;
    else per row the filter (none, sub, up, average, Paeth) whose bytes sum smallest as signed values.
    ``above``: the row before the band (the up, average and Paeth filters look at it)."""
    raw = _big_endian_bytes(band)
    n, length = raw.shape
    out = np.empty((n, length + 1), np.uint8)
    if not pixel_bytes:
        out[:, 0] = 0
        out[:, 1:] = raw
        return memoryview(out).cast("B")
    x = raw
    up = np.empty_like(x)
    up[0] = _big_endian_bytes(above)[0] if above is not None else 0
    up[1:] = x[:-1]
    left = np.zeros_like(x)
    left[:, pixel_bytes:] = x[:, :-pixel_bytes]
    corner = np.zeros_like(x)
    corner[:, pixel_bytes:] = up[:, :-pixel_bytes]
    a, b, c = left.astype(np.int16), up.astype(np.int16), corner.astype(np.int16)
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)     # |p - a|, |p - b|, |p - c|, p = a + b - c
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner))
    candidates = np.empty((5, n, length), np.uint8)     # uint8 arithmetic wraps modulo 256, as PNG's does
    candidates[0] = x
    np.subtract(x, left, out=candidates[1])
    np.subtract(x, up, out=candidates[2])
    np.subtract(x, (left & up) + ((left ^ up) >> 1), out=candidates[3])      # floor((a + b) / 2) in 8 bits
    np.subtract(x, paeth, out=candidates[4])
    cost = np.abs(candidates.view(np.int8)).view(np.uint8).sum(axis=2, dtype=np.uint32)   # filters x rows
    best = cost.argmin(axis=0)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(n)]
    return memoryview(out).cast("B")


def encode_png(picture: Picture, *, compress_level: int = 1) -> bytes:
    """PNG bytes with alpha, ICC (iCCP) and DPI (pHYs), at the picture's depth (8 or 16 bits).

    The default level 1 is for speed (previews, uploads to the daemon); files that are kept use 6.
    """
    return encode_array_png(_channels(picture), compress_level, icc_profile=picture.icc_profile, dpi=picture.dpi)


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
