"""Pictures as the engine's tensors, and resizing them (the one bilinear, antialiased resize it uses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..imaging import Picture


def picture_tensor(picture: Picture) -> torch.Tensor:
    """1 x 3 x H x W float32 in 0..1 (alpha ignored: we optimise RGB only)."""
    return torch.from_numpy(picture.rgb_float()).permute(2, 0, 1).unsqueeze(0)


def resize(image: torch.Tensor, dims: tuple[int, int]) -> torch.Tensor:
    """``image`` at ``dims`` (height, width), antialiased when shrinking; as it is when already that size."""
    if tuple(image.shape[-2:]) == tuple(dims):
        return image
    return F.interpolate(image, size=dims, mode="bilinear", align_corners=False, antialias=True)
