"""Issue 15 (items 2 and 10): hostile image files.

Metadata bombs (a PNG's iCCP that inflates to gigabytes, huge text chunks, fake ICC profiles) are
read within ``Limits.max_metadata_bytes`` and dropped with a MetadataWarning, the pixels kept;
limit messages state the limit that applies and the value; and, property-based, any damage to real
small PNG/JPEG/TIFF/WebP files gives a Picture or an ImageError, never another exception.
All inputs are generated here.
"""

from __future__ import annotations

import io
import resource
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image, ImageCms

from bridge.imaging import (ImageError, MetadataWarning, Picture, encode_png, inflate_bounded, load_image,
                            save_image, valid_icc)
from bridge.settings import LIMITS

ROOT = Path(__file__).resolve().parents[1]
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def zeros_deflated(megabytes: int) -> bytes:
    """A zlib stream of ``megabytes`` MB of zeros, built in milliseconds: 1 MB segments that each
    start from a reset history (full flush) repeat exactly; the Adler-32 of n zeros is (n mod 65521, 1)."""
    block = bytes(1 << 20)
    comp = zlib.compressobj(9)
    head = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    segment = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush(zlib.Z_FINISH)
    adler = ((((megabytes << 20) % 65521) << 16) | 1).to_bytes(4, "big")
    return head + segment * (megabytes - 1) + tail[:-4] + adler


def png(bits: int = 8, *, side: int = 8, extra: bytes = b"", colour_type: int = 2) -> bytes:
    """A small valid PNG (grey ramp) with ``extra`` chunks after IHDR."""
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    dtype = ">u2" if bits == 16 else "u1"
    px = (np.arange(side * side * samples).reshape(side, side * samples) % 200).astype(dtype)
    raw = b"".join(b"\x00" + row.tobytes() for row in px)
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, bits, colour_type, 0, 0, 0)) + extra
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def iccp(profile_stream: bytes) -> bytes:
    return chunk(b"iCCP", b"ICC profile\x00\x00" + profile_stream)


# ------------------------------------------------------------------------------------- item 2

@pytest.mark.parametrize("bits", [8, 16])
def test_icc_bomb_is_dropped_with_a_warning_and_the_pixels_read(bits):
    bomb = png(bits, extra=iccp(zeros_deflated(64)))          # 64 MB of zeros behind a 65 KB chunk
    with pytest.warns(MetadataWarning, match="ICC profile dropped.*over 16,777,216 bytes"):
        pic = load_image(bomb)
    assert pic.icc_profile is None and pic.bit_depth == bits and pic.width == 8


def test_the_cli_says_a_dropped_profile_in_one_plain_line(tmp_path, capsys):
    """Through the real CLI (its main, in-process): the bomb's pixels are stylised, and the dropped profile is one
    'note' line (that the notes survive PYTHONWARNINGS=ignore in a fresh process is tested below)."""
    from bridge.cli import main
    photo = tmp_path / "bomb.png"
    photo.write_bytes(png(16, side=32, extra=iccp(zeros_deflated(64))))
    style = tmp_path / "style.png"
    style.write_bytes(png(8, side=32))
    code = main(["stylize", str(photo), "-s", str(style), "-o", str(tmp_path / "out/"), "--size", "32",
                 "--iterations", "1", "--no-coarse-to-fine", "--quiet"])
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    notes = [line for line in stderr.splitlines() if "ICC profile dropped" in line]
    assert len(notes) == 1 and notes[0].startswith("stylebridge: note: "), stderr
    assert "MetadataWarning" not in stderr and "warnings.warn" not in stderr
    assert (tmp_path / "out" / "bomb_style.png").is_file()


@pytest.mark.parametrize("bits", [8, 16])
def test_a_real_profile_behind_a_bogus_tail_is_cut_to_its_declared_size(bits):
    # a valid sRGB profile followed by junk (how the issue's 210 MB PSD got its "profile")
    stream = zlib.compress(SRGB + bytes(1 << 20), 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataWarning)
        pic = load_image(png(bits, extra=iccp(stream)))
    assert pic.icc_profile == SRGB


