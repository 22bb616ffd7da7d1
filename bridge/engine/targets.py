"""What each stage optimises towards: the photo's content features and each style's Gram matrices.

The photo's content features once per stage, shared by every style (a tiled stage's are computed when the
stage starts, by :mod:`.objective`, and dropped at its end: 768 MB at 24 MP). Each style's Grams once per
stage: the style image at ``style_scale`` x the stage's long side, in blocks when it does not fit the memory
budget whole (a 50 MP scan at native size); a style smaller than the last stage needs gets a
StyleResolutionWarning. The blend's targets are the styles' Grams mixed by ``style_blend_weights``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..settings import Settings
from . import tiled
from .losses import gram_matrix
from .pixels import picture_tensor, resize
from .plan import MIN_SIDE, StagePlan, fits_whole, stage_dims
from .types import CancelToken, StyleInput, StyleResolutionWarning
from .vgg import VGGFeatures

STYLE_FACTOR = 1.0         # a style image's Gram forward (no graph) per pixel, in tiled blocks' units (fits_whole)
STYLE_UPSCALE_WARN = 1.25  # a style upsampled more than this for the last stage gets a StyleResolutionWarning


@dataclass
class StyleJob:
    """One optimisation of the run: a style (or the blend) and its target Grams."""

    name: str
    grams: list[dict[str, torch.Tensor]]   # per stage: style layer -> target Gram


def content_targets(vgg: VGGFeatures, image255: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Content features of the photo at one stage (computed once, shared by every style)."""
    with torch.no_grad():
        return {k: v.detach() for k, v in vgg(image255, layers).items()}


def style_grams(vgg: VGGFeatures, image255: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Gram matrices of a style image at one stage."""
    with torch.no_grad():
        return {k: gram_matrix(v).detach() for k, v in vgg(image255, layers).items()}


def content_features(vgg: VGGFeatures, guides: list[torch.Tensor], plans: list[StagePlan], settings: Settings,
                     device: torch.device) -> list[dict[str, torch.Tensor] | None]:
    """Per stage, the photo's content features: now for a whole-image stage, None for a tiled one (its
    objective computes them in blocks when the stage starts: :func:`.objective.stage_objective`)."""
    return [content_targets(vgg, (g * 255.0).to(device), settings.content_layers) if p.inner is None else None
            for g, p in zip(guides, plans)]


def style_jobs(vgg: VGGFeatures, styles: list[StyleInput], settings: Settings, ladder: list[int],
               device: torch.device, cancel: CancelToken | None, notes: list[str], budget: int
               ) -> list[StyleJob] | None:
    """One job per style with its Gram targets per stage, then the blend (Grams mixed by
    style_blend_weights). None when cancelled or paused meanwhile (big style images take a while). A style
    smaller than the last stage needs (by more than STYLE_UPSCALE_WARN) adds a note to ``notes`` and a
    StyleResolutionWarning."""
    per_style: list[list[dict[str, torch.Tensor]]] = []
    for style in styles:
        if cancel is not None and (cancel.cancelled or cancel.paused):
            return None
        per_style.append(_stage_grams(vgg, picture_tensor(style.picture), settings, ladder, device, budget))
        text = _resolution_note(style, settings, ladder)
        if text is not None:
            notes.append(text)
            warnings.warn(text, StyleResolutionWarning, stacklevel=4)   # the caller of bridge.engine.stylize
    jobs = [StyleJob(style.name, grams) for style, grams in zip(styles, per_style)]
    blend = settings.style_blend_weights
    if blend is not None:
        total = float(sum(blend))
        mixed = [{k: sum((w / total) * per_style[i][stage][k] for i, w in enumerate(blend))
                  for k in settings.style_layers} for stage in range(len(ladder))]
        jobs.append(StyleJob("blend", mixed))
    return jobs


def _stage_grams(vgg: VGGFeatures, image: torch.Tensor, settings: Settings, ladder: list[int],
                 device: torch.device, budget: int) -> list[dict[str, torch.Tensor]]:
    """A style image's Grams at each stage (at style_scale x the stage's long side), whole when it fits the
    budget (STYLE_FACTOR), else in blocks (exactly the same Grams)."""
    grams = []
    for side in ladder:
        long_side = max(MIN_SIDE, int(round(side * settings.style_scale)))
        dims = stage_dims(image.shape[-1], image.shape[-2], long_side)
        scaled = (resize(image, dims) * 255.0).to(device)
        if fits_whole(*dims, budget, factor=STYLE_FACTOR):
            grams.append(style_grams(vgg, scaled, settings.style_layers))
        else:
            before, after = tiled.margins(vgg, tuple(settings.style_layers))
            inner = tiled.inner_side(budget, before, after)
            grams.append(tiled.tiled_grams(vgg, scaled, tuple(settings.style_layers), inner))
        del scaled
    return grams


def _resolution_note(style: StyleInput, settings: Settings, ladder: list[int]) -> str | None:
    """The note for a style the last stage upsamples by more than STYLE_UPSCALE_WARN, or None."""
    own = max(style.picture.width, style.picture.height)
    needed = max(MIN_SIDE, int(round(ladder[-1] * settings.style_scale)))
    if needed <= STYLE_UPSCALE_WARN * own:
        return None
    return (f"style {style.name!r} is {style.picture.width}x{style.picture.height} px; the last stage uses it "
            f"at {needed} px on its long side (style-scale x {ladder[-1]} px), so it is upsampled "
            f"{needed / own:.1f}x and the painted texture can be no finer than the style image: use a scan "
            f"of at least {needed} px for this size")
