"""Reading Photoshop files: every file in tests/data/psd reads correctly or fails with a clear message."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from psd_tools import PSDImage

from bridge.document import blend
from bridge.document.model import Group, Layer, LayerStack
from bridge.document.psd import clean_name, read_psd, style_name, write_psd
from bridge.imaging import ImageError
from psdreaders import reader_missing
from testdata import PSD_DIR

CONVERT = "/usr/bin/convert"
ALL_FILES = sorted(p.name for p in PSD_DIR.glob("*.ps[db]"))


def im_composite(path: Path, w: int, h: int) -> np.ndarray | None:
    """ImageMagick's merged image as float RGB (None when ImageMagick is not installed)."""
    if not os.access(CONVERT, os.X_OK):
        return None
    raw = Path(str(path) + ".rgb")
    res = subprocess.run([CONVERT, f"{path}[0]", "-depth", "16", "-endian", "MSB", f"RGB:{raw}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    data = np.frombuffer(raw.read_bytes(), ">u2").reshape(h, w, 3).astype(np.float64) / 65535.0
    raw.unlink()
    return data


def f(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) / np.iinfo(a.dtype).max


def test_the_photoshop_files_are_there():
    assert len(ALL_FILES) >= 10, f"expected the real Photoshop files in {PSD_DIR}"


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_photoshop_file_reads_or_fails_clearly(name):
    path = PSD_DIR / name
    try:
        content = read_psd(path)
    except ImageError as exc:
        msg = str(exc)
        assert str(path) in msg and "\n" not in msg and len(msg) < 300
        return
    pic = content.composite
    psd = PSDImage.open(path)
    assert pic.rgb.shape == (psd.height, psd.width, 3)
    assert pic.rgb.dtype == (np.uint16 if psd.depth >= 16 else np.uint8)
    assert pic.name == path.stem
    assert all("\x00" not in n for n in content.layer_names)
    assert content.content is pic
    if pic.alpha is not None:
        assert pic.alpha.shape == (psd.height, psd.width) and pic.alpha.dtype == pic.rgb.dtype
    # every kind of named layer can be picked as the content: one name per (kind, mask, visibility), as each read
    # parses and composites the whole file again (masks.psd: 19 names, 4 kinds, 0.5 s a read)
    names = set(content.layer_names)
    picks = {}
    for layer in psd.descendants():
        if clean_name(layer.name) in names:
            picks.setdefault((layer.kind, layer.has_mask(), layer.is_visible()), clean_name(layer.name))
    assert set(picks.values()) or not names
    for layer_name in sorted(set(picks.values())):
        layer = read_psd(path, content_layer=layer_name).content
        assert layer.rgb.shape == pic.rgb.shape and layer.name == layer_name


# Files with Photoshop's real merged image: ours must be that image (ImageMagick reads it on its own).
@pytest.mark.parametrize("name", ["16bit5x5.psd", "1layer.psb", "group.psd", "layer_mask_data.psd",
                                  "masks.psd", "layers_pixel-layer.psd", "gray0.psd"])
def test_composite_is_photoshops_merged_image(name):
    path = PSD_DIR / name
    pic = read_psd(path).composite
    theirs = im_composite(path, pic.width, pic.height)
    if theirs is None:
        reader_missing("ImageMagick not installed (run .ci/apt.sh)")
    ours = f(pic.rgb)
    if pic.alpha is not None:                 # ImageMagick flattens nothing here: compare opaque pixels
        opaque = pic.alpha == np.iinfo(pic.alpha.dtype).max
        assert opaque.any()
        ours, theirs = ours[opaque], theirs[opaque]
    assert np.abs(ours - theirs).max() <= 1.0 / 255 + 1e-9


def test_known_content_of_real_files():
    c = read_psd(PSD_DIR / "16bit5x5.psd")
    assert (c.color_mode, c.depth) == ("RGB", 16)
    assert c.composite.icc_profile and c.composite.icc_profile[36:40] == b"acsp"
    assert c.composite.dpi == (72.0, 72.0)
    assert c.layer_names == ["Background", "Background copy", "Background copy 2"]
    # a layer smaller than the canvas sits at its offset, transparent elsewhere
    small = read_psd(PSD_DIR / "16bit5x5.psd", content_layer="Background copy 2").content
    psd = PSDImage.open(PSD_DIR / "16bit5x5.psd")
    layer = list(psd)[2]
    l, t, r, b = layer.bbox
    assert np.all(small.alpha[:t] == 0) and np.all(small.alpha[t:b, l:r] > 0)
    assert np.abs(f(small.rgb[t:b, l:r]) - layer.numpy()[:, :, :3]).max() < 1e-4

    psb = read_psd(PSD_DIR / "1layer.psb")
    assert psb.large_format and psb.layer_names == ["Фон"]
    assert np.array_equal(read_psd(PSD_DIR / "1layer.psb", content_layer="фон").content.rgb, psb.composite.rgb)

    gray = read_psd(PSD_DIR / "gray0.psd")
    assert gray.color_mode == "GRAYSCALE"
    rgb = gray.composite.rgb
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 1], rgb[:, :, 2])
    assert gray.composite.alpha is not None and gray.composite.icc_profile is None

    cmyk = read_psd(PSD_DIR / "colormodes_4x4_8bit_cmyk.psd")
    assert cmyk.color_mode == "CMYK" and cmyk.composite.rgb.dtype == np.uint8
    assert b"sRGB" in cmyk.composite.icc_profile or b"s\x00R\x00G\x00B" in cmyk.composite.icc_profile
    psd = PSDImage.open(PSD_DIR / "colormodes_4x4_8bit_cmyk.psd")
    theirs = np.asarray(psd.topil(apply_icc=True).convert("RGB")).astype(int)   # psd-tools' own conversion
    assert np.abs(cmyk.composite.rgb.astype(int) - theirs).max() <= 3

    gimp = read_psd(PSD_DIR / "transparentbg-gimp.psd")
    assert gimp.layer_names == ["Фон"]
    assert gimp.composite.alpha is not None and 0 < gimp.composite.alpha.mean() < 255

    typ = read_psd(PSD_DIR / "layers-minimal_type-layer.psd")   # no real merged data: composited
    assert typ.composite.alpha is not None and typ.composite.alpha.max() == 255
    assert read_psd(PSD_DIR / "layers-minimal_type-layer.psd", content_layer="A").content.alpha.max() == 255