@pytest.mark.parametrize("bits", [8, 16])
def test_a_real_profile_is_kept(bits):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataWarning)
        pic = load_image(png(bits, extra=iccp(zlib.compress(SRGB))))
    assert pic.icc_profile == SRGB


@pytest.mark.parametrize("payload, why", [
    (b"RGB " * 200, "not an ICC profile"),
    (SRGB[:36] + b"xxxx" + SRGB[40:], "not an ICC profile"),
    ((len(SRGB) + 10).to_bytes(4, "big") + SRGB[4:], "damaged: it says"),
    (SRGB[:132] + b"\xff" * (len(SRGB) - 132), "damaged"),
])
def test_a_broken_profile_is_dropped(payload, why):
    with pytest.warns(MetadataWarning, match=why):
        pic = load_image(png(16, extra=iccp(zlib.compress(payload))))
    assert pic.icc_profile is None


def test_a_truncated_profile_stream_is_dropped():
    with pytest.warns(MetadataWarning, match="ends early"):
        pic = load_image(png(8, extra=iccp(zlib.compress(SRGB)[:-20])))
    assert pic.icc_profile is None


def test_the_bomb_builder_is_a_real_zlib_stream():
    assert zlib.decompress(zeros_deflated(3)) == bytes(3 << 20)


def test_inflate_bounded_never_holds_more_than_the_cap():
    data, why = inflate_bounded(zeros_deflated(8), cap=1 << 20)
    assert data is None and "over 1,048,576 bytes" in why
    data, why = inflate_bounded(zlib.compress(b"x" * 1000), cap=1000)
    assert data == b"x" * 1000 and why == ""
    assert inflate_bounded(b"not zlib", cap=10)[0] is None


@pytest.mark.parametrize("ctype", [b"zTXt", b"iTXt"])
def test_text_chunk_bombs_are_never_inflated(ctype):
    # Pillow alone refuses these files ("Decompressed data too large"); we never inflate text at all
    stream = zeros_deflated(32)
    payload = b"Comment\x00\x00" + stream if ctype == b"zTXt" else b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + stream
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataWarning)
        pic = load_image(png(8, extra=chunk(ctype, payload) * 3))
    assert pic.width == 8


def test_an_oversized_exif_chunk_is_not_parsed():
    from bridge.imaging.png import _png_metadata
    exif = Image.Exif()
    exif[0x0112] = 6
    data = png(16, side=8, extra=chunk(b"eXIf", exif.tobytes() + bytes(4096)))
    assert _png_metadata(data, "x")[2] == 6                         # within the cap: orientation read
    with pytest.warns(MetadataWarning, match="EXIF dropped.*over the limit of 1,024 bytes"):
        assert _png_metadata(data, "x", cap=1024)[2] == 1


def test_jpeg_and_tiff_profiles_are_checked(tmp_path):
    pic = Picture(rgb=np.full((4, 4, 3), 100, np.uint8), icc_profile=SRGB)
    for ext in (".jpg", ".tif", ".png", ".webp"):
        out = save_image(pic, tmp_path / f"ok{ext}")
        assert load_image(out).icc_profile == SRGB, ext
    fake = b"\x00\x00\x01\x00" + b"junk" * 63                # 256 bytes, no acsp
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "JPEG", icc_profile=fake)
    with pytest.warns(MetadataWarning, match="not an ICC profile"):
        assert load_image(buf.getvalue()).icc_profile is None
    import tifffile
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((4, 4, 3), np.uint8), photometric="rgb", iccprofile=fake)
    with pytest.warns(MetadataWarning, match="not an ICC profile"):
        assert load_image(buf.getvalue()).icc_profile is None


