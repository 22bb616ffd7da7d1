"""The layer stack built from a (synthetic) stylisation result: order, masks, depth, detail maths."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bridge.document import blend
from bridge.document.model import Group, Layer
from bridge.document.stack import build_stack, default_detail_radius, layer_records, normalize_mask
from bridge.engine.types import StyledImage, StylizeResult
from bridge.imaging import Picture, encode_array_png, load_image
from bridge.settings import DocumentSettings, Settings

RNG = np.random.default_rng(1234)


def picture(w: int, h: int, depth: int = 8, alpha: bool = False, name: str = "photo") -> Picture:
    dt = np.uint16 if depth == 16 else np.uint8
    top = np.iinfo(dt).max
    rgb = (RNG.random((h, w, 3)) * top).astype(dt)
    a = (RNG.random((h, w)) * top).astype(dt) if alpha else None
    return Picture(rgb=rgb, alpha=a, icc_profile=b"fake-icc" if depth == 8 else None,
                   dpi=(300.0, 300.0), name=name)


def result(w: int = 24, h: int = 16, depth: int = 8, styles=("starry", "scream"), alpha=False,
           working=None) -> StylizeResult:
    content = picture(w, h, depth, alpha)
    images = [StyledImage(n, picture(w, h, depth, alpha, n), {"total": float(i + 1)})
              for i, n in enumerate(styles)]
    return StylizeResult(content=content, images=images, settings=Settings(seed=7),
                         working_size=working or (max(1, w // 2), max(1, h // 2)))


def test_order_names_roles_and_defaults():
    r = result(styles=("starry", "scream", "blend"))
    st = build_stack(r, DocumentSettings())
    names = [(item.name, item.role) for item, _ in st.walk()]
    assert names == [("Original", "original"), ("Styles", "group"), ("starry", "style"),
                     ("scream", "style"), ("blend", "blend"), ("Detail", "detail"),
                     ("Original colours", "colors"), ("Refine", "refine")]
    d = DocumentSettings()
    detail = st.items[2]
    assert (detail.mode, detail.opacity, detail.visible) == (d.detail_mode, d.detail_opacity, d.detail_visible)
    colors = st.items[3]
    assert colors.mode == "color" and not colors.visible and not colors.mask.any()
    refine = st.items[4]
    assert refine.pixels.shape == (16, 24, 4) and not refine.pixels.any()
    assert np.array_equal(st.items[0].pixels, r.content.rgb)
    # Original and Original colours share one array (memory)
    assert np.shares_memory(st.items[0].pixels, colors.pixels)
    assert (st.width, st.height, st.depth, st.icc_profile, st.dpi) == (24, 16, 8, b"fake-icc", (300.0, 300.0))
    style = st.items[1].children[0]
    assert style.meta["settings"]["seed"] == 7 and style.meta["losses"] == {"total": 1.0}
    assert np.array_equal(style.pixels, r.images[0].picture.rgb)


def test_group_name_from_settings_or_run_name_and_optional_layers():
    r = result()
    assert build_stack(r, DocumentSettings(group_name="Looks")).items[1].name == "Looks"
    assert build_stack(r, DocumentSettings(), run_name="Run 3").items[1].name == "Run 3"
    st = build_stack(r, DocumentSettings(detail_layer=False, colors_layer=False, refine_layer=False))
    assert [i.name for i in st.items] == ["Original", "Styles"]


@pytest.mark.parametrize("reveal,expected", [("first", [255, 0, 0]), ("all", [255, 255, 255]),
                                             ("none", [0, 0, 0])])
def test_reveal_masks(reveal, expected):
    st = build_stack(result(styles=("a", "b", "c")), DocumentSettings(reveal=reveal))
    for layer, want in zip(st.items[1].children, expected):
        assert layer.mask.dtype == np.uint8 and layer.mask.shape == (16, 24)
        assert np.all(layer.mask == want)


def test_caller_masks_of_every_type():
    r = result(styles=("a", "b"))
    half = np.zeros((16, 24), bool)
    half[:, :12] = True
    st = build_stack(r, DocumentSettings(), masks=half)
    for layer in st.items[1].children:
        assert np.array_equal(layer.mask, np.where(half, 255, 0))
    st = build_stack(r, DocumentSettings(reveal="none"),
                     masks={"b": np.full((16, 24), 0.5, np.float32)})
    a, b = st.items[1].children
    assert not a.mask.any() and np.all(b.mask == 128)
    st = build_stack(r, DocumentSettings(), masks=np.full((16, 24, 1), 65535, np.uint16))
    assert np.all(st.items[1].children[1].mask == 255)
    # 16-bit document keeps 16-bit masks
    r16 = result(depth=16, styles=("a",))
    st = build_stack(r16, DocumentSettings(), masks=np.full((16, 24), 255, np.uint8))
    assert st.items[1].children[0].mask.dtype == np.uint16 and np.all(st.items[1].children[0].mask == 65535)


def test_bad_masks_are_clear_errors():
    r = result(styles=("a",))
    with pytest.raises(ValueError, match="masks must have the photo's size"):
        build_stack(r, DocumentSettings(), masks=np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="unknown style 'zz'"):
        build_stack(r, DocumentSettings(), masks={"zz": np.zeros((16, 24), np.uint8)})
    with pytest.raises(ValueError, match="NaN"):
        build_stack(r, DocumentSettings(), masks=np.full((16, 24), np.nan, np.float32))
    with pytest.raises(ValueError, match="grayscale"):
        build_stack(r, DocumentSettings(), masks=np.zeros((16, 24, 2), np.uint8))


def test_depths_and_alpha():
    r16 = result(depth=16, alpha=True)
    st = build_stack(r16, DocumentSettings())
    assert st.depth == 16
    for item, _ in st.walk():
        if isinstance(item, Layer):
            assert item.pixels.dtype == np.uint16
    assert st.items[0].pixels.shape[2] == 4
    assert np.array_equal(st.items[0].pixels[:, :, 3], r16.content.alpha)
    # an 8-bit photo promoted to a 16-bit document exactly (x257)
    r8 = result(depth=8)
    st = build_stack(r8, DocumentSettings(depth=16))
    assert np.array_equal(st.items[0].pixels, r8.content.rgb.astype(np.uint16) * 257)
    st = build_stack(r16, DocumentSettings(depth=8))
    assert st.items[0].pixels.dtype == np.uint8


def test_style_of_wrong_size_is_refused():
    r = result()
    r.images[0] = StyledImage("x", picture(10, 10), {})
    with pytest.raises(ValueError, match="10x10"):
        build_stack(r, DocumentSettings())


def test_detail_radius_follows_working_size():
    assert default_detail_radius((6000, 4000), (512, 342)) == pytest.approx(0.5 * 6000 / 512)
    assert default_detail_radius((100, 100), (100, 100)) == 1.0
    st = build_stack(result(w=200, h=100, working=(50, 25)), DocumentSettings())
    assert st.items[2].meta["radius"] == pytest.approx(2.0)
    st = build_stack(result(), DocumentSettings(detail_radius=3.5))
    assert st.items[2].meta["radius"] == 3.5


def test_detail_of_flat_photo_is_mid_grey():
    r = result(depth=16)
    r.content.rgb[:] = 20000
    st = build_stack(r, DocumentSettings())
    assert np.all(st.items[2].pixels == 32768)


def _photo_with_edges(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float64)
    img[..., 0] = ((xx // 8 + yy // 8) % 2) * 0.6 + 0.2
    img[..., 1] = 0.3 + 0.4 * (xx > w // 2)
    img[..., 2] = 0.5 + 0.3 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    return img


def test_linear_light_detail_restores_the_photo_over_a_blurry_style():
    """Detail at 100 % in linear light over blur(photo) gives the photo back (16-bit, independent blur)."""
    w, h, sigma = 96, 64, 3.0
    photo_f = _photo_with_edges(w, h)
    photo = Picture(rgb=(photo_f * 65535 + 0.5).astype(np.uint16), name="p")
    # an independent Gaussian (PIL, per channel at 8 bits -> only used as "the style")
    blurred8 = np.asarray(Image.fromarray((photo_f * 255 + 0.5).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(sigma)))
    style = Picture(rgb=blurred8.astype(np.uint16) * 257, name="blurry")
    r = StylizeResult(photo, [StyledImage("blurry", style, {})], Settings(), (w, h))
    st = build_stack(r, DocumentSettings(detail_radius=sigma, detail_opacity=1.0, detail_visible=True,
                                         colors_layer=False, refine_layer=False))
    flat, _ = blend.composite(st)
    err_style = np.abs(style.rgb_float() - photo_f).mean()
    err_flat = np.abs(flat.astype(np.float64) / 65535 - photo_f).mean()
    assert err_style > 0.03
    assert err_flat < err_style / 4, (err_flat, err_style)
    # exact identity of the maths: style = our own blur -> photo back to rounding
    from bridge.document.stack import blur_rows
    own = blur_rows(photo.rgb, 0, h, sigma)
    st.items[1].children[0].pixels = (np.clip(own, 0, 1) * 65535 + 0.5).astype(np.uint16)
    flat, _ = blend.composite(st)
    assert np.abs(flat.astype(np.int64) - photo.rgb.astype(np.int64)).max() <= 3


def test_banded_detail_equals_whole_image_blur():
    from bridge.document.stack import _BAND_ROWS, blur_rows, detail_pixels
    h = _BAND_ROWS * 2 + 37
    img = (RNG.random((h, 20, 3)) * 255).astype(np.uint8)
    whole = blur_rows(img, 0, h, 4.0)
    d = detail_pixels(img, 4.0, "overlay")
    expect = np.clip(img / 255.0 - whole + 0.5, 0, 1) * 255 + 0.5
    assert np.abs(d.astype(np.int64) - expect.astype(np.int64)).max() <= 1


def test_layer_records_match_protocol_shape():
    st = build_stack(result(styles=("a", "b")), DocumentSettings())
    recs = layer_records(st)
    items = [item for item, _ in st.walk()]
    assert len(recs) == len(items) == 7
    assert [r["index"] for r in recs] == list(range(7))
    group = recs[1]
    assert group["kind"] == "group" and group["mode"] == "pass_through" and group["parent"] is None
    assert recs[2]["parent"] == 1 and recs[3]["parent"] == 1 and recs[4]["parent"] is None
    assert {r["meta"]["role"] for r in recs} == {"original", "group", "style", "detail", "colors", "refine"}
    for r in recs:
        assert set(r) >= {"index", "name", "kind", "parent", "mode", "opacity", "visible", "left", "top",
                          "width", "height", "meta"}
        assert (r["width"], r["height"]) == (24, 16)
    assert recs[2]["has_mask"] and not recs[0]["has_mask"]
    import json
    json.dumps(recs)          # plain JSON


def test_layers_and_masks_as_png_keep_depth_alpha_and_metadata():
    """What the daemon serves: each pixel layer and mask through the one PNG writer, read back exactly."""
    st = build_stack(result(depth=16, alpha=True, styles=("a",)), DocumentSettings())
    original = st.items[0]
    back = load_image(encode_array_png(original.pixels, icc_profile=st.icc_profile, dpi=st.dpi))
    assert back.bit_depth == 16 and back.dpi == pytest.approx((300.0, 300.0), abs=0.01)
    assert np.array_equal(back.rgb, original.pixels[:, :, :3]) and np.array_equal(back.alpha, original.pixels[:, :, 3])
    m = st.items[1].children[0].mask
    grey = np.asarray(Image.open(io.BytesIO(encode_array_png(m))))
    assert grey.shape == (16, 24) and np.array_equal(grey.astype(np.uint16), m)
    m8 = normalize_mask(np.eye(4, dtype=bool), 4, 4, np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_array_png(m8)))), m8)


def test_group_type_in_walk():
    st = build_stack(result(), DocumentSettings())
    kinds = [type(i).__name__ for i, _ in st.walk()]
    assert kinds.count("Group") == 1 and isinstance(st.items[1], Group)