def _patched(tmp_path: Path, source: str, offset: int, value: bytes) -> Path:
    data = bytearray((PSD_DIR / source).read_bytes())
    data[offset:offset + len(value)] = value
    out = tmp_path / f"patched-{offset}-{value.hex()}.psd"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("mode,word", [(7, "Multichannel"), (8, "Duotone")])   # Lab: test_hardening_psd.py
def test_unsupported_colour_modes_are_refused(tmp_path, mode, word):
    path = _patched(tmp_path, "group.psd", 24, mode.to_bytes(2, "big"))
    with pytest.raises(ImageError, match=f"{word} documents are not supported"):
        read_psd(path)


def test_damaged_and_wrong_files_fail_clearly(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_psd(tmp_path / "missing.psd")
    with pytest.raises(ImageError, match="is a folder"):
        read_psd(tmp_path)
    png = tmp_path / "x.psd"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ImageError, match="not a Photoshop file"):
        read_psd(png)
    data = (PSD_DIR / "masks.psd").read_bytes()
    cut = tmp_path / "cut.psd"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or damaged"):
        read_psd(cut)
    with pytest.raises(ImageError, match="over the limit"):
        read_psd(PSD_DIR / "masks.psd", max_pixels=1000)
    with pytest.raises(ImageError, match=r"no layer named 'Nope' \(layers: 'Background'"):
        read_psd(PSD_DIR / "group.psd", content_layer="Nope")


def test_style_name_convention():
    assert style_name("style: Starry Night") == "Starry Night"
    assert style_name("STYLE :the scream ") == "the scream"
    assert style_name("Style:x\x00\x00") == "x"
    assert style_name("style:") is None
    assert style_name("my style: x") is None
    assert style_name("Background") is None


