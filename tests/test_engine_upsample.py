"""Banded native-size upsampling, the guided filter and the colour helpers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bridge.engine import color, upsample
from bridge.engine.pixels import picture_tensor, resize


@pytest.mark.parametrize("shape,out", [((1, 3, 17, 23), (101, 77)), ((1, 6, 40, 60), (40, 61)),
                                       ((1, 1, 9, 9), (9, 9)), ((1, 3, 30, 20), (13, 11))])
def test_resize_band_equals_full_interpolation(shape, out) -> None:
    x = torch.rand(shape)
    full = F.interpolate(x, size=out, mode="bilinear", align_corners=False)
    for y0, y1 in ((0, out[0]), (0, 1), (out[0] // 3, out[0] // 3 + 5), (out[0] - 2, out[0])):
        torch.testing.assert_close(upsample.resize_band(x, out[0], out[1], y0, y1), full[..., y0:y1, :],
                                   rtol=0, atol=1e-5)


def test_bands_do_not_change_the_result(sample_pictures, shrink) -> None:
    photo = shrink(sample_pictures["shipwreck"], 203)
    guide = resize(picture_tensor(photo), (41, 64))
    styled = guide.flip(1)   # any "stylised" image
    one = upsample.to_native(styled, photo, guide, keep_colors=True, band_pixels=10**9)
    many = upsample.to_native(styled, photo, guide, keep_colors=True, band_pixels=photo.width * 7 + 3)
    assert np.array_equal(one.rgb, many.rgb)


def test_guided_filter_reproduces_a_linear_function_of_the_guide() -> None:
    """If the source is exactly a*guide+b, the guided filter returns it (the model it fits)."""
    guide = torch.rand(1, 1, 32, 32)
    src = torch.cat([0.5 * guide + 0.2, -0.3 * guide + 0.9], dim=1)
    a, b = upsample.guided_coefficients(guide, src, 2, 1e-8)
    torch.testing.assert_close(a * guide + b, src, rtol=0, atol=1e-3)


def test_same_size_is_passed_through(photo) -> None:
    styled = picture_tensor(photo).flip(1)
    out = upsample.to_native(styled, photo, picture_tensor(photo))
    assert np.array_equal(out.rgb, photo.rgb[:, :, ::-1])


def test_unknown_mode(photo) -> None:
    with pytest.raises(ValueError):
        upsample.to_native(picture_tensor(photo), photo, picture_tensor(photo), mode="nearest")


def test_original_colors_swaps_luminance_only() -> None:
    styled, photo = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8) * 0.5 + 0.25
    mixed = color.original_colors(styled, photo)
    yuv_s, yuv_p = color.rgb_to_yuv(styled), color.rgb_to_yuv(photo)
    expected = color.yuv_to_rgb(torch.cat([yuv_s[:, :1], yuv_p[:, 1:]], 1)).clamp(0, 1)
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(color.yuv_to_rgb(yuv_p), photo, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_24_megapixels_three_styles_memory() -> None:
    """6000 x 4000, three outputs: peak RSS of the whole process stays well under 6 GB."""
    code = textwrap.dedent("""
        import numpy as np, torch
        from bridge.imaging import Picture
        from bridge.engine import upsample
        from bridge.engine.pixels import picture_tensor, resize
        rng = np.random.default_rng(0)
        small = rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)
        photo = Picture(rgb=np.kron(small, np.ones((10, 10, 1), np.uint8)), name="big")
        guide = resize(picture_tensor(photo), (341, 512))
        outs = [upsample.to_native(guide.roll(i, 1), photo, guide, keep_colors=i == 1) for i in range(3)]
        assert all(o.rgb.shape == (4000, 6000, 3) for o in outs)
        print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])   # kB, this process only
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    peak_kb = int(out.stdout.strip().splitlines()[-1])
    assert peak_kb < 3 * 1024 * 1024, peak_kb
