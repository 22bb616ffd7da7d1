"""bridge.imaging: 8/16-bit round trips, alpha, grey, EXIF orientation, ICC/DPI, errors, safe writes.

Everything is checked with independent readers where it matters (Pillow for PNG/JPEG metadata,
tifffile for TIFF tags, imagecodecs for 16-bit PNG pixels). Images are tiny and made in tmp_path.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import struct
import tempfile
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageFile, ImageOps

from bridge import imaging
from bridge.imaging import (ImageError, Picture, encode_array_png, encode_png, encode_tiff, load_image, load_mask,
                            png_chunks, save_image, to_dtype)
from bridge.imaging.png import PNG_SIGNATURE
from bridge.outputs import atomic_write, unique_path
from psdreaders import reader_missing

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
H, W = 6, 10   # not square, so a wrong rotation shows


def _rand(depth: int, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if depth == 8 else 65535
    return rng.integers(0, top + 1, shape, dtype=np.uint16 if depth == 16 else np.uint8)


def _picture(depth: int, alpha: bool) -> Picture:
    return Picture(rgb=_rand(depth, (H, W, 3)), alpha=_rand(depth, (H, W), seed=1) if alpha else None,
                   icc_profile=SRGB_ICC, dpi=(300.0, 150.0), name="x")


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("alpha", [False, True])
@pytest.mark.parametrize("ext", ["png", "tif"])
def test_lossless_round_trip_keeps_depth_alpha_icc_dpi(tmp_path, depth, alpha, ext):
    pic = _picture(depth, alpha)
    path = save_image(pic, tmp_path / f"out.{ext}")
    back = load_image(path)
    assert back.rgb.dtype == pic.rgb.dtype and back.bit_depth == depth
    np.testing.assert_array_equal(back.rgb, pic.rgb)
    if alpha:
        np.testing.assert_array_equal(back.alpha, pic.alpha)
    else:
        assert back.alpha is None
    assert back.icc_profile == SRGB_ICC
    assert back.dpi == (300.0, 150.0)
    assert back.name == "out"


def test_16bit_png_is_really_16bit_with_icc_and_dpi_for_other_readers(tmp_path):
    pic = _picture(16, True)
    data = encode_png(pic)
    assert data[24] == 16 and data[25] == 6                       # IHDR: 16 bits, RGBA
    np.testing.assert_array_equal(imagecodecs.png_decode(data), np.dstack([pic.rgb, pic.alpha]))
    with Image.open(io.BytesIO(data)) as im:                       # Pillow checks chunk CRCs
        assert im.info["icc_profile"] == SRGB_ICC
        assert im.info["dpi"] == pytest.approx((300, 150), abs=0.05)
    types = [c for c, *_ in png_chunks(data)]
    assert types.index(b"iCCP") < types.index(b"IDAT") and types.index(b"pHYs") < types.index(b"IDAT")


def test_16bit_tiff_tags_for_other_readers(tmp_path):
    pic = _picture(16, True)
    with tifffile.TiffFile(io.BytesIO(encode_tiff(pic))) as tif:
        page = tif.pages.first
        assert page.dtype == np.uint16 and page.shape == (H, W, 4)
        assert page.tags[34675].value == SRGB_ICC
        assert tuple(int(e) for e in page.extrasamples) == (2,)  # unassociated (straight) alpha
        assert page.tags["XResolution"].value == (300, 1) and int(page.tags["ResolutionUnit"].value) == 2
        np.testing.assert_array_equal(page.asarray(), np.dstack([pic.rgb, pic.alpha]))


@pytest.mark.parametrize("ext", ["jpg", "webp"])
def test_lossy_formats_round_trip_close_with_icc(tmp_path, ext):
    yy, xx = np.mgrid[0:32, 0:48]
    rgb = np.dstack([xx * 5, yy * 7, (xx + yy) * 3]).astype(np.uint8)
    pic = Picture(rgb=rgb, icc_profile=SRGB_ICC, dpi=(72.0, 72.0))
    back = load_image(save_image(pic.to_bit_depth(16), tmp_path / f"a.{ext}"))
    assert back.bit_depth == 8 and back.rgb.shape == rgb.shape
    assert np.abs(back.rgb.astype(int) - rgb).mean() < 3
    assert back.icc_profile == SRGB_ICC
    if ext == "jpg":
        assert back.dpi == (72.0, 72.0)


def test_webp_keeps_alpha(tmp_path):
    pic = _picture(8, True)
    pic.alpha[:] = 0
    pic.alpha[:, 5:] = 255
    back = load_image(save_image(pic, tmp_path / "a.webp"))
    np.testing.assert_array_equal(back.alpha, pic.alpha)


def test_jpeg_flattens_alpha_over_white(tmp_path):
    pic = Picture(rgb=np.zeros((16, 16, 3), np.uint8), alpha=np.zeros((16, 16), np.uint8))
    back = load_image(save_image(pic, tmp_path / "a.jpg"))
    assert back.alpha is None and back.rgb.min() >= 250


def test_bit_depth_conversion_is_exact():
    pic = Picture(rgb=np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2))
    p16 = pic.to_bit_depth(16)
    assert p16.rgb.dtype == np.uint16 and p16.rgb.max() == 65535
    np.testing.assert_array_equal(p16.to_bit_depth(8).rgb, pic.rgb)
    assert to_dtype(np.array([0.0, 0.5, 1.0, 2.0]), np.uint16).tolist() == [0, 32768, 65535, 65535]


# ---------------------------------------------------------------- inputs made by other writers

@pytest.mark.parametrize("depth", [8, 16])
def test_grey_and_grey_alpha_png(tmp_path, depth):
    grey = _rand(depth, (H, W))
    ga = np.dstack([grey, _rand(depth, (H, W), 2)])
    for arr in (grey, ga):
        (tmp_path / "g.png").write_bytes(imagecodecs.png_encode(arr))
        pic = load_image(tmp_path / "g.png")
        assert pic.bit_depth == depth
        np.testing.assert_array_equal(pic.rgb, np.repeat(grey[:, :, None], 3, 2))
        if arr.ndim == 3:
            np.testing.assert_array_equal(pic.alpha, arr[:, :, 1])
        else:
            assert pic.alpha is None


def test_palette_png_with_transparency(tmp_path):
    im = Image.new("P", (4, 3), 1)
    im.putpalette([255, 0, 0, 0, 255, 0])
    im.putpixel((0, 0), 0)
    im.save(tmp_path / "p.png", transparency=0)
    pic = load_image(tmp_path / "p.png")
    assert pic.alpha[0, 0] == 0 and pic.alpha[1, 1] == 255
    assert pic.rgb[1, 1].tolist() == [0, 255, 0]


@pytest.mark.parametrize("compression", ["lzw", "zlib", None])
@pytest.mark.parametrize("planar", ["contig", "separate"])
def test_16bit_rgba_tiff_from_tifffile(tmp_path, compression, planar):
    rgba = _rand(16, (H, W, 4))
    data = rgba if planar == "contig" else np.moveaxis(rgba, -1, 0)
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="rgb", planarconfig=planar,
                     extrasamples=("unassalpha",), compression=compression, predictor=compression is not None)
    pic = load_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(pic.rgb, rgba[:, :, :3])
    np.testing.assert_array_equal(pic.alpha, rgba[:, :, 3])


def test_tiff_grey16_miniswhite_and_premultiplied_alpha(tmp_path):
    grey = _rand(16, (H, W))
    tifffile.imwrite(tmp_path / "g.tif", grey, photometric="minisblack")
    np.testing.assert_array_equal(load_image(tmp_path / "g.tif").rgb[:, :, 1], grey)
    tifffile.imwrite(tmp_path / "w.tif", grey, photometric="miniswhite")
    np.testing.assert_array_equal(load_image(tmp_path / "w.tif").rgb[:, :, 0], 65535 - grey)
    # associated alpha: colour 0.5*alpha -> straight 0.5
    alpha = np.full((H, W), 40000, np.uint16)
    colour = np.full((H, W, 3), 20000, np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", np.dstack([colour, alpha]), photometric="rgb", extrasamples=("assocalpha",))
    pic = load_image(tmp_path / "p.tif")
    assert pic.rgb[0, 0, 0] == round(20000 * 65535 / 40000) and pic.alpha[0, 0] == 40000


def test_pillow_written_8bit_tiff_with_dpi_and_icc(tmp_path):
    rgb = _rand(8, (H, W, 3))
    Image.fromarray(rgb).save(tmp_path / "a.tif", compression="tiff_lzw", dpi=(200, 200), icc_profile=SRGB_ICC)
    pic = load_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(pic.rgb, rgb)
    assert pic.dpi == (200.0, 200.0) and pic.icc_profile == SRGB_ICC


def test_cmyk_jpeg_becomes_srgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)   # pure red ink
    pic = load_image(tmp_path / "c.jpg")
    assert pic.rgb.shape == (8, 8, 3) and pic.bit_depth == 8
    r, g, b = pic.rgb[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60
    assert ImageCms.getProfileName(ImageCms.ImageCmsProfile(io.BytesIO(pic.icc_profile))).strip().startswith("sRGB")


def test_load_from_bytes_and_file_object(tmp_path):
    pic = _picture(16, True)
    data = encode_png(pic)
    a = load_image(data)
    b = load_image(io.BytesIO(data), name="layer")
    np.testing.assert_array_equal(a.rgb, pic.rgb)
    np.testing.assert_array_equal(b.alpha, pic.alpha)
    assert a.name == "upload" and b.name == "layer"
    with open(save_image(pic, tmp_path / "f.tif"), "rb") as fh:
        c = load_image(fh)
    assert c.name == "f" and c.bit_depth == 16


# ---------------------------------------------------------------- EXIF orientation

def _expected(base8: np.ndarray, orientation: int) -> np.ndarray:
    im = Image.fromarray(base8)
    im.getexif()[0x0112] = orientation
    return np.asarray(ImageOps.exif_transpose(im))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg_matches_pillow(tmp_path, orientation):
    base = np.zeros((16, 24, 3), np.uint8)
    base[:8, :8] = (255, 0, 0)
    base[8:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(base).save(tmp_path / "o.jpg", quality=95, exif=exif, dpi=(100, 50))
    with Image.open(tmp_path / "o.jpg") as im:
        reference = np.asarray(ImageOps.exif_transpose(im))
    pic = load_image(tmp_path / "o.jpg")
    np.testing.assert_array_equal(pic.rgb, reference)
    assert pic.dpi == ((50.0, 100.0) if orientation >= 5 else (100.0, 50.0))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_16bit_tiff(tmp_path, orientation):
    base8 = _rand(8, (H, W, 3))
    base16 = base8.astype(np.uint16) * 257
    alpha16 = base16[:, :, 0].copy()
    tifffile.imwrite(tmp_path / "o.tif", np.dstack([base16, alpha16]), photometric="rgb",
                     extrasamples=("unassalpha",), extratags=[(274, "H", 1, orientation, True)])
    pic = load_image(tmp_path / "o.tif")
    assert pic.bit_depth == 16
    expected = _expected(base8, orientation)
    np.testing.assert_array_equal(pic.to_bit_depth(8).rgb, expected)
    np.testing.assert_array_equal(pic.to_bit_depth(8).alpha, expected[:, :, 0])


def test_exif_orientation_16bit_png(tmp_path):
    base8 = _rand(8, (H, W, 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    raw = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    png = imagecodecs.png_encode(base8.astype(np.uint16) * 257)
    first_idat = next(start for c, _, start, _ in png_chunks(png) if c == b"IDAT")
    png = png[:first_idat] + imaging.png_chunk(b"eXIf", raw) + png[first_idat:]
    pic = load_image(png)
    assert (pic.width, pic.height) == (H, W)
    np.testing.assert_array_equal(pic.to_bit_depth(8).rgb, _expected(base8, 6))


# ---------------------------------------------------------------- PNG chunk helper

def test_png_writer_metadata_depths_and_levels():
    """The one PNG writer: iCCP and pHYs once each, right after IHDR; 8/16-bit, grey to RGBA, every level
    decodes to the same pixels (Pillow and imagecodecs agree); adaptive filtering keeps files small."""
    rgb = _rand(8, (H, W, 3))
    out = encode_array_png(rgb, 6, icc_profile=SRGB_ICC, dpi=(600, 600))
    types = [c for c, *_ in png_chunks(out)]
    assert types[:3] == [b"IHDR", b"iCCP", b"pHYs"] and types.count(b"iCCP") == types.count(b"pHYs") == 1
    with Image.open(io.BytesIO(out)) as im:
        im.load()
        assert im.info["dpi"] == pytest.approx((600, 600), abs=0.05) and im.info["icc_profile"] == SRGB_ICC
        np.testing.assert_array_equal(np.asarray(im), rgb)
    grey16 = _rand(16, (H, W))
    for array in (rgb, _rand(16, (H, W, 3)), _rand(16, (H, W, 4)), grey16, _rand(8, (H, W, 2))):
        for level in (None, 0, 1, 2, 6, 9):
            data = b"".join(imaging.iter_png(array, level, band_bytes=97))     # many bands: rows across IDATs
            np.testing.assert_array_equal(imagecodecs.png_decode(data).reshape(array.shape), array)
    smooth = np.tile(np.linspace(0, 255, 300).astype(np.uint8)[None, :, None], (64, 1, 3))   # a gradient
    assert len(encode_array_png(smooth, 6)) < len(encode_array_png(smooth, 1)) / 2    # filtered
    with pytest.raises(ValueError):
        list(png_chunks(out[:-20]))
    with pytest.raises(ValueError, match="cannot encode"):
        encode_array_png(np.zeros((4, 4, 5), np.uint8))


def test_one_depth_conversion():
    """8 -> 16 multiplies by 257, 16 -> 8 rounds to nearest: exact inverses on the 8-bit values."""
    all8 = np.arange(256, dtype=np.uint8)
    assert np.array_equal(imaging.convert_depth(all8, np.uint16), all8.astype(np.uint16) * 257)
    assert np.array_equal(imaging.convert_depth(imaging.convert_depth(all8, np.uint16), np.uint8), all8)
    all16 = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(imaging.convert_depth(all16, np.uint8), np.rint(all16 / 257).astype(np.uint8))
    assert imaging.convert_depth(all8, np.uint8) is all8


# ---------------------------------------------------------------- masks

def test_load_mask_depths_and_sources(tmp_path):
    grey16 = _rand(16, (H, W))
    (tmp_path / "m.png").write_bytes(imagecodecs.png_encode(grey16))
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", (W, H), depth=16), grey16)
    f = load_mask(tmp_path / "m.png", (W, H))
    assert f.dtype == np.float32 and np.allclose(f, grey16 / 65535.0, atol=1e-6)
    m8 = load_mask(tmp_path / "m.png", (W, H), depth=8)
    assert m8.dtype == np.uint8 and np.abs(m8.astype(int) - np.rint(grey16 / 257)).max() <= 1
    # colour -> luminance; white on transparent -> alpha; grey x alpha otherwise
    Image.new("RGB", (W, H), (255, 0, 0)).save(tmp_path / "red.png")
    assert load_mask(tmp_path / "red.png", (W, H), depth=8)[0, 0] == round(0.299 * 255)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[:, :, :3] = 255
    rgba[:, :5, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "sel.png")
    sel = load_mask(tmp_path / "sel.png", (W, H), depth=8)
    assert sel[:, :5].min() == 255 and sel[:, 5:].max() == 0


def test_load_mask_wrong_size(tmp_path):
    Image.new("L", (W, H), 255).save(tmp_path / "m.png")
    with pytest.raises(ImageError, match=f"mask is {W}x{H} but the image is 5x5"):
        load_mask(tmp_path / "m.png", (5, 5))


# ---------------------------------------------------------------- errors

def test_truncated_images_stay_errors():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("kind", ["jpg", "png8", "png16", "tif", "webp"])
def test_truncated_files_raise(tmp_path, kind):
    pic = Picture(rgb=_rand(8, (64, 64, 3)))
    path = tmp_path / "t.bin"
    if kind == "png16":
        data = encode_png(pic.to_bit_depth(16))
    else:
        data = save_image(pic, tmp_path / f"full.{kind.rstrip('8')}").read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


def test_bad_inputs_raise_clear_errors(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "t.png").write_text("hello, not an image")
    cases = [(tmp_path / "missing.png", "no such file"), (tmp_path, "is a folder"),
             (tmp_path / "e.png", "empty"), (tmp_path / "t.png", "not an image"), (b"", "empty")]
    if Path("/dev/null").exists():
        cases.append((Path("/dev/null"), "not a regular file"))
    for source, message in cases:
        with pytest.raises(ImageError, match=message):
            load_image(source)


def _bomb_png(width: int, height: int, depth: int) -> bytes:
    """A PNG whose header claims a huge size; the IDAT holds almost nothing."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    return (PNG_SIGNATURE + imaging.png_chunk(b"IHDR", ihdr)
            + imaging.png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + imaging.png_chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [8, 16])
