"""bridge/imaging/probe.py: what a file is from its header alone, the one probe every front end uses."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bridge.imaging import image_kind, image_size, probe
from bridge.imaging.probe import ProbeError, TooManyPixels


def _encode(fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 30), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 200, 30, 128)[: len(mode)] if mode != "L" else 90).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _flat_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny IDAT (not decodable: the header is what counts)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt, mode, kind, alpha", [
    ("PNG", "RGB", "png", False), ("PNG", "RGBA", "png", True), ("JPEG", "RGB", "jpeg", False),
    ("TIFF", "RGB", "tiff", False), ("WEBP", "RGBA", "webp", True), ("GIF", "L", "gif", False),
])
def test_each_kind_from_its_header(fmt, mode, kind, alpha):
    data = _encode(fmt, mode)
    assert image_kind(data[:32]) == kind
    info = probe(io.BytesIO(data))
    assert (info.kind, info.width, info.height, info.alpha, info.bit_depth) == (kind, 40, 30, alpha, 8)
    assert info.complete and info.file_bytes == len(data) and info.pixels == 1200


def test_sixteen_bit_png_and_tiff_and_a_psd_header(tmp_path):
    deep = np.full((30, 40, 3), 40000, np.uint16)
    import tifffile
    buf = io.BytesIO()
    tifffile.imwrite(buf, deep, photometric="rgb")
    assert probe(io.BytesIO(buf.getvalue())).bit_depth == 16
    psd = b"8BPS" + struct.pack(">H6xHIIHH", 1, 4, 30, 40, 16, 3) + b"\0" * 16
    info = probe(io.BytesIO(psd))
    assert (info.kind, info.width, info.height, info.alpha, info.bit_depth) == ("psd", 40, 30, True, 16)
    assert image_kind(b"8BPS\x00\x02" + b"\0" * 20) == "psb"


def test_a_huge_header_is_read_without_decoding():
    data = _flat_png(14000, 14000)
    info = probe(io.BytesIO(data))
    assert (info.width, info.height, info.complete) == (14000, 14000, True)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"), (b"hello, this is text, not an image at all", "unknown"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 12, "unknown"), (_encode("WEBP", size=(400, 300))[:200], "damaged"),
])
def test_what_is_not_an_image_says_why(data, reason):
    with pytest.raises(ProbeError) as info:
        probe(io.BytesIO(data))
    assert info.value.reason == reason


def test_cut_files_are_not_complete():
    png = _encode("PNG")
    assert not probe(io.BytesIO(png[:-20])).complete
    jpeg = _encode("JPEG", size=(400, 300))
    assert not probe(io.BytesIO(jpeg[: len(jpeg) // 2])).complete




def test_a_decompression_bomb_names_its_pixels():
    bmp = bytearray(_encode("BMP", size=(2, 2)))
    bmp[18:26] = struct.pack("<ii", 65535, 65535)         # the header claims 65535 x 65535
    with pytest.raises(TooManyPixels) as info:
        probe(io.BytesIO(bytes(bmp)))
    assert info.value.pixels == 65535 * 65535


def test_image_size_from_a_path(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(_flat_png(8000, 7000))
    assert image_size(path) == (8000, 7000)
    (tmp_path / "text.png").write_bytes(b"not an image")
    assert image_size(tmp_path / "text.png") is None
