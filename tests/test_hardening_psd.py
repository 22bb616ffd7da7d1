"""Issue 15: Photoshop documents that Photoshop shows but we used to refuse or crash on.

Gradient fill and shape (vector, stroked) layers render (psd-tools' ``composite`` extra: scipy,
aggdraw), Lab documents convert to sRGB exactly, duotone/multichannel are refused with what to do,
the ICC profile resource is checked before it is kept, and damaged documents give a PsdContent or
an ImageError, never another exception.  The files are built byte by byte from the PSD spec
(``psd_build.py``: no Photoshop-made files with these features can be put in the repository).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image, ImageCms

from bridge.document.psd import read_psd
from bridge.imaging import ImageError, MetadataWarning, lab_to_srgb, load_image, to_dtype
from psd_build import Layer, gradient_fill, psd, solid_fill, vector_rect, vector_stroke

W, H = 16, 8
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
RAMP = np.round(np.arange(W) * 255.0 / (W - 1))            # black -> white across the canvas


def opaque(rgb: tuple[int, int, int], h: int = H, w: int = W) -> np.ndarray:
    return np.dstack([np.full((h, w), v, np.uint8) for v in rgb] + [np.full((h, w), 255, np.uint8)])


def gradient_layer(name: str = "Gradient", **kw) -> Layer:
    return Layer(name, blocks=[(b"GdFl", gradient_fill([(0, (0, 0, 0)), (4096, (255, 255, 255))]))],
                 pixel_data_irrelevant=True, **kw)


def shape_layer(name: str = "Shape", stroke: bool = True) -> Layer:
    blocks = [(b"SoCo", solid_fill((255, 0, 0))), (b"vmsk", vector_rect(4, 2, 12, 6, W, H))]
    if stroke:
        blocks.append((b"vstk", vector_stroke(2, (0, 0, 255))))
    return Layer(name, blocks=blocks, pixel_data_irrelevant=True)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def grey_merged(value: int = 10) -> np.ndarray:
    return np.full((3, H, W), value, np.uint8)


# ----------------------------------------------------------------------- fill and shape layers

def test_gradient_fill_layer_reads_as_content(tmp_path):
    path = write(tmp_path, "g.psd", psd("RGB", W, H, grey_merged(), layers=[
        Layer("Background", pixels=opaque((10, 10, 10))), gradient_layer()]))
    pic = read_psd(path, content_layer="Gradient").content
    assert pic.rgb.shape == (H, W, 3)
    for row in pic.rgb:
        assert np.abs(row[:, 0].astype(int) - RAMP).max() <= 1
        assert (row[:, 0] == row[:, 1]).all() and (row[:, 1] == row[:, 2]).all()


def test_stroked_shape_layer_reads_as_content(tmp_path):
    path = write(tmp_path, "s.psd", psd("RGB", W, H, grey_merged(), layers=[
        Layer("Background", pixels=opaque((10, 10, 10))), shape_layer()]))
    pic = read_psd(path, content_layer="Shape").content
    assert pic.alpha is not None
    assert (pic.rgb[3:5, 6:10] == (255, 0, 0)).all() and (pic.alpha[3:5, 6:10] == 255).all()   # filled inside
    assert (pic.alpha[:, :2] == 0).all() and (pic.alpha[:, 14:] == 0).all()                     # nothing outside
    # the 2 px stroke, centred on the path (rows 2 and 6 are its edge): blue, also outside the fill
    for row in (1, 2, 5, 6):
        assert (pic.rgb[row, 6:10] == (0, 0, 255)).all() and (pic.alpha[row, 6:10] == 255).all(), row


def test_a_visible_style_layer_makes_the_composite_render_the_fills(tmp_path):
    # the stored merged image includes the style layer, so the composite is re-rendered without it
    path = write(tmp_path, "v.psd", psd("RGB", W, H, grey_merged(99), layers=[
        gradient_layer(), Layer("style: Blue", pixels=opaque((0, 0, 255), 4, 4), left=2, top=2)]))
    content = read_psd(path)
    assert content.styles[0].name == "Blue" and content.styles[0].picture.width == 4
    for row in content.composite.rgb:
        assert np.abs(row[:, 0].astype(int) - RAMP).max() <= 1


def test_without_a_stored_composite_the_layers_are_rendered(tmp_path):
    path = write(tmp_path, "n.psd", psd("RGB", W, H, grey_merged(0), real_merged=False, layers=[
        gradient_layer(), shape_layer(stroke=False)]))
    rgb = read_psd(path).composite.rgb
    assert (rgb[3:5, 5:11] == (255, 0, 0)).all()
    assert np.abs(rgb[0, :, 1].astype(int) - RAMP).max() <= 1


def test_the_stored_composite_is_preferred_when_it_is_real(tmp_path):
    # Photoshop's own pixels beat any re-render: the (here deliberately different) stored image wins
    path = write(tmp_path, "p.psd", psd("RGB", W, H, grey_merged(77), layers=[gradient_layer()]))
    assert (read_psd(path).composite.rgb == 77).all()


def test_a_missing_renderer_is_a_clear_error(tmp_path, monkeypatch):
    import psd_tools.composite._compat as compat
    monkeypatch.setattr(compat, "HAS_SCIPY", False)
    path = write(tmp_path, "m.psd", psd("RGB", W, H, grey_merged(), layers=[gradient_layer()]))
    with pytest.raises(ImageError) as err:
        read_psd(path, content_layer="Gradient")
    msg = str(err.value)
    assert str(path) in msg and "scipy" in msg and "pip install 'psd-tools[composite]'" in msg and "\n" not in msg


# ----------------------------------------------------------------------------------------- Lab

def test_lab_to_srgb_known_values():
    # Lab (D50) of sRGB's white, black and primaries (Lindbloom's calculator, Bradford adaptation)
    cases = [((100, 0, 0), (255, 255, 255)), ((0, 0, 0), (0, 0, 0)), ((54.29, 80.80, 69.89), (255, 0, 0)),
             ((87.82, -79.29, 80.99), (0, 255, 0)), ((29.57, 68.30, -112.03), (0, 0, 255)),
             ((53.585, 0, 0), (128, 128, 128))]
    for lab, rgb in cases:
        got = to_dtype(lab_to_srgb(*lab), np.uint8).astype(int)
        assert np.abs(got - rgb).max() <= 1, (lab, got, rgb)


def test_lab_to_srgb_matches_littlecms():
    """Against LittleCMS's exact (unoptimised) Lab D50 -> sRGB on in-gamut colours: within 1/255."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (32, 32, 3), np.uint8)
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    lab = np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), to_lab))      # a/b signed bytes
    back = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB",
                                   flags=ImageCms.Flags.NOOPTIMIZE)
    theirs = np.asarray(ImageCms.applyTransform(Image.frombytes("LAB", (32, 32), lab.tobytes()), back)).astype(int)
    ours = to_dtype(lab_to_srgb(lab[..., 0].astype(float) * 100 / 255, lab[..., 1].view(np.int8),
                                lab[..., 2].view(np.int8)), np.uint8).astype(int)
    assert np.abs(ours - theirs).max() <= 1