def test_decompression_bomb_refused_from_header(depth):
    with pytest.raises(ImageError, match="over the limit"):
        load_image(_bomb_png(100_000, 100_000, depth))


def test_max_pixels_applies_to_every_format(tmp_path):
    pic = Picture(rgb=_rand(8, (40, 40, 3)))
    for ext in ("png", "tif", "jpg", "webp"):
        path = save_image(pic, tmp_path / f"a.{ext}")
        with pytest.raises(ImageError, match="1,600 pixels, over the limit of 1,000"):
            load_image(path, max_pixels=1000)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(encode_png(pic.to_bit_depth(16)), max_pixels=1000)


def test_save_errors(tmp_path):
    pic = _picture(8, False)
    with pytest.raises(ImageError, match="unknown image extension"):
        save_image(pic, tmp_path / "a.gif")
    with pytest.raises(ImageError, match="no such folder"):
        save_image(pic, tmp_path / "nope" / "a.png")


# ---------------------------------------------------------------- safe writes

def test_unique_path(tmp_path):
    p = tmp_path / "out.png"
    assert unique_path(p) == p
    p.write_bytes(b"user")
    assert unique_path(p) == tmp_path / "out-2.png"
    (tmp_path / "out-2.png").write_bytes(b"user")
    assert unique_path(p) == tmp_path / "out-3.png"


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"old")
    atomic_write(p, b"new contents")
    assert p.read_bytes() == b"new contents"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.bin"]


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "a.bin"
    p.write_bytes(b"user's file")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write(p, b"x" * 1000)
    with pytest.raises(OSError):
        save_image(_picture(8, False), p.with_suffix(".png"))
    assert p.read_bytes() == b"user's file"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.bin"]