def test_outputs_carry_only_the_checked_profile(tmp_path):
    # the issue's case: the bogus profile used to be copied into every output
    bomb = png(16, extra=iccp(zlib.compress(SRGB + bytes(8 << 20), 9)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetadataWarning)
        pic = load_image(bomb)
    out = Path(save_image(pic, tmp_path / "o.png"))
    assert out.stat().st_size < 10_000
    assert load_image(out).icc_profile == SRGB


def test_icc_cap_is_the_documented_one():
    assert LIMITS.max_metadata_bytes == 16 * 1024 * 1024
    big = SRGB[:0] + (LIMITS.max_metadata_bytes + 1).to_bytes(4, "big") + SRGB[4:] + bytes(LIMITS.max_metadata_bytes)
    with pytest.warns(MetadataWarning, match="over the limit of 16,777,216 bytes"):
        assert valid_icc(big, "x") is None


def test_icc_bomb_memory_stays_small_in_a_real_process(tmp_path):
    """A fresh process loading a 1 MB file whose profile inflates to 1 GB stays far under 1 GB."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png(16, extra=iccp(zeros_deflated(1024))))
    # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into a forked child's
    # ru_maxrss, so under a full pytest run (VGG loaded, ~1.6 GB) the child would report the parent.
    code = ("import warnings; warnings.simplefilter('ignore');"
            "from bridge.imaging import load_image; load_image(__import__('sys').argv[1]);"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    peak_mb = int(res.stdout.split()[-1]) / 1024
    assert peak_mb < 250, f"peak RSS {peak_mb:.0f} MB"       # was 2,085 MB before the cap


# ------------------------------------------------------------------------------------- item 10

def test_huge_header_png_states_our_limit_not_pillows():
    header = png(8)[:33]                                     # signature + IHDR
    data = bytearray(png(8))
    data[16:24] = struct.pack(">II", 30000, 30000)           # 900 MP, over Pillow's 400 MP too
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    assert header[:12] == bytes(data[:12])
    with pytest.raises(ImageError) as err:
        load_image(bytes(data))
    msg = str(err.value)
    assert "30000x30000 is 900,000,000 pixels" in msg and "limit of 200,000,000" in msg
    assert "400,000,000" not in msg and "scale it down" in msg


def test_pillow_guard_message_states_the_limit_and_the_value():
    # a JPEG header of 25000x20000 (500 MP): Pillow's guard speaks first, the message is ours
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 20000, 25000)
    with pytest.raises(ImageError) as err:
        load_image(bytes(data))
    msg = str(err.value)
    assert "500,000,000 pixels" in msg and "limit of 200,000,000" in msg and "scale it down" in msg


def test_a_tiny_png_claiming_many_pixels_is_refused_before_decoding():
    data = bytearray(png(8))
    data[16:24] = struct.pack(">II", 10000, 10000)           # 100 MP, under the limit, 200 bytes of data
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(ImageError, match="too few for its 10000x10000 pixels"):
        load_image(bytes(data))


def test_a_legit_highly_compressed_png_is_not_refused():
    flat = Image.new("RGB", (2000, 1000), (7, 7, 7))          # compresses ~1000:1
    buf = io.BytesIO()
    flat.save(buf, "PNG", compress_level=9)
    assert load_image(buf.getvalue()).width == 2000


# ------------------------------------------------------------------- property-based: damaged files

def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (12, 10, 3), np.uint8)
    pic = Picture(rgb=rgb, alpha=np.full((12, 10), 200, np.uint8), icc_profile=SRGB, dpi=(300.0, 300.0))
    out = {"png8": encode_png(pic), "png16": encode_png(pic.to_bit_depth(16))}
    for fmt, kw in (("JPEG", {"quality": 90, "icc_profile": SRGB}), ("WEBP", {"icc_profile": SRGB}),
                    ("TIFF", {"compression": "tiff_deflate", "icc_profile": SRGB})):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, fmt, **kw)
        out[fmt.lower()] = buf.getvalue()
    import tifffile
    buf = io.BytesIO()
    tifffile.imwrite(buf, pic.to_bit_depth(16).rgb, photometric="rgb", compression="zlib", iccprofile=SRGB)
    out["tiff16"] = buf.getvalue()
    return out


SEEDS = _seed_files()
SMALL_LIMIT = 1_000_000     # the bomb guard at a small limit: any damaged header over it is refused early


def _check(data: bytes) -> None:
    try:
        pic = load_image(data, max_pixels=SMALL_LIMIT)
    except ImageError as exc:
        msg = str(exc)
        assert msg.startswith("upload: ") and "\n" not in msg and len(msg) < 400, msg
        return
    assert isinstance(pic, Picture) and pic.rgb.ndim == 3 and pic.rgb.shape[2] == 3
    assert pic.width * pic.height <= SMALL_LIMIT
    assert pic.icc_profile is None or len(pic.icc_profile) <= LIMITS.max_metadata_bytes


_fuzz = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def rss_guard():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, f"loading damaged files raised the peak RSS by {grown_mb:.0f} MB"


@pytest.mark.filterwarnings("ignore::bridge.imaging.MetadataWarning")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", sorted(SEEDS))
class TestDamagedFiles:
    @_fuzz
    @given(data=st.data())
    def test_truncated(self, rss_guard, kind, data):
        seed = SEEDS[kind]
        _check(seed[:data.draw(st.integers(0, len(seed) - 1))])

    @_fuzz
    @given(data=st.data())
    def test_bit_flips(self, rss_guard, kind, data):
        buf = bytearray(SEEDS[kind])
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(buf) - 1))
            buf[pos] ^= 1 << data.draw(st.integers(0, 7))
        _check(bytes(buf))

    @_fuzz
    @given(data=st.data())
    def test_overwritten_bytes(self, rss_guard, kind, data):
        buf = bytearray(SEEDS[kind])
        pos = data.draw(st.integers(0, len(buf) - 1))
        junk = data.draw(st.binary(min_size=1, max_size=16))
        buf[pos:pos + len(junk)] = junk
        _check(bytes(buf))


@pytest.mark.filterwarnings("ignore::bridge.imaging.MetadataWarning")
@_fuzz
@given(data=st.data())
def test_png_random_chunk_lengths(rss_guard, data):
    """Every chunk length field of a real PNG rewritten to random values (0, small, huge)."""
    seed = bytearray(SEEDS[data.draw(st.sampled_from(["png8", "png16"]))])
    pos, starts = 8, []
    while pos + 12 <= len(seed):
        starts.append(pos)
        pos += 12 + struct.unpack(">I", seed[pos:pos + 4])[0]
    for start in data.draw(st.lists(st.sampled_from(starts), min_size=1, max_size=3)):
        value = data.draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)))
        seed[start:start + 4] = struct.pack(">I", value)
    _check(bytes(seed))


@pytest.mark.filterwarnings("ignore::bridge.imaging.MetadataWarning")
@_fuzz
@given(payload=st.binary(max_size=2048), bits=st.sampled_from([8, 16]), compress=st.booleans())
def test_any_iccp_payload(rss_guard, payload, bits, compress):
    """Whatever an iCCP chunk holds, the image reads and any profile kept is a checked one."""
    stream = zlib.compress(payload) if compress else payload
    pic = load_image(png(bits, extra=iccp(stream)))
    assert pic.icc_profile is None or valid_icc(pic.icc_profile, "again") == pic.icc_profile


# ------------------------------------------------------------------ issue 20, item 7: animations, pages

def _frames(count: int = 4, side: int = 16) -> list[Image.Image]:
    return [Image.new("RGB", (side, side), (17 * i, 200 - 15 * i, 7)) for i in range(count)]   # all different


def _animation(fmt: str, count: int = 4) -> bytes:
    frames = _frames(count)
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
def test_an_animation_warns_once_that_only_its_first_frame_is_used(tmp_path, fmt):
    """Issue 20 item 7: frames after the first were dropped silently; now one IgnoredFramesWarning (a
    MetadataWarning: every front end that shows those shows it) names the file and the frame count."""
    from bridge.imaging import IgnoredFramesWarning
    path = tmp_path / f"anim.{fmt.lower()}"
    path.write_bytes(_animation(fmt, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pic = load_image(path)
    texts = [str(w.message) for w in caught if issubclass(w.category, MetadataWarning)]
    assert texts == [f"{path}: animated {fmt} with 4 frames; only the first frame is used"], texts
    assert issubclass(caught[0].category, IgnoredFramesWarning)
    assert tuple(pic.rgb[0, 0]) == (0, 200, 7)                  # the first frame's pixels


def test_a_16bit_apng_warns_too():
    """16-bit PNGs are decoded by imagecodecs (the default image); an acTL chunk still says 'animated'."""
    body = encode_png(Picture(rgb=np.full((4, 4, 3), 1000, np.uint16)))
    actl = chunk(b"acTL", struct.pack(">II", 3, 0))
    data = body[:33] + actl + body[33:]                          # after the signature and IHDR
    with pytest.warns(MetadataWarning, match=r"^upload: animated PNG with 3 frames; only the first frame is used$"):
        assert load_image(data).bit_depth == 16


def test_a_multi_page_tiff_warns_but_not_for_its_thumbnails(tmp_path):
    import tifffile
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as tif:
        for value in (10, 20, 30):
            tif.write(np.full((8, 8, 3), value, np.uint8), photometric="rgb")
    with pytest.warns(MetadataWarning, match=r"pages\.tif: TIFF with 3 pages; only the first page is used$"):
        assert load_image(pages).rgb[0, 0, 0] == 10
    thumb = tmp_path / "thumb.tif"
    with tifffile.TiffWriter(thumb) as tif:
        tif.write(np.full((8, 8, 3), 10, np.uint8), photometric="rgb")
        tif.write(np.full((4, 4, 3), 10, np.uint8), photometric="rgb", subfiletype=1)   # reduced-resolution copy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(thumb)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "JPEG", "TIFF"])
def test_still_images_do_not_warn(tmp_path, fmt):
    path = tmp_path / f"still.{fmt.lower()}"
    _frames(1)[0].save(path, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(path)


def test_the_cli_says_ignored_frames_in_one_plain_line(tmp_path, capsys):
    """The real CLI (in-process): one 'note' line, before the run stops on another mistake (2 styles, 1 file)."""
    from bridge.cli import main
    photo = tmp_path / "anim.webp"
    photo.write_bytes(_animation("WEBP", 12))
    style = tmp_path / "style.png"
    style.write_bytes(png(8, side=32))
    code = main(["stylize", str(photo), "-s", str(style), "-s", str(style), "-o", str(tmp_path / "one.png")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[0] == f"stylebridge: note: {photo}: animated WEBP with 12 frames; only the first frame is used", err
    assert len([line for line in err if "frames" in line]) == 1 and "Warning" not in "".join(err)


def test_the_cli_says_ignored_frames_even_where_python_warnings_are_silenced(tmp_path):
    """PYTHONWARNINGS=ignore (set by some shells and tools) must not silence the notes meant for the user."""
    import os
    import subprocess
    import sys
    photo = tmp_path / "anim.png"
    photo.write_bytes(_animation("PNG", 3))
    style = tmp_path / "style.png"
    style.write_bytes(png(8, side=32))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "bridge.cli", "stylize", str(photo), "-s", str(style), "-s",
                           str(style), "-o", str(tmp_path / "one.png")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert f"stylebridge: note: {photo}: animated PNG with 3 frames; only the first frame is used" in proc.stderr
