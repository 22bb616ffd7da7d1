"""PSD/PSB writing checked by independent readers: tests/psdreaders (psd-tools, ImageMagick, ag-psd; psdcheck.py
when $STYLEBRIDGE_SHARED names it), psd-tools, ImageMagick, GIMP 2.10.

ImageMagick and GIMP come from `.ci/apt.sh`; the tests skip (with the reason) only where they
cannot be installed.  ImageMagick is called by its full path: another `convert` may be on PATH.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage
from psd_tools.composite import composite as psdtools_composite
from psd_tools.constants import BlendMode, Resource

from bridge.document import blend
from bridge.document.model import Group, Layer, LayerStack
from bridge.document.psd import psd_suffix, write_psd
from bridge.document.stack import build_stack
from bridge.engine.types import StyledImage, StylizeResult
from bridge.imaging import Picture
from bridge.settings import DocumentSettings, Settings
from psdreaders import psdcheck, reader_missing

IDENTIFY = "/usr/bin/identify"
CONVERT = "/usr/bin/convert"
GIMP = shutil.which("gimp-console-2.10")
RNG = np.random.default_rng(99)
UNICODE_NAME = "Ünïcødé 星 — style"


# ---------------------------------------------------------------------------------- helpers

def need_imagemagick() -> None:
    if not os.access(IDENTIFY, os.X_OK):
        reader_missing("ImageMagick not installed (run .ci/apt.sh)")


def need_gimp() -> None:
    if GIMP is None:
        reader_missing("GIMP 2.10 (gimp-console-2.10) not installed (run .ci/apt.sh)")


def im_composite(path: Path, w: int, h: int, *extra: str) -> np.ndarray:
    """ImageMagick's reading of the merged image (``file[0]``) as float 0..1, via raw 16-bit RGB."""
    raw = Path(str(path) + ".rgb")
    res = subprocess.run([CONVERT, *extra, f"{path}[0]", "-depth", "16", "-endian", "MSB", f"RGB:{raw}"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return np.frombuffer(raw.read_bytes(), ">u2").reshape(h, w, 3).astype(np.float64) / 65535.0


def picture(w, h, depth=8, alpha=False, name="p", smooth=False) -> Picture:
    dt = np.uint16 if depth == 16 else np.uint8
    top = np.iinfo(dt).max
    if smooth:
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        f = np.dstack([0.5 + 0.4 * np.sin(7 * xx + 3 * RNG.random()), 0.5 + 0.4 * np.cos(5 * yy),
                       0.5 + 0.4 * np.sin(3 * (xx + yy))])
        rgb = (f * top + 0.5).astype(dt)
    else:
        rgb = (RNG.random((h, w, 3)) * top).astype(dt)
    a = (RNG.random((h, w)) * top).astype(dt) if alpha else None
    return Picture(rgb=rgb, alpha=a, name=name)


def make_stack(w=40, h=24, depth=8, styles=("starry", "scream"), alpha=False, icc=None, dpi=None,
               settings=DocumentSettings(), masks=None, smooth=False, run_name=None) -> LayerStack:
    content = picture(w, h, depth, alpha, "photo", smooth)
    content.icc_profile, content.dpi = icc, dpi
    images = [StyledImage(n, picture(w, h, depth, alpha, n, smooth), {"total": 1.0}) for n in styles]
    r = StylizeResult(content, images, Settings(seed=1), (max(1, w // 2), max(1, h // 2)))
    return build_stack(r, settings, masks=masks, run_name=run_name)


def as_float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) / np.iinfo(a.dtype).max


def check_roundtrip(stack: LayerStack, path: Path) -> PSDImage:
    """psd-tools gives back names, kinds, modes, opacities, visibility, masks and pixels exactly."""
    psd = PSDImage.open(path)
    assert (psd.width, psd.height, psd.depth) == (stack.width, stack.height, stack.depth)
    got = list(psd.descendants())
    want = [item for item, _ in stack.walk()]
    assert [g.name for g in got] == [w.name for w in want]
    for g, w in zip(got, want):
        assert g.kind == ("group" if isinstance(w, Group) else "pixel")
        assert g.opacity == round(w.opacity * 255)
        assert g.visible == w.visible
        assert g.blend_mode == {"normal": BlendMode.NORMAL, "linear_light": BlendMode.LINEAR_LIGHT,
                                "color": BlendMode.COLOR, "overlay": BlendMode.OVERLAY,
                                "soft_light": BlendMode.SOFT_LIGHT,
                                "pass_through": BlendMode.PASS_THROUGH}[w.mode]
        assert g.has_mask() == (w.mask is not None)
        if w.mask is not None:
            m = g.numpy("mask")[:, :, 0]
            assert m.shape == w.mask.shape
            assert np.abs(m - as_float(w.mask)).max() < 1e-6
        if isinstance(w, Layer):
            px = g.numpy()
            assert px.shape[:2] == w.pixels.shape[:2]
            if w.pixels.shape[2] == 4:
                assert np.abs(px[:, :, 3] - as_float(w.pixels[:, :, 3])).max() < 1e-6
            assert np.abs(px[:, :, :3] - as_float(w.pixels[:, :, :3])).max() < 1e-6
    return psd


# ---------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("depth", [8, 16])
def test_default_document_roundtrips(tmp_path, depth):
    stack = make_stack(depth=depth, styles=("starry", UNICODE_NAME, "blend"),
                       icc=_srgb_icc(), dpi=(300.0, 240.0))
    path = write_psd(stack, tmp_path / "doc.psd")
    assert path == tmp_path / "doc.psd"
    report = psdcheck(path)
    assert "merged image data" in report
    psd = check_roundtrip(stack, path)
    assert psd.image_resources.get_data(Resource.ICC_PROFILE) == stack.icc_profile
    res = psd.image_resources.get_data(Resource.RESOLUTION_INFO)
    assert (res.horizontal / 65536, res.vertical / 65536) == (300.0, 240.0)
    # stored merged image == our composite
    rgb, _ = blend.composite(stack)
    stored = psd.numpy()
    assert np.abs(stored - as_float(rgb)).max() < 1e-6
    assert list(tmp_path.iterdir()) == [path]        # no temp files left


def _srgb_icc() -> bytes:
    from PIL import ImageCms
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _reference_pixel(stack: LayerStack, y: int, x: int) -> list[float]:
    """Independent scalar composite of one pixel (opaque backdrop), Photoshop's formulas."""
    def f(arr, *idx):
        return float(arr[idx]) / (65535.0 if arr.dtype == np.uint16 else 255.0)

    def lum(c):
        return 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2]

    def clip_color(c):
        l, n, x_ = lum(c), min(c), max(c)
        if n < 0:
            c = [l + (v - l) * l / (l - n) for v in c]
        if x_ > 1:
            c = [l + (v - l) * (1 - l) / (x_ - l) for v in c]
        return c

    def blend_px(mode, b, s):
        if mode == "normal":
            return s
        if mode == "linear_light":
            return [min(1.0, max(0.0, bb + 2 * ss - 1)) for bb, ss in zip(b, s)]
        if mode == "overlay":
            return [2 * bb * ss if bb <= 0.5 else 1 - 2 * (1 - bb) * (1 - ss) for bb, ss in zip(b, s)]
        if mode == "soft_light":
            return [2 * bb * ss + bb * bb * (1 - 2 * ss) if ss <= 0.5
                    else 2 * bb * (1 - ss) + math.sqrt(bb) * (2 * ss - 1) for bb, ss in zip(b, s)]
        if mode == "color":
            d = lum(b) - lum(s)
            return clip_color([v + d for v in s])
        raise AssertionError(mode)

    def apply(layer, c):
        s = [f(layer.pixels, y, x, k) for k in range(3)]
        a = round(layer.opacity * 255) / 255
        if layer.pixels.shape[2] == 4:
            a *= f(layer.pixels, y, x, 3)
        if layer.mask is not None:
            a *= f(layer.mask, y, x)
        out = blend_px(layer.mode, c, s)
        return [(1 - a) * cc + a * oo for cc, oo in zip(c, out)]

    c = [0.0, 0.0, 0.0]
    for item in stack.items:
        if not item.visible:
            continue
        if isinstance(item, Group):
            before = c
            for child in item.children:
                if child.visible:
                    c = apply(child, c)
            g = round(item.opacity * 255) / 255 * (f(item.mask, y, x) if item.mask is not None else 1.0)
            c = [bb + (cc - bb) * g for bb, cc in zip(before, c)]
        else:
            c = apply(item, c)
    return c


def test_composite_matches_independent_reference_and_psdtools(tmp_path):
    """Every mode the stack uses, visible, with partial masks and opacities, plus a group mask."""
    w, h = 20, 12
    stack = make_stack(w, h, depth=16, styles=("n", "o", "s"), smooth=True,
                       settings=DocumentSettings(reveal="all", detail_visible=True, detail_opacity=0.7))
    n, o, s = stack.items[1].children
    o.mode, o.opacity = "overlay", 0.8
    s.mode = "soft_light"
    n.mask = (RNG.random((h, w)) * 65535).astype(np.uint16)
    stack.items[1].mask = np.tile(np.linspace(0, 65535, w).astype(np.uint16), (h, 1))
    colors = stack.items[3]
    colors.visible, colors.opacity = True, 0.6
    colors.mask[:] = 40000
    colors.pixels = picture(w, h, 16, name="c").rgb        # a different hue than the photo
    rgb, alpha = blend.composite(stack)
    assert np.all(alpha == 65535)
    ref = np.array([[_reference_pixel(stack, y, x) for x in range(w)] for y in range(h)])
    assert np.abs(as_float(rgb) - ref).max() < 2e-4
    path = write_psd(stack, tmp_path / "modes.psd")
    psdcheck(path)
    psd = check_roundtrip(stack, path)
    assert np.abs(psd.numpy() - ref).max() < 2e-4
    # psd-tools' own compositor (W3C soft light differs from Photoshop's): compare without soft light
    s.visible = False
    path2 = write_psd(stack, tmp_path / "modes2.psd")
    theirs, _, _ = psdtools_composite(PSDImage.open(path2), color=0.0, alpha=0.0)
    ours, _ = blend.composite(stack)
    assert np.abs(theirs - as_float(ours)).mean() < 2e-3


def test_rgba_photo_and_transparent_composite(tmp_path):
    stack = make_stack(16, 10, alpha=True, settings=DocumentSettings(reveal="none"))
    path = write_psd(stack, tmp_path / "alpha.psd")
    psdcheck(path)
    psd = check_roundtrip(stack, path)
    stored = psd.numpy()
    assert stored.shape[2] == 4
    assert np.abs(stored[:, :, 3] - as_float(stack.items[0].pixels[:, :, 3])).max() < 1e-6


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (257, 5)])
def test_odd_sizes(tmp_path, size):
    stack = make_stack(*size)
    path = write_psd(stack, tmp_path / "odd.psd")
    psdcheck(path)
    check_roundtrip(stack, path)


def test_group_mask_and_unicode_group_name(tmp_path):
    stack = make_stack(30, 20, run_name="Run ★ 1")
    stack.items[1].mask = np.zeros((20, 30), np.uint8)
    stack.items[1].mask[:, 10:] = 255
    stack.items[1].opacity = 0.75
    path = write_psd(stack, tmp_path / "gm.psd")
    psdcheck(path)
    psd = check_roundtrip(stack, path)
    assert list(psd)[1].name == "Run ★ 1"


def test_long_and_odd_names(tmp_path):
    stack = make_stack(10, 6, styles=("é" * 300, 'a\tb"c/d'))
    path = write_psd(stack, tmp_path / "names.psd")
    psdcheck(path)
    names = [layer.name for layer in PSDImage.open(path).descendants()]
    assert names[2] == "é" * 255 and names[3] == 'a\tb"c/d'


def test_psb_over_30000_px(tmp_path):
    stack = make_stack(30001, 4, styles=("a",), smooth=True,
                       settings=DocumentSettings(detail_layer=False, colors_layer=False))
    assert psd_suffix(stack.width, stack.height) == ".psb"
    path = write_psd(stack, tmp_path / "wide.psb")
    report = psdcheck(path)
    assert "PSB" in report
    assert path.read_bytes()[4:6] == b"\x00\x02"          # version 2
    psd = check_roundtrip(stack, path)
    assert psd.version == 2


def test_small_psb_by_suffix_read_by_imagemagick(tmp_path):
    """Debian's ImageMagick policy caps sides at 16K px, so check the PSB layout at a small size."""
    stack = make_stack(50, 30, depth=16, styles=("a", UNICODE_NAME), smooth=True)
    path = write_psd(stack, tmp_path / "small.psb")
    assert "PSB" in psdcheck(path)
    assert check_roundtrip(stack, path).version == 2
    need_imagemagick()
    out = subprocess.run([IDENTIFY, str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "50x30" in out.stdout, out.stderr
    assert len(out.stdout.splitlines()) == 1 + sum(isinstance(i, Layer) for i, _ in stack.walk())
    rgb, _ = blend.composite(stack)
    assert np.abs(im_composite(path, 50, 30) - as_float(rgb)).max() < 1e-4


def test_atomic_write_never_leaves_half_files(tmp_path):
    target = tmp_path / "keep.psd"
    target.write_bytes(b"user data")
    stack = make_stack(8, 8)
    stack.items[0].mode = "no-such-mode"
    with pytest.raises(ValueError, match="no-such-mode"):
        write_psd(stack, target)
    assert target.read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.psd"]
    stack.items[0].mode = "normal"
    write_psd(stack, target)
    psdcheck(target)
    assert oct(target.stat().st_mode & 0o777) != "0o600"


def test_8_bit_mask_in_16_bit_document_is_scaled(tmp_path):
    stack = make_stack(8, 6, depth=16, styles=("a",))
    stack.items[1].children[0].mask = np.full((6, 8), 255, np.uint8)
    psd = PSDImage.open(write_psd(stack, tmp_path / "m.psd"))
    assert np.all(list(psd)[1][0].numpy("mask") == 1.0)


def test_wrong_depth_layer_is_refused(tmp_path):
    stack = make_stack(8, 8)
    stack.items[0].pixels = stack.items[0].pixels.astype(np.uint16)
    with pytest.raises(ValueError, match="8-bit"):
        write_psd(stack, tmp_path / "x.psd")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ ImageMagick and GIMP 2.10

@pytest.mark.parametrize("depth", [8, 16])
def test_imagemagick_reads_layers_and_composite(tmp_path, depth):
    need_imagemagick()
    stack = make_stack(32, 20, depth=depth, styles=("a", UNICODE_NAME), smooth=True)
    path = write_psd(stack, tmp_path / "im.psd")
    out = subprocess.run([IDENTIFY, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pixel_layers = sum(1 for item, _ in stack.walk() if isinstance(item, Layer))
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert len(lines) == pixel_layers + 1                  # composite + every pixel layer (IM ignores groups)
    assert f"{depth}-bit" in lines[0] and "32x20" in lines[0]
    rgb, _ = blend.composite(stack)
    assert np.abs(im_composite(path, 32, 20) - as_float(rgb)).max() < 1e-4


GIMP_SCRIPT = r"""
(define (sb-names ids port depth)
  (for-each (lambda (id)
      (display depth port) (display "\t" port)
      (display (car (gimp-item-get-name id)) port) (display "\t" port)
      (display (car (gimp-layer-get-mode id)) port) (display "\t" port)
      (display (car (gimp-layer-get-opacity id)) port) (display "\t" port)
      (display (car (gimp-item-get-visible id)) port) (display "\t" port)
      (display (if (= -1 (car (gimp-layer-get-mask id))) 0 1) port) (newline port)
      (if (= 1 (car (gimp-item-is-group id)))
          (sb-names (vector->list (cadr (gimp-item-get-children id))) port (+ depth 1))))
    ids))
"""
GIMP_LOAD = r"""
(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE "%(psd)s" "%(psd)s")))
       (port (open-output-file "%(out)s")))
  (display "size\t" port) (display (car (gimp-image-width img)) port) (display "\t" port)
  (display (car (gimp-image-height img)) port) (newline port)
  (sb-names (vector->list (cadr (gimp-image-get-layers img))) port 0)
  (close-output-port port)
  (let ((flat (car (gimp-image-flatten img))))
    (file-png-save-defaults RUN-NONINTERACTIVE img flat "%(png)s" "%(png)s")))
"""


def gimp_read_all(psds: dict[str, Path], tmp_path: Path) -> dict[str, tuple[list[list[str]], np.ndarray]]:
    """Load every PSD in one GIMP 2.10 batch run (batch exits 0 even on failure: results go to files we check):
    by name, its layer rows and its flattened pixels."""
    script = GIMP_SCRIPT + "".join(GIMP_LOAD % {"psd": psd, "out": tmp_path / f"{name}.out",
                                                 "png": tmp_path / f"{name}.png"} for name, psd in psds.items())
    env = dict(os.environ, HOME=str(tmp_path), GIMP2_DIRECTORY=str(tmp_path / "gimp2"))
    res = subprocess.run([GIMP, "-i", "-d", "-f", "-n", "-b", script, "-b", "(gimp-quit 0)"],
                         capture_output=True, text=True, env=env, timeout=180)
    read = {}
    for name in psds:
        out, png = tmp_path / f"{name}.out", tmp_path / f"{name}.png"
        assert out.exists() and png.exists(), f"{name}: " + res.stdout[-2000:] + res.stderr[-2000:]
        read[name] = ([ln.split("\t") for ln in out.read_text(encoding="utf-8").splitlines()],
                      np.asarray(Image.open(png)))
    return read


def _layers_and_masks_stack() -> LayerStack:
    stack = make_stack(36, 22, styles=("starry", UNICODE_NAME), smooth=True, run_name="Run ★")
    stack.items[1].mask = np.full((22, 36), 255, np.uint8)
    stack.items[1].mask[:, :9] = 0                      # group mask
    stack.items[1].children[0].mask[:11] = 128          # partial style mask
    return stack


@pytest.fixture(scope="module")
def gimp_reads(tmp_path_factory) -> dict[str, tuple[LayerStack, list[list[str]], np.ndarray]]:
    """The three documents GIMP 2.10 reads below, written and read in one GIMP start: by name, (stack, rows, flat)."""
    need_gimp()
    folder = tmp_path_factory.mktemp("gimp")
    stacks = {"g": _layers_and_masks_stack(), "g16": make_stack(20, 12, depth=16, styles=("a",), smooth=True),
              "a": make_stack(20, 12, alpha=True, smooth=True)}
    read = gimp_read_all({name: write_psd(stack, folder / f"{name}.psd") for name, stack in stacks.items()}, folder)
    return {name: (stack, *read[name]) for name, stack in stacks.items()}


def test_gimp_opens_layers_masks_and_flattens_to_our_composite(gimp_reads):
    stack, rows, flat = gimp_reads["g"]
    assert rows[0] == ["size", "36", "22"]
    # GIMP lists top to bottom; depth 1 = inside the group
    names = [(int(r[0]), r[1], r[4], r[5]) for r in rows[1:]]
    assert names == [(0, "Refine", "1", "0"), (0, "Original colours", "0", "1"), (0, "Detail", "0", "1"),
                     (0, "Run ★", "1", "1"), (1, UNICODE_NAME, "1", "1"), (1, "starry", "1", "1"),
                     (0, "Original", "1", "0")]
    opac = {r[1]: float(r[3]) for r in rows[1:]}
    assert opac["Detail"] == pytest.approx(DocumentSettings().detail_opacity * 100, abs=0.5)
    rgb, _ = blend.composite(stack)
    assert flat.shape[:2] == (22, 36)
    assert np.abs(flat[:, :, :3].astype(int) - rgb.astype(int)).max() <= 2


def test_gimp_opens_16_bit(gimp_reads):
    stack, rows, flat = gimp_reads["g16"]
    assert [r[1] for r in rows[1:]] == ["Refine", "Original colours", "Detail", "Styles", "a", "Original"]
    rgb, _ = blend.composite(stack)
    assert np.abs(flat[:, :, :3].astype(float) / np.iinfo(flat.dtype).max - as_float(rgb)).max() < 2.5 / 255


def test_gimp_flattens_transparent_photo_like_our_composite_over_white(gimp_reads):
    stack, rows, flat = gimp_reads["a"]
    assert [r[1] for r in rows[1:]][-1] == "Original"
    rgb, a = blend.composite(stack)
    over_white = as_float(rgb) * as_float(a)[..., None] + (1 - as_float(a)[..., None])
    assert np.abs(flat[:, :, :3] / 255.0 - over_white).max() <= 1.5 / 255


def test_isolated_group_composite_agrees_with_psdtools(tmp_path):
    """A group in normal (isolated) mode with a mask and opacity: our composite vs psd-tools' compositor."""
    stack = make_stack(24, 14, styles=("a", "b"), smooth=True,
                       settings=DocumentSettings(reveal="all", detail_layer=False, colors_layer=False))
    group = stack.items[1]
    group.mode, group.opacity = "normal", 0.6
    group.mask = np.tile(np.linspace(0, 255, 24).astype(np.uint8), (14, 1))
    group.children[1].opacity = 0.5
    group.children[1].pixels = np.dstack([group.children[1].pixels,
                                          np.full((14, 24), 128, np.uint8)])   # half transparent
    path = write_psd(stack, tmp_path / "iso.psd")
    psdcheck(path)
    check_roundtrip(stack, path)
    theirs, _, _ = psdtools_composite(PSDImage.open(path), color=0.0, alpha=0.0)
    ours, _ = blend.composite(stack)
    assert np.abs(theirs - as_float(ours)).max() < 2.5 / 255
