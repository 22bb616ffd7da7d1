"""The independent PSD check (tests/psdreaders) is as strict as a spec checker: it passes the documents we write
and rejects every structural fault a broken writer could make (wrong section, record, channel and mask lengths,
wrong RLE row counts, trailing or missing bytes, wrong counts and sizes in the header).

Each fault is one lie planted in a real document of ours (8-bit PSD with a group mask, 16-bit PSD with its
layers in the Lr16 block, PSB). With ``$STYLEBRIDGE_SHARED`` set (``.ci/run``), the spec checker psdcheck.py
runs beside it, and every fault psdcheck.py finds must be found without it too.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from bridge.document.psd import write_psd
from psdreaders import check_psd
from psdreaders.check import agpsd_modules, require_readers, shared_dir
from test_psd_write import UNICODE_NAME, make_stack


def _documents(tmp_path: Path) -> dict[str, Path]:
    s8 = make_stack(40, 24, styles=("starry", UNICODE_NAME), smooth=True, run_name="Run ★")
    s8.items[1].mask = np.full((24, 40), 255, np.uint8)
    s8.items[1].mask[:, :9] = 0                                     # a group mask
    return {"8-bit": write_psd(s8, tmp_path / "doc8.psd"),
            "16-bit": write_psd(make_stack(40, 24, depth=16, styles=("a",), smooth=True), tmp_path / "doc16.psd"),
            "PSB": write_psd(make_stack(40, 24, styles=("a",), smooth=True), tmp_path / "doc.psb")}


# --------------------------------------------------------------------------- where the lengths are

def _locate(b: bytes) -> dict:
    """Offsets of the length fields in one of our documents (layers in the layer info, or in Lr16 at 16 bits)."""
    psb = b[4:6] == b"\x00\x02"
    big, n_big = ("Q", 8) if psb else ("I", 4)
    at: dict = {"psb": psb}
    p = 26
    p += 4 + struct.unpack_from(">I", b, p)[0]                      # colour mode data
    at["resources"] = p
    res_len = struct.unpack_from(">I", b, p)[0]
    at["first_resource"] = p + 4 + 4 + 2 + 2                         # 8BIM, id, empty Pascal name
    p += 4 + res_len
    at["layer_and_mask"] = p
    lm_len = struct.unpack_from(">" + big, b, p)[0]
    at["merged"] = p + n_big + lm_len
    p += n_big
    li_len = struct.unpack_from(">" + big, b, p)[0]
    if li_len == 0:                                                  # 16 bits: find the Lr16 block
        p += n_big
        p += 4 + struct.unpack_from(">I", b, p)[0]                   # global layer mask info
        assert b[p + 4:p + 8] == b"Lr16", b[p:p + 8]
        p += 8
    at["layer_info"] = p
    p += n_big
    at["count"] = p
    n = abs(struct.unpack_from(">h", b, p)[0])
    p += 2
    records = []
    for _ in range(n):
        rec = {"rect": p}
        t, l, bt, rt, nc = struct.unpack_from(">iiiiH", b, p)
        p += 18
        rec["channels"] = []
        for _ in range(nc):
            rec["channels"].append((struct.unpack_from(">h", b, p)[0], p + 2))
            p += 2 + n_big
        p += 12
        rec["extra"] = p
        end = p + 4 + struct.unpack_from(">I", b, p)[0]
        rec["mask"] = p + 4
        rec["has_mask"] = struct.unpack_from(">I", b, p + 4)[0] > 0
        p = end
        records.append(rec)
    for rec in records:
        rec["data"] = {}
        for cid, lenpos in rec["channels"]:
            rec["data"][cid] = p
            p += struct.unpack_from(">" + big, b, lenpos)[0]
    at["records"] = records
    return at


def _faults(b0: bytes):
    """(name, broken bytes) for each planted fault."""
    at = _locate(b0)
    big = "Q" if at["psb"] else "I"
    count = "I" if at["psb"] else "H"
    cw = 4 if at["psb"] else 2

    def change(pos: int, fmt: str, delta: int):
        b = bytearray(b0)
        struct.pack_into(">" + fmt, b, pos, struct.unpack_from(">" + fmt, b, pos)[0] + delta)
        return b

    def shift(pos: int):                    # one byte moved between the first two row counts: same total
        b = change(pos, count, 1)
        struct.pack_into(">" + count, b, pos + cw, struct.unpack_from(">" + count, b, pos + cw)[0] - 1)
        return b

    first = at["records"][0]
    masked = next(r for r in at["records"] if r["has_mask"])
    yield "trailing bytes", b0 + b"\0\0\0\0"
    yield "one byte short", b0[:-1]
    yield "resource section length", change(at["resources"], "I", 2)
    yield "resource length", change(at["first_resource"], "I", 2)
    yield "layer and mask section +4", change(at["layer_and_mask"], big, 4)
    yield "layer and mask section -4", change(at["layer_and_mask"], big, -4)
    yield "layer info length +4", change(at["layer_info"], big, 4)
    yield "layer info length -4", change(at["layer_info"], big, -4)
    yield "layer count +1", change(at["count"], "h", 1)
    yield "layer count -1", change(at["count"], "h", -1)
    yield "extra data length", change(first["extra"], "I", 4)
    yield "channel length +1", change(first["channels"][1][1], big, 1)
    yield "channel length -1", change(first["channels"][1][1], big, -1)
    yield "layer width", change(first["rect"] + 12, "i", 1)
    yield "layer height", change(first["rect"] + 8, "i", 1)
    yield "layer compression", change(first["data"][0], "H", 6)
    yield "layer RLE row count", change(first["data"][0] + 2, count, 1)
    yield "layer RLE row counts shifted", shift(first["data"][0] + 2)
    yield "mask record length", change(masked["mask"], "I", 4)
    yield "mask rectangle", change(masked["mask"] + 4 + 8, "i", 1)
    yield "mask RLE row counts shifted", shift(masked["data"][-2] + 2)
    yield "merged compression", change(at["merged"], "H", 4)
    yield "merged RLE row count", change(at["merged"] + 2, count, 1)
    yield "merged RLE row counts shifted", shift(at["merged"] + 2)
    yield "header channels", change(12, "H", 1)
    yield "header width", change(18, "I", 1)


# ----------------------------------------------------------------------------------------- tests

def test_our_documents_pass_every_reader(tmp_path):
    for kind, path in _documents(tmp_path).items():
        result = check_psd(path)
        assert result.returncode == 0, f"{kind}:\n{result.stdout}"
        report = result.stdout
        assert ("PSB" if kind == "PSB" else "PSD") in report.splitlines()[0]
        assert "merged image data" in report and "records written back byte for byte" in report
        if require_readers():                                       # .ci/test: every reader ran
            assert "ImageMagick: merged image +" in report and "ag-psd (strict):" in report, report
        if shared_dir() is not None:
            assert "psdcheck.py" in report and "INVALID" not in report, report


def test_every_planted_fault_is_caught(tmp_path, monkeypatch):
    """Every fault, in every kind of document, makes the readers' check fail (psdcheck.py left out); where
    psdcheck.py is named ($STYLEBRIDGE_SHARED, .ci/run) it runs on each too, to show what it finds is found."""
    psdcheck = shared_dir() / "tools" / "psdcheck.py" if shared_dir() is not None else None
    monkeypatch.delenv("STYLEBRIDGE_SHARED", raising=False)
    missed, broken_files = [], {}
    for kind, path in _documents(tmp_path).items():
        for i, (name, data) in enumerate(_faults(path.read_bytes())):
            broken = tmp_path / f"broken-{kind}-{i}{path.suffix}"
            broken.write_bytes(bytes(data))
            broken_files[str(broken)] = f"{kind}: {name}"
            result = check_psd(broken)
            if result.returncode == 0:
                missed.append(f"{kind}: {name}")
            else:
                assert "INVALID" in result.stdout, result.stdout
    spec_found = []
    if psdcheck is not None:                     # one run for all files: it prints "FILE: INVALID: ..." per fault
        spec = subprocess.run([sys.executable, str(psdcheck), *broken_files], capture_output=True, text=True)
        spec_found = [fault for file, fault in broken_files.items() if f"{file}: INVALID" in spec.stdout]
    assert not missed, missed                    # so every fault psdcheck.py finds is found without it
    assert psdcheck is None or len(spec_found) >= 3 * 24, spec_found   # it misses 'layer info length +4'


def test_a_missing_reader_is_a_failure_when_required(tmp_path, monkeypatch):
    path = _documents(tmp_path)["8-bit"]
    monkeypatch.setenv("STYLEBRIDGE_AG_PSD", str(tmp_path / "nowhere"))
    monkeypatch.setenv("STYLEBRIDGE_REQUIRE_READERS", "1")
    result = check_psd(path)
    assert result.returncode == 1 and "is not installed" in result.stdout
    monkeypatch.setenv("STYLEBRIDGE_REQUIRE_READERS", "0")
    result = check_psd(path)
    assert result.returncode == 0 and "ag-psd: not installed" in result.stdout
    assert agpsd_modules() is None
