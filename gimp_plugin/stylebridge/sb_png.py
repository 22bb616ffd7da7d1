"""PNG for the GIMP plug-in, standard library only (GIMP's Python has no Pillow).

Writes 8/16-bit gray/RGB/RGBA from a GIMP buffer's raw bytes (fast: zlib does the work); GIMP reads the
daemon's PNGs with its own loader, so there is no decoder here. The protocol client is ``sb_client.py``
beside this file (a copy of the package's ``bridge/protocol.py``).
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


def swap16(data: bytes) -> bytes:
    """Native little-endian u16 samples <-> PNG big-endian."""
    import array
    arr = array.array("H")
    arr.frombytes(data)
    if sys.byteorder == "little":
        arr.byteswap()
    return arr.tobytes()
