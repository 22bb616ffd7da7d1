"""``stylebridge stylize`` end to end on small real images: names, no overwrite, JSON, PSD, errors, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bridge.cli import build_parser, main
from bridge.commands.stylize import given_options
from bridge.imaging import Picture, load_image, save_image
from psdreaders import check_psd

FAST = ["--size", "48", "--iterations", "3", "--no-coarse-to-fine", "--seed", "1", "--quiet"]
REPO = Path(__file__).resolve().parents[1]


def _write_inputs(tmp_path: Path, photo: Picture, starry: Picture, scream: Picture) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    return {
        "photo": save_image(photo, d / "tubingen.png"),
        "starry": save_image(starry, d / "starry_night.jpg"),
        "scream": save_image(scream, d / "the_scream.png"),
    }


@pytest.fixture
def inputs(tmp_path, photo, starry, scream) -> dict[str, Path]:
    return _write_inputs(tmp_path, photo, starry, scream)


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_output_names_and_no_overwrite(tmp_path, inputs, capsys) -> None:
    out = tmp_path / "out" / "nested"      # ends in /: the missing parents are created
    args = ["stylize", inputs["photo"], "-s", inputs["starry"], "-s", inputs["scream"], "-o", f"{out}/", *FAST]
    code, stdout, err = cli(args, capsys)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["tubingen_starry_night.png", "tubingen_the_scream.png"]
    first = (out / "tubingen_starry_night.png").read_bytes()
    pic = load_image(out / "tubingen_starry_night.png")
    assert (pic.width, pic.height) == (96, 72)          # native size, not the 48 px working size
    code, _, err = cli(args, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "tubingen_starry_night-2.png", "tubingen_starry_night.png",
        "tubingen_the_scream-2.png", "tubingen_the_scream.png"]
    assert (out / "tubingen_starry_night.png").read_bytes() == first
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no temp files left


def test_json_summary_blend_and_preset(tmp_path, inputs, capsys) -> None:
    out = tmp_path / "o"
    code, stdout, err = cli(["stylize", inputs["photo"], "-s", inputs["starry"], "-s", inputs["scream"],
                             "-o", out, "--preset", "draft", "--size", "40", "--iterations", "2",
                             "--coarse-iterations", "1", "--style-blend-weights", "1,3", "--json", "--quiet"],
                            capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert [Path(p).name for p in summary["outputs"]] == [
        "tubingen_starry_night.png", "tubingen_the_scream.png", "tubingen_blend.png"]
    assert all(Path(p).is_file() for p in summary["outputs"])
    s = summary["settings"]
    assert s["size"] == 40 and s["iterations"] == 2 and s["coarse_iterations"] == 1
    assert s["style_blend_weights"] == [1.0, 3.0] and isinstance(s["seed"], int)
    assert set(summary["images"][0]["losses"]) == {"content", "style", "tv", "total"}
    assert summary["native_size"] == [96, 72] and summary["working_size"] == [40, 30]
    assert summary["cancelled"] is False and summary["seconds"] > 0


def test_progress_bar_on_stderr_and_paths_on_stdout(tmp_path, inputs, capsys) -> None:
    args = [a for a in FAST if a != "--quiet"]
    code, stdout, err = cli(["stylize", inputs["photo"], "-s", inputs["starry"], "-o", tmp_path / "o", *args],
                            capsys)
    assert code == 0
    assert stdout.strip().endswith("tubingen_starry_night.png")
    # the one progress text (bridge.progress -> progress_text), plus the best loss so far
    assert "starry_night (1/1), stage 1/1, iteration 3/3" in err and "best loss " in err, err


def test_json_reports_the_device_used_the_real_working_size_and_whole_seconds(tmp_path, inputs, capsys) -> None:
    """--size above the photo's long side runs at the photo's size; "device" is resolved, never "auto";
    "seconds" covers every timing it lists."""
    code, stdout, err = cli(["stylize", inputs["photo"], "-s", inputs["starry"], "-o", tmp_path / "o",
                             "--size", "512", "--iterations", "1", "--no-coarse-to-fine", "--json", "--quiet"],
                            capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["working_size"] == [96, 72] and summary["native_size"] == [96, 72]
    assert summary["settings"]["device"] == "auto" and summary["device"] in ("cpu", "cuda", "mps"), summary
    assert set(summary["timings"]) == {"prepare", "stylize", "write"}
    assert summary["seconds"] + 1e-9 >= sum(summary["timings"].values()) > 0
    assert summary["notes"] == []


def test_single_image_output_and_16_bit(tmp_path, photo, inputs, capsys) -> None:
    p16 = Picture(rgb=photo.rgb.astype(np.uint16) * 257, dpi=(300.0, 300.0), name="deep")
    src = save_image(p16, tmp_path / "deep.png")
    assert load_image(src).bit_depth == 16
    target = tmp_path / "result.png"
    code, _, err = cli(["stylize", src, "-s", inputs["starry"], "-o", target, *FAST], capsys)
    assert code == 0, err
    out = load_image(target)
    assert out.bit_depth == 16 and out.dpi == (300.0, 300.0) and (out.width, out.height) == (96, 72)
    code, _, err = cli(["stylize", src, "-s", inputs["starry"], "-s", inputs["scream"], "-o",
                        tmp_path / "two.png", *FAST], capsys)
    assert code == 2 and "need a folder" in err


def test_options_only_what_was_typed() -> None:
    parser = build_parser()
    args = parser.parse_args(["stylize", "a.png", "-s", "b.png", "-o", "o", "--size", "80",
                              "--no-coarse-to-fine", "--style-layers", "relu1_1,relu2_1", "--detail-opacity",
                              "0.3"])
    assert given_options(args) == {"size": "80", "coarse_to_fine": False, "style_layers": "relu1_1,relu2_1",
                                   "detail_opacity": "0.3"}
    args = parser.parse_args(["stylize", "a.png", "-s", "b.png", "-o", "o", "--preset", "best"])
    assert given_options(args) == {"preset": "best"}


@pytest.mark.parametrize("case", [
    "missing_content", "missing_style", "not_an_image", "truncated", "bad_choice", "bad_number",
    "bad_layer", "blend_count", "mask_without_psd", "out_is_file", "bad_style_mask", "over_limit",
    "min_size_over_limit", "too_many_styles",
])
def test_bad_input_one_line_exit_2_nothing_written(case, tmp_path, inputs, capsys) -> None:
    out = tmp_path / "out"
    extra: list = []
    content, style = inputs["photo"], inputs["starry"]
    if case == "missing_content":
        content = tmp_path / "nope.jpg"
    elif case == "missing_style":
        style = tmp_path / "nope_style.jpg"
    elif case == "not_an_image":
        style = tmp_path / "notes.jpg"
        style.write_text("hello, not a picture")
    elif case == "truncated":
        data = Path(inputs["starry"]).read_bytes()
        style = tmp_path / "cut.jpg"
        style.write_bytes(data[: len(data) // 3])
    elif case == "bad_choice":
        extra = ["--pooling", "median"]
    elif case == "bad_number":
        extra = ["--content-weight", "lots"]
    elif case == "bad_layer":
        extra = ["--style-layers", "relu9_9"]
    elif case == "blend_count":
        extra = ["--style-blend-weights", "1,2,3"]
    elif case == "mask_without_psd":
        extra = ["--mask", inputs["photo"]]
    elif case == "out_is_file":
        out = tmp_path / "taken"
        out.write_text("user data")
    elif case == "bad_style_mask":
        out = tmp_path / "doc.psd"
        extra = ["--style-mask", "nosuchstyle=" + str(inputs["photo"])]
    elif case == "over_limit":
        extra = ["--size", "5000"]
    elif case == "min_size_over_limit":            # the CLI once skipped this limit (the daemon did not)
        extra = ["--min-size", "5000", "--coarse-to-fine"]
    elif case == "too_many_styles":
        extra = [a for _ in range(17) for a in ("-s", style)]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = cli(["stylize", content, "-s", style, "-o", out, *FAST, *extra], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stylebridge: error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "out_is_file":
        assert out.read_text() == "user data"
    if case in ("over_limit", "min_size_over_limit"):
        assert "limit of 4096 px (max_size)" in err, err
    if case == "too_many_styles":
        assert "18 styles is over the limit of 16" in err, err


def test_psd_output_with_masks(tmp_path, inputs, photo, capsys) -> None:
    pytest.importorskip("bridge.document.psd")
    mask = np.zeros((photo.height, photo.width, 3), np.uint8)
    mask[:, : photo.width // 2] = 255
    mask_path = save_image(Picture(rgb=mask, name="m"), tmp_path / "left.png")
    target = tmp_path / "doc.psd"
    code, stdout, err = cli(["stylize", inputs["photo"], "-s", inputs["starry"], "-s", inputs["scream"],
                             "-o", target, *FAST, "--style-mask", f"the_scream={mask_path}", "--json",
                             "--no-refine-layer"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["outputs"] == [str(target)] and summary["document_settings"]["refine_layer"] is False
    check = check_psd(target)
    assert check.returncode == 0, check.stdout + check.stderr
    from psd_tools import PSDImage
    doc = PSDImage.open(target)
    names = [layer.name for layer in doc.descendants()]
    assert "starry_night" in names and "the_scream" in names
    # the blended result's layer takes a mask too (its name is "blend")
    code, stdout, err = cli(["stylize", inputs["photo"], "-s", inputs["starry"], "-s", inputs["scream"],
                             "--style-blend-weights", "1,1", "-o", tmp_path / "blend.psd", *FAST,
                             "--style-mask", f"blend={mask_path}"], capsys)
    assert code == 0, err
    # second run: a new name, the first document untouched
    code, stdout, err = cli(["stylize", inputs["photo"], "-s", inputs["starry"], "-o", target, *FAST], capsys)
    assert code == 0, err
    assert (tmp_path / "doc-2.psd").is_file()


@pytest.mark.e2e
def test_ctrl_c_writes_best_so_far_and_exits_130(tmp_path, inputs) -> None:
    """A real SIGINT to a real process (forked from this one: tests/inprocess.py Forked, the command line's own
    ``main`` in it): the optimisation stops, the partial result is written, exit 130."""
    from inprocess import Forked

    out = tmp_path / "o"
    proc = Forked(["stylize", str(inputs["photo"]), "-s", str(inputs["starry"]), "-o", str(out), "--size", "48",
                   "--iterations", "5000", "--no-coarse-to-fine"], separate_stderr=True)
    seen = threading.Event()
    chunks: list[bytes] = []

    def reader() -> None:
        while chunk := os.read(proc.stderr.fileno(), 4096):   # type: ignore[union-attr]
            chunks.append(chunk)
            if b"it" in chunk and b"loss" in chunk:
                seen.set()

    threading.Thread(target=reader, daemon=True).start()
    assert seen.wait(90), b"".join(chunks)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(60)
    finally:
        proc.kill()
    stdout = proc.stdout.read()
    err = b"".join(chunks).decode(errors="replace")
    assert code == 130, err
    assert "interrupted" in err
    written = out / "tubingen_starry_night.png"
    assert written.is_file() and str(written) in stdout
    assert load_image(written).width == 96


def test_native_size_pixel_cap_and_style_resolution_note(tmp_path, inputs, capsys, monkeypatch) -> None:
    """size native: over max_native_pixels -> exit 2 before any work; a style smaller than the native stage
    needs is one 'stylebridge: note:' line (the texture can be no finer than the style image)."""
    import dataclasses as dc

    from bridge.commands import stylize as stylize_command
    small = dc.replace(stylize_command.LIMITS, max_native_pixels=1000)
    monkeypatch.setattr(stylize_command, "LIMITS", small)
    code, _, err = cli(["stylize", inputs["photo"], "-s", inputs["starry"], "--size", "native", "-o", tmp_path / "o/"], capsys)
    assert code == 2 and "max_native_pixels" in err and "working size" in err, err
    assert not (tmp_path / "o").exists()
    monkeypatch.undo()
    from PIL import Image
    tiny_style = tmp_path / "tiny.png"
    Image.open(inputs["starry"]).convert("RGB").resize((24, 24)).save(tiny_style)
    code, _, err = cli(["stylize", inputs["photo"], "-s", tiny_style, "--size", "native", "--min-size", "48", "--iterations", "2",
                        "--coarse-iterations", "1", "--quiet", "-o", tmp_path / "n/"], capsys)
    assert code == 0, err
    assert "stylebridge: note:" in err and "tiny" in err and "Warning" not in err, err

