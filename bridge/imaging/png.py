"""PNG, both ways: the bounded chunk walker (metadata, 16-bit decoding) and the one PNG writer (in bands).

Pillow truncates 16-bit RGB/RGBA PNG, so 16-bit files are decoded with ``imagecodecs``; their metadata chunks
(iCCP, pHYs, eXIf) are read by the chunk walker here, each bounded by ``Limits.max_metadata_bytes``, and text
chunks (tEXt/zTXt/iTXt, where XMP lives) are removed before Pillow sees a file.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from typing import Iterator

import imagecodecs
import numpy as np
from PIL import Image

from ..settings import LIMITS
from .color import valid_icc
from .picture import (
    IgnoredFramesWarning,
    ImageError,
    Picture,
    _check_size,
    _dropped,
    convert_depth,
)
from .pixels import _ORIENTATION_TAG, _clean_dpi, _oriented, _split_channels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# Deflate cannot expand more than 1032:1 (a 258-byte match coded in 2 bits), so a PNG whose
# pixel data is smaller than 1/1032 of its declared raw size is damaged or lying: refusing it
# before decoding keeps a few-byte file from allocating hundreds of MB for its claimed size.
_DEFLATE_MAX_RATIO = 1032


_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


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


def png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
    """Walk a PNG's chunks: (type, payload, start offset, end offset) for each. Checks lengths."""
    if data[:8] != PNG_SIGNATURE:
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
    parts = [PNG_SIGNATURE]
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


def _channels(picture: Picture) -> np.ndarray:
    """H x W x 3 or H x W x 4 (straight alpha), contiguous, at the picture's depth."""
    if picture.alpha is None:
        return np.ascontiguousarray(picture.rgb)
    return np.ascontiguousarray(np.dstack([picture.rgb, picture.alpha]))


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
    yield PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_metadata_chunks(icc_profile, dpi)
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
