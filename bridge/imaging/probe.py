"""What an image file is, from its header alone: the one probe every front end uses before decoding.

The daemon refuses an upload by its pixel count and memory before decoding it, the style library offers only
files that are whole images, the hot folder decides a dropped file's format by its first bytes (never by its
extension), and ``stylize --size native`` refuses a photo over ``max_native_pixels`` before decoding
gigabytes. All of them ask :func:`probe` (or :func:`image_kind` for the first bytes): one table of magic
numbers, one reading of each format's header.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import tifffile
from PIL import Image, UnidentifiedImageError

from .picture import SUPPORTED, ImageError
from .png import PNG_SIGNATURE

#: First bytes -> kind. PSD's version (1 PSD, 2 PSB) and WebP's RIFF form are told apart in :func:`image_kind`.
MAGIC: tuple[tuple[bytes, str], ...] = (
    (PNG_SIGNATURE, "png"), (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"),
    (b"8BPS", "psd"), (b"GIF87a", "gif"), (b"GIF89a", "gif"), (b"BM", "bmp"),
)
HEAD_BYTES = 32                   # enough for every header read here (PNG's IHDR ends at byte 26)
MAX_PNG_CHUNKS = 1_000_000        # chunk headers walked to find IEND (the decoder checks the rest)
JPEG_TAIL = 64 * 1024             # where a complete JPEG's end-of-image marker is looked for


class ProbeError(ImageError):
    """The header does not describe an image we read; ``reason``: "empty", "unknown" or "damaged"."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TooManyPixels(ImageError):
    """Pillow refused the header as a decompression bomb: ``pixels`` is the count its message named."""

    def __init__(self, pixels: int | None) -> None:
        super().__init__(f"{pixels:,} pixels" if pixels is not None else "too many pixels")
        self.pixels = pixels


@dataclass(frozen=True)
class ImageInfo:
    """A header's answer. ``complete`` is False when the file visibly ends before its structure does (a cut
    PNG, a JPEG without its end marker, a WebP or TIFF whose declared data runs past the end): damage deeper
    inside shows only when it is decoded."""

    kind: str                 # "png" | "jpeg" | "tiff" | "webp" | "psd" | "psb" | "gif" | "bmp" | Pillow's own
    width: int
    height: int
    alpha: bool
    bit_depth: int            # 8 or 16, as decoded
    file_bytes: int
    complete: bool

    @property
    def pixels(self) -> int:
        return self.width * self.height


def image_kind(head: bytes) -> str | None:
    """The kind of image whose file starts with ``head`` (at least 12 bytes), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, kind in MAGIC:
        if head.startswith(magic):
            if kind == "psd" and len(head) >= 6 and struct.unpack(">H", head[4:6])[0] == 2:
                return "psb"
            return kind
    return None


def probe_path(path: str | os.PathLike) -> ImageInfo:
    with open(path, "rb") as fh:
        return probe(fh)


def probe(fh: BinaryIO) -> ImageInfo:
    """What the open file ``fh`` holds, from its header (the file is left at its start). ProbeError when it is
    empty, of a kind we do not read, or its header is damaged; TooManyPixels for Pillow's decompression bomb."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    head = fh.read(HEAD_BYTES)
    fh.seek(0)
    if size == 0:
        raise ProbeError("the file is empty", "empty")
    kind = image_kind(head)
    try:
        if kind == "png" and len(head) >= 26 and head[12:16] == b"IHDR":
            info = _png(fh, head, size)
        elif kind in ("psd", "psb") and len(head) >= 26:
            channels, height, width, depth, mode = struct.unpack(">HIIHH", head[12:26])
            alpha = (mode == 3 and channels >= 4) or (mode == 1 and channels >= 2)     # RGB(A), grey(+A)
            info = ImageInfo(kind, width, height, alpha, 16 if depth == 16 else 8, size, True)
        else:
            info = _pillow(fh, size, kind)
    finally:
        fh.seek(0)
    return info


def _png(fh: BinaryIO, head: bytes, size: int) -> ImageInfo:
    """PNG's IHDR; its chunk headers walked to IEND (a cut upload does not reach it), and tRNS for alpha."""
    width, height = struct.unpack(">II", head[16:24])
    types = _png_chunk_types(fh, size) if width * height > 0 else set()
    return ImageInfo("png", int(width), int(height), head[25] in (4, 6) or b"tRNS" in (types or ()),
                     16 if head[24] == 16 else 8, size, types is not None)


def _png_chunk_types(fh: BinaryIO, size: int) -> set[bytes] | None:
    """The chunk types of a PNG, read from the chunk headers alone; None when they do not lead to IEND within
    the file. Only the first MAX_PNG_CHUNKS are walked."""
    types: set[bytes] = set()
    pos = 8
    for _ in range(MAX_PNG_CHUNKS):
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            return None
        pos += 12 + int.from_bytes(head[:4], "big")
        if pos > size:
            return None
        types.add(head[4:8])
        if head[4:8] == b"IEND":
            return types
    return types


def _pillow(fh: BinaryIO, size: int, kind: str | None) -> ImageInfo:
    """Everything else from Pillow's lazy open (no pixels decoded); TIFF's bit depth from its tag."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fh) as im:
                bands = im.getbands()
                bits = im.tag_v2.get(258, (8,)) if im.format == "TIFF" else (8,)
                deep = im.mode.startswith("I") or im.mode == "F" or max(tuple(bits) or (8,)) > 8
                fmt = (im.format or "").lower()
                width, height = im.size
                alpha = "A" in bands or "transparency" in im.info
                complete = _complete(fh, size, im)
    except Image.DecompressionBombError as exc:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        raise TooManyPixels(int(match.group(1)) if match else None) from None
    except UnidentifiedImageError:
        raise ProbeError(f"not an image file this program can read ({SUPPORTED} are supported)", "unknown") from None
    except Exception:  # noqa: BLE001 - any decoder complaint about the header
        raise ProbeError("cannot read the image; the file may be truncated or damaged, export it again",
                         "damaged") from None
    return ImageInfo(kind or fmt, int(width), int(height), alpha, 16 if deep else 8, size, complete)


def _complete(fh: BinaryIO, size: int, im: Image.Image) -> bool:
    """Cheap structural checks that a JPEG, WebP or TIFF is not cut short."""
    fmt = im.format
    if fmt == "JPEG":
        fh.seek(max(0, size - JPEG_TAIL))
        return b"\xff\xd9" in fh.read(JPEG_TAIL)
    if fmt == "WEBP":
        fh.seek(4)
        return int.from_bytes(fh.read(4), "little") + 8 <= size
    if fmt == "TIFF":
        tags = getattr(im, "tag_v2", {})
        offsets = tags.get(273) or tags.get(324) or ()
        counts = tags.get(279) or tags.get(325) or ()
        if not offsets or len(offsets) != len(counts):
            return False
        return max(int(o) + int(c) for o, c in zip(offsets, counts)) <= size
    return True


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from a file's header, without decoding its pixels, as stored (before any EXIF
    rotation: the pixel count is the same); None when the header does not tell (:func:`load_image` then
    reads the file and says what is wrong). TIFF's first page by tifffile, which reads what Pillow's TIFF
    header reader does not (BigTIFF)."""
    try:
        with open(path, "rb") as fh:
            if image_kind(fh.read(HEAD_BYTES)) == "tiff":
                fh.seek(0)
                with tifffile.TiffFile(fh) as tif:
                    page = tif.pages.first
                    return int(page.imagewidth), int(page.imagelength)
            info = probe(fh)
            return info.width, info.height
    except Exception:  # noqa: BLE001 - unreadable header: the full read gives the message
        return None