@pytest.mark.skipif(os.name != "posix", reason="folder permissions as POSIX systems have them")
def test_atomic_write_into_read_only_folder():
    """A folder the user may not write to: PermissionError, nothing left in it. Root ignores folder permissions, so
    as root (CI) the write is tried by a forked child that dropped to the unprivileged user 65534 (nobody)."""
    base = Path(tempfile.mkdtemp(prefix="stylebridge-ro-"))     # pytest's tmp_path is root's alone: nobody can't enter
    base.chmod(0o755)
    ro = base / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() != 0:
            with pytest.raises(PermissionError):
                atomic_write(ro / "a.bin", b"data")
        else:
            pid = os.fork()
            if pid == 0:                                             # the child never returns into pytest
                code = 2
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    try:
                        atomic_write(ro / "a.bin", b"data")
                        code = 1                                     # written: the permission was not enforced
                    except PermissionError:
                        code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, "as user 65534, atomic_write did not raise PermissionError"
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base)


def test_non_rgb_icc_is_not_carried_onto_rgb(tmp_path):
    other_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()   # any non-RGB profile
    assert other_icc[16:20] != b"RGB "
    Image.new("L", (4, 4), 128).save(tmp_path / "g.png", icc_profile=other_icc)
    assert load_image(tmp_path / "g.png").icc_profile is None


