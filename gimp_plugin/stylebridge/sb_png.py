"""PNG for the GIMP plug-in, standard library only (GIMP's Python has no Pillow).

Writes 8/16-bit gray/RGB/RGBA from a GIMP buffer's raw bytes (fast: zlib does the work) and reads
the same back (pure Python, slow: for tests and small masks). The protocol client is ``sb_client.py``
beside this file (the package imports it as ``bridge.daemon.protocol_client``).
"""

from __future__ import annotations

import struct
import sys
import zlib

_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}       # channels -> PNG colour type
_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_encode(width: int, height: int, pixels: bytes, channels: int, depth: int = 8, level: int = 6) -> bytes:
    """Encode raw interleaved pixels (rows top to bottom; 16-bit samples big-endian) as PNG."""
    if channels not in _COLOR_TYPES or depth not in (8, 16):
        raise ValueError("png_encode: channels 1-4, depth 8 or 16")
    stride = width * channels * depth // 8
    if len(pixels) != stride * height:
        raise ValueError(f"png_encode: expected {stride * height} bytes, got {len(pixels)}")
    mv = memoryview(pixels)
    raw = b"".join(b"\x00" + mv[y * stride:(y + 1) * stride].tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, _COLOR_TYPES[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, level))
            + _chunk(b"IEND", b""))


def png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def png_decode(data: bytes) -> tuple[int, int, int, int, bytes]:
    """Decode a non-interlaced, non-palette PNG -> (width, height, channels, depth, raw bytes).

    Pure Python (slow for big images): for tests and small masks.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat = 8, []
    width = height = depth = ctype = interlace = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if ctype not in _CHANNELS or interlace or depth not in (8, 16):
        raise ValueError(f"png_decode: unsupported PNG (colour type {ctype}, depth {depth}, interlace {interlace})")
    channels = _CHANNELS[ctype]
    bpp = channels * depth // 8
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    out = bytearray(stride * height)
    prev = bytearray(stride)
    src = 0
    for y in range(height):
        ftype = raw[src]
        line = bytearray(raw[src + 1:src + 1 + stride])
        src += 1 + stride
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        elif ftype != 0:
            raise ValueError(f"png_decode: bad filter {ftype}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, channels, depth, bytes(out)


def swap16(data: bytes) -> bytes:
    """Native little-endian u16 samples <-> PNG big-endian."""
    import array
    arr = array.array("H")
    arr.frombytes(data)
    if sys.byteorder == "little":
        arr.byteswap()
    return arr.tobytes()