# Photoshop's 8-bit Lab: L 0..255 = 0..100, a/b with 128 = 0
LAB8 = [((255, 128, 128), (255, 255, 255)), ((0, 128, 128), (0, 0, 0)), ((138, 209, 198), (255, 0, 0)),
        ((137, 128, 128), (128, 128, 128))]


@pytest.mark.parametrize("depth", [8, 16])
def test_lab_document_reads_as_srgb(tmp_path, depth):
    merged = np.zeros((4, 1, len(LAB8)), np.uint16 if depth == 16 else np.uint8)
    for i, (lab, _) in enumerate(LAB8):
        merged[:3, 0, i] = lab
    merged[3] = 255
    merged[3, 0, -1] = 0                                      # one transparent pixel: alpha kept
    if depth == 16:
        merged = merged * 257
    path = write(tmp_path, "lab.psd", psd("LAB", len(LAB8), 1, merged, depth=depth))
    content = read_psd(path)
    pic = content.composite
    assert content.color_mode == "LAB" and pic.bit_depth == depth
    top = 65535 if depth == 16 else 255
    for i, (_, rgb) in enumerate(LAB8[:-1]):
        got = pic.rgb[0, i].astype(float) * 255 / top
        assert np.abs(got - rgb).max() <= 1.5, (i, got, rgb)
    assert pic.alpha is not None and pic.alpha[0, -1] == 0 and pic.alpha[0, 0] == top
    assert pic.icc_profile is not None and pic.icc_profile[16:20] == b"RGB "      # tagged sRGB