def test_big_endian_tiff_and_16bit_png_trns(tmp_path):
    rgb = _rand(16, (H, W, 3))
    tifffile.imwrite(tmp_path / "be.tif", rgb, byteorder=">", photometric="rgb")
    pic = load_image(tmp_path / "be.tif")
    assert pic.rgb.dtype == np.uint16
    np.testing.assert_array_equal(pic.rgb, rgb)
    png = imagecodecs.png_encode(rgb)
    first_idat = next(start for c, _, start, _ in png_chunks(png) if c == b"IDAT")
    png = png[:first_idat] + imaging.png_chunk(b"tRNS", struct.pack(">HHH", *rgb[0, 0])) + png[first_idat:]
    pic = load_image(png)
    assert pic.alpha[0, 0] == 0 and pic.alpha.dtype == np.uint16


def test_cmyk_tiff_falls_back_to_pillow(tmp_path):
    cmyk = np.zeros((4, 4, 4), np.uint8)
    cmyk[..., 2] = 255                                       # yellow ink
    tifffile.imwrite(tmp_path / "c.tif", cmyk, photometric="separated", resolution=(300, 300))
    pic = load_image(tmp_path / "c.tif")
    r, g, b = pic.rgb[0, 0].astype(int)
    assert r > 200 and g > 200 and b < 60
    assert pic.dpi == (300.0, 300.0)


