"""What each stage optimises towards: the photo's content features and each style's Gram matrices.

The photo's content features once per stage, shared by every style (a tiled stage's are computed when the
stage starts, by :mod:`.objective`, and dropped at its end: 768 MB at 24 MP). Each style's Grams once per
stage: the style image at ``style_scale`` x the stage's long side, in blocks when it does not fit the memory
budget whole (a 50 MP scan at native size); a style smaller than the last stage needs gets a
StyleResolutionWarning. The blend's targets are the styles' Grams mixed by ``style_blend_weights``.

Regions (Gatys et al. 2017, docs/regions.md): when a style has a ``region``, the run's "fused" job paints every
region with its own style by guided Gram matrices. Each region's mask goes to the working size once; where
regions overlap (their sum above 1) they are divided by that sum, so no pixel is pulled harder than in a plain
run; each stage takes the masks at its own size, and each style layer at its resolution by average pooling
that follows VGG's poolings (and its mirrored frame): :func:`guidance`. The weights of a position in a region's
Gram are those pooled masks (the guidance channel T is their square root), so a feathered edge shares each
pixel between the styles in proportion to the masks. A style with a ``style_region`` has its targets from
that part of the painting only (guided Grams of the style image, the same way).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..settings import Settings, SettingsError
from . import tiled
from .losses import MIN_MASS, RegionTarget, gram_matrix, guided_gram
from .pixels import picture_tensor, resize
from .plan import MIN_SIDE, StagePlan, fits_whole, stage_dims
from .types import CancelToken, StyleInput, StyleResolutionWarning
from .vgg import VGGFeatures, layer_stride, mirror_mode, mirror_pad

FUSED = "fused"            # the name of the regions' result (contracts.md)

STYLE_FACTOR = 1.0         # a style image's Gram forward (no graph) per pixel, in tiled blocks' units (fits_whole)
STYLE_UPSCALE_WARN = 1.25  # a style upsampled more than this for the last stage gets a StyleResolutionWarning


@dataclass
class RegionStyle:
    """One region of the fused job: its mask at the working size (overlaps normalised) and its style's target
    Grams per stage."""

    name: str
    mask: torch.Tensor                      # 1 x 1 x H x W, 0..1, at the working size (on the CPU)
    grams: list[dict[str, torch.Tensor]]    # per stage: style layer -> target Gram


@dataclass
class StyleJob:
    """One optimisation of the run: a style (or the blend) and its target Grams; the fused job has no plain
    Grams, only ``regions``."""

    name: str
    grams: list[dict[str, torch.Tensor]]   # per stage: style layer -> target Gram
    regions: list[RegionStyle] | None = None


def has_regions(styles: list[StyleInput]) -> bool:
    return any(s.region is not None for s in styles)


def job_names(styles: list[StyleInput], settings: Settings) -> list[str]:
    """The run's results in order: one per style then the blend (without regions, or with
    ``region_style_layers``), then "fused" when any style has a region."""
    plain = [s.name for s in styles] + (["blend"] if settings.style_blend_weights is not None else [])
    if not has_regions(styles):
        return plain
    return (plain if settings.region_style_layers else []) + [FUSED]


def check_regions(content_size: tuple[int, int], styles: list[StyleInput]) -> None:
    """Regions at the photo's size, style regions at the style's, 2-D and finite (SettingsError naming the
    style and what to give otherwise)."""
    for style in styles:
        for option, mask, (w, h), what in (("region", style.region, content_size, "the photo"),
                                           ("style_region", style.style_region,
                                            (style.picture.width, style.picture.height), "the style image")):
            if mask is None:
                continue
            shape = np.shape(mask)
            if len(shape) != 2:
                raise SettingsError(option, f"style {style.name!r}: the mask has shape {shape}; give one grey "
                                    f"channel (H x W) at the size of {what}")
            if shape != (h, w):
                raise SettingsError(option, f"style {style.name!r}: the mask is {shape[1]}x{shape[0]} px, "
                                    f"{what} is {w}x{h} px: give a mask at the size of {what}")
            if not np.isfinite(np.asarray(mask, dtype=np.float32)).all():
                raise SettingsError(option, f"style {style.name!r}: the mask has values that are not numbers; "
                                    "give values 0..1")
            if option == "style_region" and not (np.asarray(mask) > 0).any():
                raise SettingsError(option, f"style {style.name!r}: the style region is empty (all black): paint "
                                    "the part of the style image to use white, or give no style region")


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """1 x 1 x H x W float32 0..1 (values outside clipped)."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None].clamp(0.0, 1.0)


def working_masks(styles: list[StyleInput], dims: tuple[int, int]) -> list[torch.Tensor | None]:
    """Each style's region at the working size ``dims``; where regions overlap (sum above 1) every one is
    divided by the sum, so that each pixel's style weights add up to at most 1 (its coverage)."""
    masks = [None if s.region is None else resize(_mask_tensor(s.region), dims).clamp(0.0, 1.0) for s in styles]
    given = [m for m in masks if m is not None]
    if len(given) > 1:
        total = torch.stack(given).sum(0).clamp_min(1.0)
        masks = [None if m is None else m / total for m in masks]
    return masks


