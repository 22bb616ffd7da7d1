"""A job's result as the caller gets it: the best image at the photo's native size (guided upsampling, or as it
is at a native-size stage), with the photo's colours if asked, mixed with the photo by ``style_strength``."""

from __future__ import annotations

import dataclasses
import time

import torch

from ..imaging import Picture
from ..settings import Settings
from . import strength, upsample
from .types import StyledImage, StylizeResult


def deliver(best: torch.Tensor, content: Picture, guide: torch.Tensor, settings: Settings, name: str,
            losses: dict[str, float]) -> StyledImage:
    """A job's best image (0..255, last stage or the stage it stopped at) at the photo's native size and
    strength: upsampled by the guided filter, or as it is when the stage was native size."""
    styled = (best.detach().float() / 255.0).clamp(0.0, 1.0).cpu()
    picture = upsample.to_native(styled, content, guide, mode=settings.upsample, radius=settings.guided_radius,
                                 eps=settings.guided_eps, keep_colors=settings.original_colors, name=name)
    picture = strength.blend_with_photo(picture, content, strength.amount(settings.style_strength))
    return StyledImage(name, picture, losses)


def photo_only(content: Picture, names: list[str], settings: Settings, started: float) -> StylizeResult:
    """Strength 0: every result (``names``: targets.job_names) is the photo, exactly (no weights loaded, no
    optimisation)."""
    images = [StyledImage(n, dataclasses.replace(content, rgb=content.rgb.copy(), name=n)) for n in names]
    return StylizeResult(content=content, images=images, settings=settings, working_size=(
        content.width, content.height), seconds=time.perf_counter() - started)
