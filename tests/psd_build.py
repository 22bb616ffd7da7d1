"""Minimal Photoshop files written byte by byte from the PSD spec, for tests.

No Photoshop-made files with gradient fills, shape layers or Lab documents can be put in the
repository here (psd-tools' test files are not in its PyPI sdist), so these are built to the
Adobe "Photoshop File Formats Specification": header, colour mode data, image resources (1057
version info: "has real merged data"), layer records with their additional tagged blocks
(``GdFl`` gradient fill, ``SoCo`` solid colour, ``vmsk`` vector mask, ``vstk`` vector stroke, as
Photoshop writes them), and the merged image.  Written independently of psd-tools' writer, so a
reader bug cannot be hidden by the same library writing the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

MODES = {"BITMAP": 0, "GRAYSCALE": 1, "INDEXED": 2, "RGB": 3, "CMYK": 4, "MULTICHANNEL": 7,
         "DUOTONE": 8, "LAB": 9}


# --------------------------------------------------------------------------------- descriptors

def _key(key: str | bytes) -> bytes:
    key = key.encode("ascii") if isinstance(key, str) else key
    return b"\x00\x00\x00\x00" + key if len(key) == 4 else struct.pack(">I", len(key)) + key


def _ustr(text: str) -> bytes:
    data = (text + "\x00").encode("utf-16-be")
    return struct.pack(">I", len(data) // 2) + data


def _value(v) -> bytes:
    if isinstance(v, dict):
        return b"Objc" + _descriptor(v)
    if isinstance(v, list):
        return b"VlLs" + struct.pack(">I", len(v)) + b"".join(_value(x) for x in v)
    if isinstance(v, bool):
        return b"bool" + bytes([v])
    if isinstance(v, int):
        return b"long" + struct.pack(">i", v)
    if isinstance(v, float):
        return b"doub" + struct.pack(">d", v)
    if isinstance(v, str):
        return b"TEXT" + _ustr(v)
    if isinstance(v, tuple) and v[0] == "enum":
        return b"enum" + _key(v[1]) + _key(v[2])
    if isinstance(v, tuple) and v[0] == "unit":
        return b"UntF" + v[1].encode("ascii") + struct.pack(">d", v[2])
    raise TypeError(v)


def _descriptor(d: dict) -> bytes:
    """{"_class": ID, key: value...} -> descriptor bytes (name, class ID, count, items)."""
    items = [(k, v) for k, v in d.items() if k != "_class"]
    out = _ustr("") + _key(d.get("_class", "null")) + struct.pack(">I", len(items))
    for k, v in items:
        out += _key(k) + _value(v)
    return out


def rgb_color(r: float, g: float, b: float) -> dict:
    return {"_class": "RGBC", "Rd  ": float(r), "Grn ": float(g), "Bl  ": float(b)}


def gradient_fill(stops: list[tuple[int, tuple[float, float, float]]], angle: float = 0.0) -> bytes:
    """A ``GdFl`` block body: a linear gradient through (location 0..4096, RGB 0..255) stops."""
    grad = {"_class": "Grdn", "Nm  ": "test", "GrdF": ("enum", "GrdF", "CstS"), "Intr": 4096.0,
            "Clrs": [{"_class": "Clrt", "Clr ": rgb_color(*c), "Type": ("enum", "Clry", "UsrS"),
                      "Lctn": loc, "Mdpn": 50} for loc, c in stops],
            "Trns": [{"_class": "TrnS", "Opct": ("unit", "#Prc", 100.0), "Lctn": loc, "Mdpn": 50}
                     for loc in (0, 4096)]}
    desc = {"_class": "null", "Angl": ("unit", "#Ang", angle), "Type": ("enum", "GrdT", "Lnr "),
            "Algn": True, "Scl ": ("unit", "#Prc", 100.0), "Grad": grad}
    return struct.pack(">I", 16) + _descriptor(desc)


def solid_fill(rgb: tuple[float, float, float]) -> bytes:
    return struct.pack(">I", 16) + _descriptor({"_class": "null", "Clr ": rgb_color(*rgb)})


def vector_rect(left: float, top: float, right: float, bottom: float, width: int, height: int) -> bytes:
    """A ``vmsk`` body: one closed rectangular subpath (points are fixed 8.24 fractions of the canvas)."""

    def point(y: float, x: float) -> bytes:
        return struct.pack(">ii", round(y / height * (1 << 24)), round(x / width * (1 << 24)))

    records = [struct.pack(">H", 6) + bytes(24),                       # path fill rule
               struct.pack(">HH", 8, 0) + bytes(22),                   # initial fill rule
               struct.pack(">HH", 0, 4) + bytes(22)]                   # closed subpath, 4 knots
    for y, x in ((top, left), (top, right), (bottom, right), (bottom, left)):
        records.append(struct.pack(">H", 1) + point(y, x) * 3)        # linked knot, no curve
    return struct.pack(">II", 3, 0) + b"".join(records)


def vector_stroke(width_px: float, rgb: tuple[float, float, float]) -> bytes:
    desc = {"_class": "strokeStyle", "strokeStyleVersion": 2, "strokeEnabled": True, "fillEnabled": True,
            "strokeStyleLineWidth": ("unit", "#Pxl", float(width_px)),
            "strokeStyleLineAlignment": ("enum", "strokeStyleLineAlignment", "strokeStyleAlignCenter"),
            "strokeStyleContent": {"_class": "solidColorLayer", "Clr ": rgb_color(*rgb)},
            "strokeStyleOpacity": ("unit", "#Prc", 100.0)}
    return struct.pack(">I", 16) + _descriptor(desc)


# --------------------------------------------------------------------------------- the file

@dataclass
class Layer:
    name: str
    pixels: np.ndarray | None = None          # H x W x (colour channels + 1 alpha), uint8, placed at (left, top)
    left: int = 0
    top: int = 0
    blocks: list[tuple[bytes, bytes]] = field(default_factory=list)
    visible: bool = True
    pixel_data_irrelevant: bool = False       # shape and fill layers: their pixels come from the blocks


def _pascal4(name: str) -> bytes:
    raw = name.encode("latin-1")[:255]
    out = bytes([len(raw)]) + raw
    return out + bytes(-len(out) % 4)


def _resource(rid: int, data: bytes) -> bytes:
    return b"8BIM" + struct.pack(">H", rid) + b"\x00\x00" + struct.pack(">I", len(data)) + data + bytes(len(data) % 2)


def version_info(real_merged: bool) -> bytes:
    return struct.pack(">IB", 1, int(real_merged)) + _ustr("Adobe Photoshop") + _ustr("Adobe Photoshop") + \
        struct.pack(">I", 1)


def psd(mode: str, width: int, height: int, merged: np.ndarray, *, depth: int = 8, layers: list[Layer] = (),
        real_merged: bool = True, color_data: bytes = b"", icc: bytes | None = None) -> bytes:
    """A PSD: ``merged`` is C x H x W (colour channels first, then alpha if any) at ``depth``."""
    nchan = merged.shape[0]
    out = b"8BPS" + struct.pack(">H6xHIIHH", 1, nchan, height, width, depth, MODES[mode])
    out += struct.pack(">I", len(color_data)) + color_data
    res = _resource(1057, version_info(real_merged))
    if icc:
        res += _resource(1039, icc)
    out += struct.pack(">I", len(res)) + res
    out += _layer_section(layers, mode)
    dt = ">u2" if depth == 16 else "u1"
    out += struct.pack(">H", 0) + np.ascontiguousarray(merged).astype(dt).tobytes()
    return out


def _layer_section(layers: list[Layer], mode: str) -> bytes:
    if not layers:
        return struct.pack(">I", 0)
    ncolor = {"RGB": 3, "LAB": 3, "GRAYSCALE": 1, "CMYK": 4}[mode]
    records, data = b"", b""
    for layer in layers:
        if layer.pixels is not None:
            h, w = layer.pixels.shape[:2]
            planes = [(i, layer.pixels[:, :, i]) for i in range(ncolor)] + [(-1, layer.pixels[:, :, ncolor])]
        else:
            h = w = 0
            planes = [(i, np.zeros((0, 0), np.uint8)) for i in list(range(ncolor)) + [-1]]
        records += struct.pack(">iiiiH", layer.top, layer.left, layer.top + h, layer.left + w, len(planes))
        for cid, plane in planes:
            records += struct.pack(">hI", cid, 2 + plane.size)
            data += struct.pack(">H", 0) + plane.astype("u1").tobytes()
        flags = (0 if layer.visible else 0x02) | (0x18 if layer.pixel_data_irrelevant else 0x08)
        extra = struct.pack(">II", 0, 0) + _pascal4(layer.name)
        for key, body in layer.blocks:
            body += bytes(-len(body) % 4)
            extra += b"8BIM" + key + struct.pack(">I", len(body)) + body
        records += b"8BIMnorm" + struct.pack(">BBBB", 255, 0, flags, 0) + struct.pack(">I", len(extra)) + extra
    info = struct.pack(">h", len(layers)) + records + data
    info += bytes(-len(info) % 2)
    body = struct.pack(">I", len(info)) + info + struct.pack(">I", 0)
    return struct.pack(">I", len(body)) + body
