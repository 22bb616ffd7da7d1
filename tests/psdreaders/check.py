"""Check a PSD/PSB we wrote with readers a user can install: psd-tools, ImageMagick and ag-psd (npm).

Each reader alone is lenient (they skip what they do not understand, clip bad RLE rows, ignore trailing bytes),
so the check asks more of them than opening the file:

- **psd-tools** decodes every layer, every mask and the merged image, and its low-level records are written back
  byte for byte (every section length, padding and count is the one the content implies);
- **the RLE accounting** of every layer channel, mask and merged plane: the row byte-count table, each row
  decoding to exactly one row from exactly its bytes, and the file ending where the merged image ends
  (Photoshop reads rows by their counts; lenient readers hide a wrong count);
- **ImageMagick** (``identify``/``convert -regard-warnings``) reads the merged image and every pixel layer;
- **ag-psd** (strict mode, the reader web editors use) reads the whole file;
- the readers **agree**: the merged image is the same in psd-tools, ImageMagick and ag-psd, and every layer's
  pixels and mask are the same in psd-tools and ag-psd.

``tests/test_psd_readers.py`` proves that this catches the structural faults ``psdcheck.py`` (the spec checker
beside this project's CI) catches. ImageMagick and ag-psd are installed by ``.ci/test`` (``.ci/apt.sh``,
``.ci/agpsd.sh``); ``STYLEBRIDGE_REQUIRE_READERS=1`` (set there) makes a missing one a failure, else it is
reported as not checked. ``STYLEBRIDGE_SHARED=DIR`` (set by ``.ci/run`` where ``../shared`` exists) also runs
``DIR/tools/psdcheck.py``; without it nothing outside the repository is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDENTIFY = "/usr/bin/identify"
CONVERT = "/usr/bin/convert"
IM_MAX_SIDE = 16000                      # Debian's ImageMagick policy refuses larger sides
IM_ONE_BY_ONE = 4_000_000                # pixels above which ImageMagick reads the images one at a time
AGPSD_SCRIPT = Path(__file__).with_name("agpsd_read.js")


def require_readers() -> bool:
    return os.environ.get("STYLEBRIDGE_REQUIRE_READERS") == "1"


def reader_missing(why: str) -> None:
    """An independent reader is not installed: skip with ``why`` on a user's machine, fail in CI
    (``STYLEBRIDGE_REQUIRE_READERS=1``, set by ``.ci/test``), where every check must run."""
    import pytest
    if require_readers():
        pytest.fail(f"{why}; STYLEBRIDGE_REQUIRE_READERS=1 needs it")
    pytest.skip(why)


def shared_dir() -> Path | None:
    """``$STYLEBRIDGE_SHARED`` when set explicitly (``.ci/run``); never a guessed ``../shared``."""
    value = os.environ.get("STYLEBRIDGE_SHARED")
    return Path(value) if value else None


def agpsd_modules() -> Path | None:
    """The ``node_modules`` folder holding ag-psd (``$STYLEBRIDGE_AG_PSD``, set by ``.ci/test``)."""
    value = os.environ.get("STYLEBRIDGE_AG_PSD")
    if value and (Path(value) / "ag-psd" / "package.json").is_file():
        return Path(value)
    return None


@dataclass
class Check:
    """The outcome: ``returncode`` 0 when every reader was satisfied; ``stdout`` the report, one line per reader."""
    returncode: int
    stdout: str
    stderr: str = ""


class Fault(Exception):
    pass


# ------------------------------------------------------------------------------------- psd-tools

def _first_difference(a: Path, b: Path, chunk: int = 1 << 24) -> int | None:
    """The first byte offset where two files differ (or where the shorter ends); None when equal."""
    pos = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                n = min(len(x), len(y))
                diff = np.flatnonzero(np.frombuffer(x[:n], np.uint8) != np.frombuffer(y[:n], np.uint8))
                return pos + (int(diff[0]) if diff.size else n)
            if not x:
                return None
            pos += len(x)


def _rle_fault(data: bytes, width: int, rows: int, depth: int, version: int) -> str | None:
    """PackBits, strictly: the row-count table adds up to the data, and each row's bytes decode to exactly one
    row with nothing left over. All rows advance together, one packet per step (numpy), so big files are quick."""
    row = (width * depth + 7) // 8
    cw = 2 * version
    if len(data) < cw * rows:
        return f"{len(data)} bytes cannot hold {rows} row counts"
    counts = np.frombuffer(data[:cw * rows], ">u2" if version == 1 else ">u4").astype(np.int64)
    if cw * rows + int(counts.sum()) != len(data):
        return f"row counts add up to {cw * rows + int(counts.sum())} bytes, the data has {len(data)}"
    buf = np.frombuffer(data, np.uint8)
    ends = cw * rows + np.cumsum(counts)
    pos = ends - counts
    produced = np.zeros(rows, np.int64)
    live = np.flatnonzero(pos < ends)
    while live.size:
        h = buf[pos[live]].astype(np.int64)
        literal, repeat = h < 128, h > 128
        produced[live] += np.where(literal, h + 1, np.where(repeat, 257 - h, 0))
        pos[live] += 1 + np.where(literal, h + 1, np.where(repeat, 1, 0))
        live = live[pos[live] < ends[live]]
    bad = np.flatnonzero((pos != ends) | (produced != row))
    if bad.size:
        y = int(bad[0])
        return f"row {y} ({counts[y]} bytes) does not decode to exactly {row} bytes"
    return None


def _rle_accounting(record) -> int:
    """Check every RLE channel of every layer and the merged image; returns the number of channels checked."""
    from psd_tools.constants import Compression, Tag

    header = record.header
    version, depth = header.version, header.depth
    infos = [record.layer_and_mask_information.layer_info]
    blocks = record.layer_and_mask_information.tagged_blocks
    for tag in (Tag.LAYER_16, Tag.LAYER_32):
        if blocks is not None and tag in blocks:
            infos.append(blocks.get_data(tag))
    checked = 0
    for info in infos:
        if info is None or info.layer_records is None:
            continue
        for rec, channels in zip(info.layer_records, info.channel_image_data):
            for ch_info, ch in zip(rec.channel_info, channels):
                if ch_info.id == -2:
                    m = rec.mask_data
                    w, h = m.right - m.left, m.bottom - m.top
                elif ch_info.id == -3:
                    m = rec.mask_data
                    w, h = m.real_right - m.real_left, m.real_bottom - m.real_top
                else:
                    w, h = rec.right - rec.left, rec.bottom - rec.top
                if ch.compression == Compression.RLE and w > 0 and h > 0:
                    fault = _rle_fault(ch.data, w, h, depth, version)
                    if fault:
                        raise Fault(f"layer {rec.name!r} channel {ch_info.id}: {fault}")
                    checked += 1
    image = record.image_data
    if image.compression == Compression.RLE:
        fault = _rle_fault(image.data, header.width, header.height * header.channels, depth, version)
        if fault:
            raise Fault(f"merged image: {fault} (the file must end where the merged image ends)")
    elif image.compression == Compression.RAW:
        want = (header.width * depth + 7) // 8 * header.height * header.channels
        if len(image.data) != want:
            raise Fault(f"merged image: {len(image.data)} raw bytes, {want} expected")
    return checked + header.channels


def _layer_digest(values: np.ndarray) -> str:
    """sha1 of 8-bit values as ag-psd keeps them (RGBA bytes, or one byte per mask pixel)."""
    return hashlib.sha1(np.ascontiguousarray(np.round(values * 255).astype(np.uint8)).tobytes()).hexdigest()


def _psdtools(path: Path, lines: list[str], tmp: Path) -> dict:
    from psd_tools import PSDImage

    messages: list[str] = []

    class Grab(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            messages.append(rec.getMessage())

    grab = Grab(logging.WARNING)
    logger = logging.getLogger("psd_tools")
    logger.addHandler(grab)
    try:
        psd = PSDImage.open(path)
        layers = []
        for layer in psd.descendants():
            entry = {"name": layer.name, "kind": layer.kind}
            if psd.depth == 8 and layer.kind != "group" and layer.width and layer.height:
                px = layer.numpy()
                if px.shape[2] == 3:                           # ag-psd fills in an opaque alpha
                    px = np.dstack([px, np.ones(px.shape[:2])])
                entry["sha1"] = _layer_digest(px)
            elif layer.kind != "group" and layer.width and layer.height:
                layer.numpy()                                  # 16-bit: decoded here, compared by the callers
                entry["sha1"] = None
            if layer.has_mask() and layer.mask.width and layer.mask.height:
                mask = layer.numpy("mask")[:, :, 0]
                entry["mask_sha1"] = _layer_digest(mask) if psd.depth == 8 else None
            layers.append(entry)
        merged = psd.numpy()
        again = tmp / "again.psd"
        with open(again, "wb") as f:
            psd._record.write(f)
        where = _first_difference(path, again)
        again.unlink()
        if where is not None:
            raise Fault(f"psd-tools writes its records back differently from byte {where} "
                        f"(a length, padding or count is not the one the content implies)")
        channels = _rle_accounting(psd._record)
    finally:
        logger.removeHandler(grab)
    if messages:
        raise Fault("psd-tools warned: " + "; ".join(messages[:3]))
    kind = "PSB" if psd.version == 2 else "PSD"
    lines.insert(0, f"{path}: {kind} {psd.width}x{psd.height} depth={psd.depth} mode={psd.color_mode.name} "
                    f"layers={len(layers)}")
    lines.append(f"psd-tools: {len(layers)} layers, their masks and the merged image decoded; "
                 f"records written back byte for byte")
    lines.append(f"RLE accounting: {channels} channels' row counts exact; "
                 f"merged image data: compression={psd._record.image_data.compression.value}, "
                 f"{psd._record.header.channels} planes OK, file ends with it")
    return {"psd": psd, "layers": layers, "merged": merged}


# ---------------------------------------------------------------------------------- ImageMagick

def _imagemagick(path: Path, seen: dict, lines: list[str], tmp: Path) -> np.ndarray | None:
    psd = seen["psd"]
    if not os.access(IDENTIFY, os.X_OK):
        if require_readers():
            raise Fault("ImageMagick is not installed (run .ci/apt.sh)")
        lines.append("ImageMagick: not installed (run .ci/apt.sh): not checked")
        return None
    if max(psd.width, psd.height) > IM_MAX_SIDE:
        lines.append(f"ImageMagick: not checked (sides over {IM_MAX_SIDE} px: Debian's policy refuses them)")
        return None
    pixel_layers = [e for e in seen["layers"] if "sha1" in e]
    # all images at once, or (big documents: Debian's policy allows ImageMagick 256 MiB + 1 GiB of disk) one by one
    each = [""] if psd.width * psd.height <= IM_ONE_BY_ONE else [f"[{i}]" for i in range(len(pixel_layers) + 1)]
    frames = []
    for scene in each:
        res = subprocess.run([IDENTIFY, "-regard-warnings", f"{path}{scene}"], capture_output=True, text=True)
        if res.returncode != 0:
            raise Fault(f"ImageMagick identify{scene}: {res.stderr.strip()[-500:]}")
        frames += [ln for ln in res.stdout.splitlines() if ln.strip()]
    if len(frames) != len(pixel_layers) + 1:
        raise Fault(f"ImageMagick sees {len(frames)} images, expected the merged image + {len(pixel_layers)} layers")
    raw = tmp / "im.rgb"
    res = subprocess.run([CONVERT, "-regard-warnings", f"{path}[0]", "-depth", "16", "-endian", "MSB",
                          f"RGB:{raw}"], capture_output=True, text=True)
    if res.returncode != 0:
        raise Fault(f"ImageMagick convert: {res.stderr.strip()[-500:]}")
    data = np.frombuffer(raw.read_bytes(), ">u2")
    if data.size != psd.width * psd.height * 3:
        raise Fault(f"ImageMagick's merged image has {data.size} values, expected {psd.width}x{psd.height}x3")
    lines.append(f"ImageMagick: merged image + {len(pixel_layers)} pixel layers read, no warnings")
    return data.reshape(psd.height, psd.width, 3).astype(np.float64) / 65535.0


# -------------------------------------------------------------------------------------- ag-psd

def _flatten(children: list[dict]) -> list[dict]:
    out = []
    for child in children:
        if "children" in child:
            out.extend(_flatten(child["children"]))
            out.append(dict(child, group=True))
        else:
            out.append(child)
    return out


def _agpsd(path: Path, seen: dict, lines: list[str], tmp: Path) -> np.ndarray | None:
    modules = agpsd_modules()
    if modules is None:
        if require_readers():
            raise Fault("ag-psd is not installed (run .ci/agpsd.sh; it exports STYLEBRIDGE_AG_PSD)")
        lines.append("ag-psd: not installed (.ci/agpsd.sh): not checked")
        return None
    psd = seen["psd"]
    raw = tmp / "ag.raw"
    res = subprocess.run(["node", str(AGPSD_SCRIPT), str(path), str(raw)], capture_output=True, text=True,
                         env=dict(os.environ, NODE_PATH=str(modules)))
    if res.returncode != 0:
        raise Fault(res.stderr.strip()[-500:] or f"ag-psd exited {res.returncode}")
    doc = json.loads(res.stdout)
    if (doc["width"], doc["height"], doc["bitsPerChannel"]) != (psd.width, psd.height, psd.depth):
        raise Fault(f"ag-psd reads {doc['width']}x{doc['height']} at {doc['bitsPerChannel']} bits")
    if doc["composite"] is None:
        raise Fault("ag-psd finds no merged image")
    # psd-tools lists a group before its children (top-down within the group's span); ag-psd nests them
    ours = [e for e in seen["layers"] if e["kind"] != "group"]
    theirs = [c for c in _flatten(doc["children"]) if not c.get("group")]
    if [e["name"] for e in ours] != [c["name"] for c in theirs]:
        raise Fault(f"layer names differ: psd-tools {[e['name'] for e in ours]}, ag-psd {[c['name'] for c in theirs]}")
    for e, c in zip(ours, theirs):
        if ("mask_sha1" in e) != (c["mask"] is not None and c["mask"]["pixels"] is not None):
            raise Fault(f"layer {e['name']!r}: psd-tools and ag-psd disagree on whether it has a mask")
        if psd.depth != 8:
            continue
        if "sha1" in e and e["sha1"] != c["sha1"]:
            raise Fault(f"layer {e['name']!r}: ag-psd and psd-tools decode different pixels")
        if "mask_sha1" in e and e["mask_sha1"] != c["mask"]["sha1"]:
            raise Fault(f"layer {e['name']!r}: ag-psd and psd-tools decode different masks")
    if psd.depth != 8:   # ag-psd 31 spreads a 16-bit row's bytes over the pixels: its values are not comparable
        lines.append(f"ag-psd (strict): {len(theirs)} layers, the same names and masks as psd-tools'")
        return None
    lines.append(f"ag-psd (strict): {len(theirs)} layers; their pixels and masks equal psd-tools'")
    return np.frombuffer(raw.read_bytes(), np.uint8).reshape(psd.height, psd.width, 4)


# --------------------------------------------------------------------------------------- the check

def check_psd(path: Path | str) -> Check:
    """Run every reader on ``path``; never raises (a fault is ``returncode`` 1 with the reason)."""
    path = Path(path)
    lines: list[str] = []
    code = 0
    try:
        with tempfile.TemporaryDirectory(prefix="psdreaders-") as tmp:
            seen = _psdtools(path, lines, Path(tmp))
            im = _imagemagick(path, seen, lines, Path(tmp))
            ag = _agpsd(path, seen, lines, Path(tmp))
        merged = seen["merged"]
        if seen["psd"].color_mode.name == "RGB":
            rgb = merged[:, :, :3]
            opaque = merged[:, :, 3] >= 1.0 if merged.shape[2] == 4 else np.ones(rgb.shape[:2], bool)
            if im is not None and np.abs(im[opaque] - rgb[opaque]).max(initial=0.0) > 1e-6:
                raise Fault("the merged image differs between psd-tools and ImageMagick")
            if ag is not None:
                ours = np.round(merged * 255).astype(np.uint8)
                # where the document is partly transparent ag-psd takes a white matte off the colours (Photoshop's
                # convention for the merged image): compare colours where opaque, as with ImageMagick
                if not np.array_equal(ag[:, :, :3][opaque], ours[:, :, :3][opaque]):
                    raise Fault("the merged image differs between psd-tools and ag-psd")
                if merged.shape[2] == 4 and not np.array_equal(ag[:, :, 3], ours[:, :, 3]):
                    raise Fault("the merged image's alpha differs between psd-tools and ag-psd")
            lines.append("readers agree on the merged image")
    except Fault as exc:
        lines.append(f"INVALID: {exc}")
        code = 1
    except Exception as exc:  # noqa: BLE001 - a reader that breaks on the file is a finding, not a test error
        lines.append(f"INVALID: {type(exc).__name__}: {exc}")
        code = 1
    shared = shared_dir()
    if shared is not None:
        res = subprocess.run([sys.executable, str(shared / "tools" / "psdcheck.py"), str(path)],
                             capture_output=True, text=True)
        lines.append("psdcheck.py (STYLEBRIDGE_SHARED):\n" + res.stdout.rstrip() + res.stderr.rstrip())
        code = code or (1 if res.returncode != 0 else 0)
    return Check(code, "\n".join(lines) + "\n")


def psdcheck(path: Path | str) -> str:
    """:func:`check_psd`, asserting that the file passed; returns the report."""
    result = check_psd(path)
    assert result.returncode == 0, result.stdout
    return result.stdout