def _layer(name, w, h, rgb, visible=True, alpha=None, left=0, top=0, mask=None):
    px = np.zeros((h, w, 3 if alpha is None else 4), np.uint8)
    px[:, :, :3] = rgb
    if alpha is not None:
        px[:, :, 3] = alpha
    return Layer(name=name, role="original", pixels=px, visible=visible, left=left, top=top, mask=mask)


def test_style_layers_content_layer_and_composite_without_styles(tmp_path):
    w, h = 30, 20
    photo = _layer("Photo", w, h, (200, 100, 50))
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 2] = 255
    over = _layer("Overlay", w, h, (0, 0, 255), mask=mask)
    s1 = _layer("style: Starry", 12, 8, (10, 20, 30), visible=True, left=3, top=4)     # visible!
    s2 = _layer("STYLE : the scream", 6, 5, (90, 80, 70), visible=False, left=20, top=10)
    stack = LayerStack(width=w, height=h, depth=8, items=[photo, over, Group("Styles", [s1, s2])],
                       dpi=(150.0, 150.0))
    path = write_psd(stack, tmp_path / "in.psd")
    c = read_psd(path)
    assert [s.name for s in c.styles] == ["Starry", "the scream"]
    assert c.styles[0].picture.rgb.shape == (8, 12, 3) and np.all(c.styles[0].picture.rgb == (10, 20, 30))
    assert c.styles[1].picture.rgb.shape == (5, 6, 3) and np.all(c.styles[1].picture.rgb == (90, 80, 70))
    # the visible style layer is left out of the composite
    expect = np.where(mask[:, :, None] == 255, [0, 0, 255], [200, 100, 50])
    assert np.abs(c.composite.rgb.astype(int) - expect).max() <= 1
    assert c.composite.dpi == (150.0, 150.0)
    # content layer with its mask applied as transparency
    ov = read_psd(path, content_layer="overlay").content
    assert np.array_equal(ov.alpha, mask)
    assert read_psd(path, content_layer="Photo").content.alpha is None


def test_our_own_documents_read_back(tmp_path):
    from test_psd_write import make_stack, _srgb_icc
    stack = make_stack(24, 16, depth=16, styles=("a", "b"), smooth=True, icc=_srgb_icc(), dpi=(300.0, 300.0))
    path = write_psd(stack, tmp_path / "ours.psd")
    c = read_psd(path)
    rgb, _ = blend.composite(stack)
    assert c.composite.rgb.dtype == np.uint16 and np.array_equal(c.composite.rgb, rgb)
    assert c.composite.icc_profile == stack.icc_profile and c.composite.dpi == (300.0, 300.0)
    assert np.array_equal(read_psd(path, content_layer="Original").content.rgb, stack.items[0].pixels)
    assert c.styles == []


def test_32_bit_and_bitmap_documents(tmp_path):
    p = PSDImage.new("RGB", (8, 6), depth=32)
    p.create_pixel_layer_from_array(np.full((6, 8, 3), 0.5, np.float32), name="linear")
    p.save(tmp_path / "f32.psd")
    c = read_psd(tmp_path / "f32.psd")
    assert c.depth == 32 and c.composite.rgb.dtype == np.uint16
    # linear 0.5 -> sRGB-encoded 0.7354
    assert abs(int(c.composite.rgb[0, 0, 0]) - round(0.7354 * 65535)) < 40
    b = PSDImage.new("1", (8, 6))
    b.save(tmp_path / "bitmap.psd")
    c = read_psd(tmp_path / "bitmap.psd")
    assert c.color_mode == "BITMAP" and c.composite.rgb.shape == (6, 8, 3)


def test_wide_psb_reads_in_a_fresh_process(tmp_path):
    """psd-tools refuses > 30000 px per side unless told PSB allows more; a fresh interpreter proves we do."""
    import sys
    from test_psd_write import make_stack
    from bridge.settings import DocumentSettings
    stack = make_stack(30001, 3, styles=("a",), smooth=True,
                       settings=DocumentSettings(detail_layer=False, colors_layer=False, refine_layer=False))
    path = write_psd(stack, tmp_path / "wide.psb")
    code = ("import sys; from bridge.document.psd import read_psd; c = read_psd(sys.argv[1]); "
            "print(c.composite.width, c.large_format, len(c.layer_names))")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["30001", "True", "3"]
