"""Colour conversions and luminance-only transfer ("original colours", neural-style's -original_colors).

Works on torch tensors N x 3 x H x W (or 3 x H x W) in 0..1, using kornia's YUV (BT.601) conversions.
"""

from __future__ import annotations

import kornia.color
import torch


def rgb_to_yuv(rgb: torch.Tensor) -> torch.Tensor:
    return kornia.color.rgb_to_yuv(rgb)


def yuv_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    return kornia.color.yuv_to_rgb(yuv)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Y of YUV (BT.601), keeping a channel dimension of 1."""
    return rgb_to_yuv(rgb)[..., :1, :, :]


def original_colors(styled: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """The styled image's luminance with the photo's chroma (U, V); both 0..1 RGB of the same size."""
    y = luminance(styled)
    uv = rgb_to_yuv(photo)[..., 1:, :, :]
    return yuv_to_rgb(torch.cat([y, uv], dim=-3)).clamp_(0.0, 1.0)