def test_palette_tiff(tmp_path):
    cmap = np.zeros((3, 256), np.uint16)
    cmap[0, 1] = 65535                                        # index 1 = red
    cmap[2, 2] = 65535                                        # index 2 = blue
    index = np.zeros((H, W), np.uint8)
    index[:, :3] = 1
    index[:, 7:] = 2
    tifffile.imwrite(tmp_path / "p.tif", index, photometric="palette", colormap=cmap)
    pic = load_image(tmp_path / "p.tif")
    assert pic.rgb[0, 0].tolist() == [255, 0, 0] and pic.rgb[0, 9].tolist() == [0, 0, 255]
    assert pic.rgb[0, 5].tolist() == [0, 0, 0] and pic.bit_depth == 8


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_atomic_write_into_unwritable_place_even_as_root():
    """/proc refuses new files even for root: the error surfaces and nothing is left behind."""
    with pytest.raises(OSError):
        atomic_write(Path("/proc/stylebridge-test.png"), b"data")
    assert not list(Path("/proc").glob(".stylebridge-test*"))


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_imagemagick_reads_16bit_alpha_icc_dpi(tmp_path, ext):
    """An independent reader (ImageMagick on libpng/libtiff) sees what we claim to write."""
    if shutil.which("identify") is None:
        reader_missing("ImageMagick's identify not installed (run .ci/apt.sh)")
    path = save_image(_picture(16, True), tmp_path / f"a.{ext}")
    out = subprocess.run(["identify", "-verbose", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Depth: 16-bit" in out.stdout   # (Type says Palette for a tiny image: it counts colours)
    assert ("tiff:alpha: unassociated" in out.stdout) if ext == "tif" else ("color_type: 6 (RGBA)" in out.stdout)
    assert "Profile-icc: %d bytes" % len(SRGB_ICC) in out.stdout
    assert ("Resolution: 300x150" in out.stdout) if ext == "tif" else ("pHYs: x_res=11811, y_res=5906" in out.stdout)


def test_shipped_samples_are_small_and_load():
    samples = Path(__file__).resolve().parents[1] / "samples"
    names = sorted(p.name for p in samples.glob("*.jpg"))
    assert "photo.jpg" in names and len([n for n in names if n.startswith("style_")]) >= 2
    for name in names:
        assert (samples / name).stat().st_size < 300_000
        pic = load_image(samples / name)
        assert max(pic.width, pic.height) == 512 and pic.bit_depth == 8


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    """mkstemp makes 0600 files; outputs a user opens elsewhere must get 0666 minus the umask."""
    old = os.umask(0o022)
    try:
        target = tmp_path / "out.bin"
        atomic_write(target, b"data")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"data"
    assert (target.stat().st_mode & 0o777) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