def test_lab_pixel_layer_as_content_and_fill_layer_refused(tmp_path):
    merged = np.zeros((3, 1, 3), np.uint8)
    for i, (lab, _) in enumerate(LAB8[:3]):
        merged[:, 0, i] = lab
    px = np.dstack([merged[0], merged[1], merged[2], np.full((1, 3), 255, np.uint8)])
    path = write(tmp_path, "lab.psd", psd("LAB", 3, 1, merged, layers=[Layer("Photo", pixels=px),
                                                                        gradient_layer(visible=False)]))
    pic = read_psd(path, content_layer="Photo").content
    assert np.abs(pic.rgb[0].astype(int) - [rgb for _, rgb in LAB8[:3]]).max() <= 1
    with pytest.raises(ImageError, match="'Gradient' is a gradient fill layer in a Lab document.*Rasterize"):
        read_psd(path, content_layer="Gradient")


# --------------------------------------------------------------------------- duotone, multichannel

@pytest.mark.parametrize("mode, why", [("DUOTONE", "ink curves and ink colours"),
                                       ("MULTICHANNEL", "separate ink plates")])
def test_duotone_and_multichannel_are_refused_with_what_to_do(tmp_path, mode, why):
    planes = 1 if mode == "DUOTONE" else 2
    path = write(tmp_path, "d.psd", psd(mode, W, H, np.full((planes, H, W), 90, np.uint8),
                                        color_data=bytes(10) if mode == "DUOTONE" else b""))
    with pytest.raises(ImageError) as err:
        read_psd(path)
    msg = str(err.value)
    assert f"{mode.title()} documents are not supported" in msg and why in msg
    assert "Image > Mode > RGB Color" in msg and str(path) in msg


# ------------------------------------------------------------------------------- ICC resource

def test_psd_icc_resource_is_checked(tmp_path):
    ok = write(tmp_path, "ok.psd", psd("RGB", W, H, grey_merged(), icc=SRGB))
    assert read_psd(ok).composite.icc_profile == SRGB
    bogus = SRGB[:132] + b"\xff" * (len(SRGB) - 132)
    bad = write(tmp_path, "bad.psd", psd("RGB", W, H, grey_merged(), icc=bogus))
    with pytest.warns(MetadataWarning, match="ICC profile dropped"):
        assert read_psd(bad).composite.icc_profile is None
    huge = write(tmp_path, "huge.psd", psd("RGB", W, H, grey_merged(),
                                           icc=(17 << 20).to_bytes(4, "big") + SRGB[4:] + bytes(17 << 20)))
    with pytest.warns(MetadataWarning, match="over the limit of 16,777,216 bytes"):
        assert read_psd(huge).composite.icc_profile is None


# ------------------------------------------------------------------- property-based: damaged PSDs

SEED = psd("RGB", W, H, grey_merged(40), icc=SRGB, layers=[
    Layer("Background", pixels=opaque((10, 20, 30))), gradient_layer(), shape_layer(),
    Layer("style: x", pixels=opaque((0, 0, 255), 3, 3), left=1, top=1, visible=False)])
_fuzz = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DIR = tempfile.TemporaryDirectory(prefix="sb-psd-fuzz-")


def _check(data: bytes) -> None:
    path = Path(_DIR.name) / "case.psd"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            content = read_psd(path, max_pixels=100_000)
            assert content.composite.rgb.ndim == 3
        except ImageError as exc:
            assert str(path) in str(exc) and len(str(exc)) < 600
        try:
            load_image(data, max_pixels=100_000)   # Pillow reads a PSD's merged image too
        except ImageError:
            pass


def test_the_seed_document_reads():
    _check(SEED)
    path = Path(_DIR.name) / "seed.psd"
    path.write_bytes(SEED)
    content = read_psd(path)
    assert [s.name for s in content.styles] == ["x"] and (content.composite.rgb == 40).all()


@_fuzz
@given(data=st.data())
def test_damaged_psd_truncated(data):
    _check(SEED[:data.draw(st.integers(0, len(SEED) - 1))])


@_fuzz
@given(data=st.data())
def test_damaged_psd_bit_flips(data):
    buf = bytearray(SEED)
    for _ in range(data.draw(st.integers(1, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    _check(bytes(buf))


@_fuzz
@given(data=st.data())
def test_damaged_psd_overwritten_lengths(data):
    """4 bytes anywhere set to a small, a huge or an all-ones length."""
    buf = bytearray(SEED)
    pos = data.draw(st.integers(0, len(buf) - 4))
    value = data.draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1))
    buf[pos:pos + 4] = value.to_bytes(4, "big")
    _check(bytes(buf))