def guidance(vgg: VGGFeatures, mask: torch.Tensor, layers: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
    """A mask (1 x 1 x H x W, the image's size) at each layer's feature grid (H x W of ``vgg(image)[layer]``):
    mirrored as the network mirrors the image, average-pooled at each of its 2x2 poolings, cropped as it crops."""
    height, width = mask.shape[-2:]
    top, bottom, left, right = vgg.frame(height, width)
    m = mask.float()
    if vgg.mirror:
        m = mirror_pad(m, (top, bottom, left, right), mirror_mode(height, width, vgg.mirror))
    out: dict[str, torch.Tensor] = {}
    stride = 1
    for name in sorted(set(layers), key=layer_stride):
        s = layer_stride(name)
        while stride < s:
            m = F.avg_pool2d(m, 2)
            stride *= 2
        rows, cols = vgg.feature_size(name, height, width)
        out[name] = m[0, 0, top // s:top // s + rows, left // s:left // s + cols].contiguous()
    return out


def stage_regions(vgg: VGGFeatures, job: StyleJob, k: int, dims: tuple[int, int], layers: tuple[str, ...],
                  device: torch.device) -> list[RegionTarget] | None:
    """The fused job's regions at stage ``k`` (``dims``): weights per layer from each mask at the stage's size,
    and the targets. None for a plain job."""
    if job.regions is None:
        return None
    out = []
    for region in job.regions:
        weights = guidance(vgg, resize(region.mask, dims).clamp(0.0, 1.0), layers)
        kept = {k2: w.to(device) for k2, w in weights.items() if float(w.sum()) >= MIN_MASS}
        out.append(RegionTarget(kept, {name: region.grams[k][name] for name in kept}))
    return out


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
               device: torch.device, cancel: CancelToken | None, notes: list[str], budget: int,
               working_dims: tuple[int, int] | None = None) -> list[StyleJob] | None:
    """One job per style with its Gram targets per stage, then the blend (Grams mixed by
    style_blend_weights); with regions (``working_dims`` then needed) the fused job last, alone unless
    ``region_style_layers`` (the order of :func:`job_names`). None when cancelled or paused meanwhile (big style
    images take a while). A style smaller than the last stage needs (by more than STYLE_UPSCALE_WARN) adds a
    note to ``notes`` and a StyleResolutionWarning."""
    fused = has_regions(styles)
    singles = not fused or settings.region_style_layers
    per_style: dict[int, list[dict[str, torch.Tensor]]] = {}
    for i, style in enumerate(styles):
        if not singles and style.region is None:    # takes part in no result
            continue
        if cancel is not None and (cancel.cancelled or cancel.paused):
            return None
        per_style[i] = _stage_grams(vgg, picture_tensor(style.picture), settings, ladder, device, budget,
                                    style.style_region)
        text = _resolution_note(style, settings, ladder)
        if text is not None:
            notes.append(text)
            warnings.warn(text, StyleResolutionWarning, stacklevel=4)   # the caller of bridge.engine.stylize
    jobs: list[StyleJob] = []
    if singles:
        jobs = [StyleJob(style.name, per_style[i]) for i, style in enumerate(styles)]
        blend = settings.style_blend_weights
        if blend is not None:
            total = float(sum(blend))
            mixed = [{k: sum((w / total) * per_style[i][stage][k] for i, w in enumerate(blend))
                      for k in settings.style_layers} for stage in range(len(ladder))]
            jobs.append(StyleJob("blend", mixed))
    if fused:
        if working_dims is None:
            raise ValueError("style_jobs: working_dims is needed for regions")
        masks = working_masks(styles, working_dims)
        regions = [RegionStyle(style.name, mask, per_style[i])
                   for i, (style, mask) in enumerate(zip(styles, masks)) if mask is not None]
        jobs.append(StyleJob(FUSED, [{} for _ in ladder], regions))
    return jobs


def _stage_grams(vgg: VGGFeatures, image: torch.Tensor, settings: Settings, ladder: list[int],
                 device: torch.device, budget: int, style_region: np.ndarray | None = None
                 ) -> list[dict[str, torch.Tensor]]:
    """A style image's Grams at each stage (at style_scale x the stage's long side), whole when it fits the
    budget (STYLE_FACTOR), else in blocks (exactly the same Grams); guided by ``style_region`` (the style
    image's size) when given: the Grams of that part of the painting only."""
    grams = []
    layers = tuple(settings.style_layers)
    for side in ladder:
        long_side = max(MIN_SIDE, int(round(side * settings.style_scale)))
        dims = stage_dims(image.shape[-1], image.shape[-2], long_side)
        scaled = (resize(image, dims) * 255.0).to(device)
        weights = None
        if style_region is not None:
            weights = {k: w.to(device) for k, w in
                       guidance(vgg, resize(_mask_tensor(style_region), dims).clamp(0.0, 1.0), layers).items()}
            if any(float(w.sum()) < MIN_MASS for w in weights.values()):
                raise SettingsError("style_region", "the style region is empty (or too small for the style's "
                                    "size): paint more of the style image white, or give no style region")
        if fits_whole(*dims, budget, factor=STYLE_FACTOR):
            if weights is None:
                grams.append(style_grams(vgg, scaled, layers))
            else:
                with torch.no_grad():
                    grams.append({k: guided_gram(v, weights[k]).detach() for k, v in vgg(scaled, layers).items()})
        else:
            before, after = tiled.margins(vgg, layers)
            inner = tiled.inner_side(budget, before, after)
            grams.append(tiled.tiled_grams(vgg, scaled, layers, inner, weights=weights))
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
