"""The style-strength knob (``Settings.style_strength``): 0 = the photo, 1 = fully painted.

Why a blend and not the loss weights: L-BFGS started from the photo runs to convergence whatever the
content/style weight ratio, and the content loss (relu4_2) does not object to new colours and fine
texture: 1/40 of the style weight already paints fully, 1/1000 hardly at all, with a cliff between whose
place depends on the style and size (bench/README.md, "Style strength"). Stopping at a loss target jumps
most of the way in the first steps. So the optimisation always runs at the full style weight
and the knob decides how much of its result replaces the photo, mixed in CIELAB: Lab is built so that
equal distances look equally different, so equal knob steps are equal steps of colour difference
(CIE76 dE) for every pixel, and colours do not pass through grey as they can in an RGB mix.

Values above 1 keep their old meaning (a multiplier on the style weight, fully painted), so settings
saved before the knob changed still work.
"""

from __future__ import annotations

import dataclasses

import kornia.color
import numpy as np
import torch

from ..imaging import Picture, to_dtype

BAND_PIXELS = 2_000_000   # native-size pixels converted at once (a 24 MP photo stays a few hundred MB)


def amount(strength: float) -> float:
    """How much of the optimised result is shown, 0..1."""
    return min(1.0, max(0.0, float(strength)))


def weight_factor(strength: float) -> float:
    """Multiplier on the style weight: 1 within the knob's range, the old meaning above 1."""
    return max(1.0, float(strength))


def mix_lab(styled: torch.Tensor, photo: torch.Tensor, mix: float) -> torch.Tensor:
    """``photo + mix * (styled - photo)`` in CIELAB for RGB tensors in 0..1 (... x 3 x H x W)."""
    lab_photo = kornia.color.rgb_to_lab(photo)
    return kornia.color.lab_to_rgb(torch.lerp(lab_photo, kornia.color.rgb_to_lab(styled), mix), clip=True)


def _float(rgb: np.ndarray, top: float) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32) / top).permute(2, 0, 1)


def blend_with_photo(styled: Picture, photo: Picture, mix: float, band_pixels: int = BAND_PIXELS) -> Picture:
    """``photo + mix * (styled - photo)`` in CIELAB, at the photo's native size (both pictures the same
    size and depth). ``mix`` 0 returns the photo's pixels exactly, 1 the styled ones; alpha, ICC and DPI
    are the styled picture's (the photo's)."""
    if styled.rgb.shape != photo.rgb.shape or styled.rgb.dtype != photo.rgb.dtype:
        raise ValueError("blend_with_photo: the styled picture and the photo differ in size or depth")
    mix = amount(mix)
    if mix >= 1.0:
        return styled
    if mix <= 0.0:
        return dataclasses.replace(styled, rgb=photo.rgb.copy())
    top = float(photo.max_value)
    out = np.empty_like(photo.rgb)
    height, width = photo.rgb.shape[:2]
    band = max(1, band_pixels // max(1, width))
    with torch.no_grad():
        for y0 in range(0, height, band):
            y1 = min(height, y0 + band)
            rgb = mix_lab(_float(styled.rgb[y0:y1], top), _float(photo.rgb[y0:y1], top), mix)
            out[y0:y1] = to_dtype(rgb.permute(1, 2, 0).numpy(), photo.rgb.dtype)
    return dataclasses.replace(styled, rgb=out)
