"""The optimisation loop: features once, then one coarse-to-fine Gatys optimisation per style (and blend).

Shape of a run (``stylize``):

1. working size = ``settings.size`` clamped to the photo's long side (never optimise above native
   resolution), or the photo's own long side for ``size`` "native"; the coarse-to-fine ladder is
   ``settings.ladder`` for that size (doubling above ``base_size``, with ``large_iterations`` there).
2. per stage, a plan (:func:`.plan.plan_run`, once per run): the whole image by autograd when it fits the memory budget
   (``tiled.budget_bytes``: ``block_memory``, or a share of free memory), else the exact tiled objective
   (``tiled.TiledObjective``: same loss and gradient, in blocks), with an L-BFGS history sized from the
   same budget. The photo's content features once per stage (shared by every style; a tiled stage's are
   recomputed per style rather than kept: 768 MB at 24 MP), each style's Gram
   matrices once (style image at ``style_scale`` x the stage size, in blocks when it is large; a style
   smaller than needed gets a StyleResolutionWarning); the blend's targets are the Grams mixed by
   ``style_blend_weights``.
3. per style (then the blend): L-BFGS or Adam at each stage, warm-started from the previous stage's best
   image upsampled; progress every iteration and, at a tiled stage, every block of its evaluation
   (``Progress.block``: percent and ETA count the iteration in flight in part); cancel/pause checked every
   iteration (and every block).
   With a checkpoint (checkpoint.py): resumed from a matching saved state, saved at stage ends, every
   ``interval_s`` and on pause (the result is then ``paused`` with no images). Mid-stage saves hold the
   optimiser's state (its iterate and L-BFGS history) while it is below RESUME_STATE_BYTES, so a resumed run
   goes on exactly as the uninterrupted one; above that only the best image (the optimiser restarts).
4. the best image of the last stage goes to the photo's native size (``upsample.to_native``; at native
   size as it is), with the photo's chroma if ``original_colors``, then is mixed with the photo by
   ``style_strength`` (``strength``: 0 = the photo, returned without optimising; 1 = the result as it is).
   Cancel keeps the best image of the stage reached (a call cancelled before it starts: those its checkpoint
   holds, without optimising).

Progress carries a stage-weighted percent and an ETA from the measured speed (``eta.RunEstimator``; tiled
stages weighted by TILED_COST).

Pixels are optimised as RGB in 0..255 (neural-style's scale); the VGG wrapper applies its own
preprocessing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..imaging import Picture, load_image
from ..settings import Settings, SettingsError
from . import strength, tiled, upsample
from .checkpoint import DEFAULT_INTERVAL_S, RESUME_STATE_BYTES, Checkpoint, EngineState, FileCheckpoint, fingerprint
from .device import resolve_device
from .eta import RunEstimator, cost_model
from .plan import MIN_SIDE, StagePlan, fits_whole, ladder_dims, plan_run, stage_dims
from .losses import ContentLoss, StyleLoss, TVLoss, gram_matrix
from .types import (CancelToken, Progress, ProgressCallback, StyledImage, StyleInput, StyleResolutionWarning,
                    StylizeResult)
from .vgg import VGGFeatures, load_vgg

log = logging.getLogger(__name__)

PREVIEW_SIDE = 256         # long side of preview images sent with progress
# Largest pixel change (of 0..255) of each stage's first L-BFGS step. torch's own first step is
# 1/|gradient|_1 (~1e-10 here): it changes nothing, and the curvature guessed from it often sends the
# second step to a loss 10-200x higher that takes 5-25 iterations to undo. 16-32 halve the final-stage
# iterations to reach pastiche's loss (bench/README.md); 1-2 are too small to fix the guess.
LBFGS_FIRST_STEP = 32.0
# The first step after resuming mid-stage from the best image alone (the checkpoint has no L-BFGS history:
# above RESUME_STATE_BYTES, or an older file): 32 px from a half-converged image costs more than it gains;
# 2-8 end ~7% above the uninterrupted run's loss 7 iterations later on the tests' 96 px case, 32 px 29%.
LBFGS_RESUME_STEP = 8.0
# Large stages (bench/README.md, issue 12 "print resolution"; the stage rules are in plan.py):
STYLE_FACTOR = 1.0         # a style image's Gram forward (no graph) per pixel, in tiled blocks' units (fits_whole)
STYLE_UPSCALE_WARN = 1.25  # a style upsampled more than this for the last stage gets a StyleResolutionWarning


class _Cancelled(Exception):
    """Raised inside the loss closure to leave the optimiser at once."""


class _Paused(Exception):
    """Raised inside the loss closure to leave the optimiser at once and save a checkpoint."""


@dataclass
class _Job:
    name: str
    grams: list[dict[str, torch.Tensor]]   # per stage: style layer -> target Gram


@dataclass
class _Counter:
    done: int
    total: int


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
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None, *,
            checkpoint: Checkpoint | None = None) -> StylizeResult:
    """Stylise ``content`` once per style (plus a blend if ``style_blend_weights``); see the module doc.

    With ``checkpoint`` the run resumes from a matching saved state and saves its own (see checkpoint.py);
    ``cancel.pause()`` then stops it with ``paused=True`` and no images; a ``cancel`` already cancelled returns
    the saved state's images (finished styles, then the best so far of the style reached) at once."""
    started = time.perf_counter()            # (a Settings is valid once it exists: bridge.settings)
    if not styles:
        raise SettingsError("style", "at least one style image is needed")
    blend = settings.style_blend_weights
    if blend is not None and len(blend) != len(styles):
        raise SettingsError("style_blend_weights", f"{len(blend)} weights given for {len(styles)} styles")
    state, print_ = None, None
    if checkpoint is not None:
        print_ = fingerprint(content, styles, settings)
        if isinstance(checkpoint, FileCheckpoint):
            checkpoint.fingerprint = print_
        state = checkpoint.load()
        if state is not None and (state.fingerprint != print_ or
                                  (settings.seed is not None and state.seed != settings.seed)):
            state = None
    if state is not None:
        seed = state.seed
    else:
        seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31 - 1)
    settings = dataclasses.replace(settings, seed=seed)
    if strength.amount(settings.style_strength) == 0.0:     # the photo itself: nothing to optimise
        return _photo_only(content, styles, settings, started)
    device = resolve_device(settings.device)
    ladder, dims, iters = ladder_dims(settings, content.width, content.height)
    # The photo as each stage sees it (0..1): native -> working size once, then down from there
    # (resampling a 24 MP photo costs seconds; doing it once per stage would cost that many times more).
    working = resize(picture_tensor(content), dims[-1])
    guides = [resize(working, d) for d in dims[:-1]] + [working]
    names = [s.name for s in styles] + (["blend"] if blend is not None else [])
    working_size = (dims[-1][1], dims[-1][0])
    if state is not None and not _state_fits(state, dims, iters, len(names)):
        state = None
    resumed = state is not None
    elapsed0 = state.elapsed_s if state is not None else 0.0
    notes: list[str] = []

    def result(images: list[StyledImage], **flags: bool) -> StylizeResult:
        return StylizeResult(content=content, images=images, settings=settings, working_size=working_size,
                             seconds=elapsed0 + time.perf_counter() - started, resumed=resumed,
                             warnings=list(notes), **flags)

    if state is not None and cancel is not None and cancel.cancelled:   # cancelled before it started: the
        return result(_saved_images(state, content, guides, settings, names), cancelled=True)   # best so far

    vgg = load_vgg(settings.weights, settings.pooling, device)
    run = plan_run(settings, content.width, content.height, device, vgg)   # the budget, sampled once
    plans = list(run.stages)
    # whole stages: the photo's content features now; tiled ones: when first needed (tiled_features)
    content_feats: list[dict[str, torch.Tensor] | None] = [
        content_targets(vgg, (g * 255.0).to(device), settings.content_layers) if p.inner is None else None
        for g, p in zip(guides, plans)]
    jobs = _style_jobs(vgg, styles, settings, ladder, device, cancel, notes, run.budget)
    if jobs is None and state is not None and cancel is not None and cancel.cancelled:
        return result(_saved_images(state, content, guides, settings, names), cancelled=True)
    if jobs is None:
        return result([], paused=True) if cancel is not None and cancel.paused else result([], cancelled=True)

    per_job = sum(iters)
    counter = _Counter(0, per_job * len(jobs))
    estimator = RunEstimator([p.cost_pixels for p in plans], iters, len(jobs), cost_model(device.type))
    init_file = _init_file(settings)
    images: list[StyledImage] = []
    finished: list[np.ndarray] = []
    first_job = 0
    if state is not None:
        finished = list(state.finished)
        for j, image in enumerate(finished):
            images.append(_deliver(torch.from_numpy(image)[None], content, guides[-1], settings, jobs[j].name, {}))
        first_job = state.style_index
        counter.done = first_job * per_job + sum(iters[:state.stage]) + state.iteration
    saver = _Saver(checkpoint, print_, seed, elapsed0, started, finished)
    cancelled = paused = False
    for job_index in range(first_job, len(jobs)):
        job = jobs[job_index]
        k0, i0, resume_here = 0, 0, state is not None and job_index == state.style_index
        restore: _Restore | None = None
        if resume_here:
            k0, i0 = state.stage, state.iteration
            x = torch.from_numpy(state.image)[None].to(device)
            if 0 < i0 < iters[k0]:
                restore = _restore_of(state, x, plans[k0].history, device)
                log.info("resuming %s at stage %d iteration %d %s", job.name, k0 + 1, i0,
                         "with the optimiser's state (exact continuation)" if restore is not None else
                         "from the best image with a fresh optimiser (the checkpoint holds no optimiser state)")
            state.image = np.empty((3, 0, 0), np.float32)    # x may be that very array: not two references
            state.current, state.optimizer = None, None
        else:
            x = _initial(settings, guides[0], init_file, seed, device)
        best, losses, stage_used = x, {}, k0
        for k in range(k0, len(dims)):
            plan = plans[k]
            start = i0 if k == k0 else 0
            if k > k0:
                x = F.interpolate(best, size=plan.dims, mode="bilinear", align_corners=False)
                del best
            stage_used = k
            if resume_here and k == k0 and start >= iters[k]:   # the checkpoint was saved at this stage's end
                best = x
                continue
            reporter = _Reporter(progress, cancel, counter, settings, stage=k, stages=len(dims), size=ladder[k],
                                 job=job_index, jobs=len(jobs), name=job.name, estimator=estimator,
                                 guide=guides[k], resumed=resumed)
            objective = _objective(vgg, guides[k], content_feats, k, job.grams[k], settings, plan, device, reporter)
            estimator.start_stage(job_index, k, done=start)
            saver.position(job_index, k)
            if restore is not None and k == k0:
                x = restore.current
            best, parts, stop = _optimise(x, objective, settings, iters[k], reporter, start=start,
                                          history=plan.history, saver=saver,
                                          restore=restore if k == k0 else None)
            restore = None
            del x, objective
            if plan.inner is not None:
                content_feats[k] = None   # a tiled stage's targets (768 MB at 24 MP): recomputed per style instead
            estimator.end_stage()
            losses = parts or losses
            if stop == "pause":          # (_optimise saved the checkpoint, with the optimiser's state)
                paused = True
                break
            if stop == "cancel":
                cancelled = True
                break
            saver.save(iters[k], best)
        if paused:
            break
        if not cancelled and checkpoint is not None:     # (at 24 MP each is 288 MB: only kept to be saved)
            finished.append(best[0].detach().float().cpu().numpy())
        images.append(_deliver(best, content, guides[stage_used], settings, job.name, losses))
        if cancelled:
            break
    if paused:
        return result([], paused=True)
    return result(images, cancelled=cancelled)


def _saved_images(state: EngineState, content: Picture, guides: list[torch.Tensor], settings: Settings,
                 names: list[str]) -> list[StyledImage]:
    """What a run cancelled before it went on from ``state`` gives, as a cancel during the run would: the
    finished jobs' images, then the best image of the job it had reached (at the stage it had reached)."""
    images = [_deliver(torch.from_numpy(image)[None], content, guides[-1], settings, names[j], {})
              for j, image in enumerate(state.finished)]
    if state.style_index < len(names):
        images.append(_deliver(torch.from_numpy(state.image)[None], content, guides[state.stage], settings,
                               names[state.style_index], dict(state.losses)))
    return images


def _state_fits(state: EngineState, dims: list[tuple[int, int]], iters: list[int], jobs: int) -> bool:
    """A matching fingerprint should mean a matching state; this also refuses one from another version."""
    if not (0 <= state.style_index < jobs and 0 <= state.stage < len(dims) and len(state.finished) == state.style_index
            and 0 <= state.iteration <= iters[state.stage]):
        return False
    return (tuple(state.image.shape) == (3, *dims[state.stage])
            and all(tuple(f.shape) == (3, *dims[-1]) for f in state.finished))


def _deliver(best: torch.Tensor, content: Picture, guide: torch.Tensor, settings: Settings, name: str,
             losses: dict[str, float]) -> StyledImage:
    """A job's best image (0..255, last stage or the stage it stopped at) at the photo's native size and
    strength: upsampled by the guided filter, or as it is when the stage was native size."""
    styled = (best.detach().float() / 255.0).clamp(0.0, 1.0).cpu()
    picture = upsample.to_native(styled, content, guide, mode=settings.upsample, radius=settings.guided_radius,
                                 eps=settings.guided_eps, keep_colors=settings.original_colors, name=name)
    picture = strength.blend_with_photo(picture, content, strength.amount(settings.style_strength))
    return StyledImage(name, picture, losses)


class _Saver:
    """Saves EngineStates to the checkpoint (if any): at stage ends, on pause, and every interval_s."""

    def __init__(self, checkpoint: Checkpoint | None, print_: str | None, seed: int, elapsed0: float,
                 started: float, finished: list[np.ndarray]) -> None:
        self.checkpoint, self.print_, self.seed = checkpoint, print_, seed
        self.elapsed0, self.started, self.finished = elapsed0, started, finished
        self.interval = float(getattr(checkpoint, "interval_s", DEFAULT_INTERVAL_S))
        self.last = time.perf_counter()
        self.job = self.stage = 0
        self.told = False    # the log line on this stage's optimiser state (kept or too large) was written

    def position(self, job: int, stage: int) -> None:
        self.job, self.stage, self.told = job, stage, False

    def due(self) -> bool:
        return self.checkpoint is not None and time.perf_counter() - self.last >= self.interval

    def save(self, iteration: int, best: torch.Tensor, *, best_loss: float | None = None,
             losses: dict[str, float] | None = None, current: torch.Tensor | None = None,
             optimizer: torch.optim.Optimizer | None = None) -> None:
        """Save where the run is; mid-stage (``current`` and ``optimizer`` given) with the optimiser's state
        when it is below RESUME_STATE_BYTES (else the best image only, as said once per stage in the log)."""
        if self.checkpoint is None:
            return
        arrays = None
        if current is not None and optimizer is not None and optimizer.state.get(current):
            size = _tensor_bytes(current) + sum(_tensor_bytes(v) for v in optimizer.state[current].values())
            if not self.told:
                self.told = True
                log.info("checkpoint of stage %d: the optimiser's state is %.0f MB, %s", self.stage + 1,
                         size / (1 << 20), "saved with it (a resume continues exactly)" if size <= RESUME_STATE_BYTES
                         else f"above {RESUME_STATE_BYTES >> 20} MB (RESUME_STATE_BYTES): the best image only (a "
                              "resume restarts the optimiser)")
            if size <= RESUME_STATE_BYTES:      # (measured before any copy: on a GPU each is one)
                arrays = _optimizer_state(optimizer, current)
        self.checkpoint.save(EngineState(
            fingerprint=self.print_ or "", style_index=self.job, stage=self.stage, iteration=iteration,
            image=best[0].detach().float().cpu().numpy(), finished=list(self.finished), seed=self.seed,
            elapsed_s=self.elapsed0 + time.perf_counter() - self.started,
            current=None if arrays is None or current is None else current[0].detach().float().cpu().numpy(),
            best_loss=best_loss if best_loss is not None and math.isfinite(best_loss) else None,
            losses=dict(losses or {}), optimizer=arrays))
        self.last = time.perf_counter()


def _tensor_bytes(value: object) -> int:
    """Bytes of a tensor, or of the tensors in a list (0 for numbers)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list):
        return sum(_tensor_bytes(v) for v in value)
    return 0


# torch.optim state entries not saved: L-BFGS's two-loop scratch list (rebuilt by step(), written before read)
_OPTIMIZER_SCRATCH = frozenset({"al"})
# 0-d tensors torch.optim keeps on the CPU whatever the parameter's device (Adam's step count, not capturable)
_CPU_SCALARS = frozenset({"step"})


def _optimizer_state(optimizer: torch.optim.Optimizer, x: torch.Tensor
                     ) -> dict[str, np.ndarray | list[np.ndarray] | int | float] | None:
    """The optimiser's state for ``x`` as arrays (sharing memory on a CPU: no copies), or None when it has
    none yet (before its first step) or holds something that cannot be saved."""
    state = optimizer.state.get(x)
    if not state:
        return None
    out: dict[str, np.ndarray | list[np.ndarray] | int | float] = {}
    for name, value in state.items():
        if name in _OPTIMIZER_SCRATCH or value is None:
            continue
        if isinstance(value, torch.Tensor):
            out[name] = value.detach().cpu().numpy()
        elif isinstance(value, list) and all(isinstance(v, torch.Tensor) for v in value):
            out[name] = [v.detach().cpu().numpy() for v in value]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
        else:
            return None
    return out


@dataclass
class _Restore:
    """What a checkpoint with the optimiser's state gives back: its iterate, best image and optimiser."""

    current: torch.Tensor        # 1 x 3 x H x W, 0..255
    best: torch.Tensor
    best_loss: float
    losses: dict[str, float]
    optimizer: dict[str, object]  # torch.optim state for the parameter (tensors on their devices)


def _restore_of(state: EngineState, best: torch.Tensor, history: int, device: torch.device) -> _Restore | None:
    """The optimiser's state saved in ``state`` for exact continuation, or None (none saved, or it does not
    fit this stage: then the run resumes from the best image). L-BFGS pairs beyond ``history`` (the memory
    budget may have changed) are dropped, oldest first."""
    if state.current is None or state.optimizer is None or state.best_loss is None:
        return None
    if tuple(state.current.shape) != tuple(best.shape[1:]):
        return None
    numel = best.numel()
    restored: dict[str, object] = {}
    for name, value in state.optimizer.items():
        if isinstance(value, list):
            items = [np.asarray(v) for v in value][-history:] if history > 0 else []
            if any(v.ndim and v.size != numel for v in items):
                return None
            restored[name] = [torch.from_numpy(v).to(device) for v in items]
        elif isinstance(value, np.ndarray):
            if value.ndim and value.size != numel:
                return None
            tensor = torch.from_numpy(value)
            restored[name] = tensor if value.ndim == 0 and name in _CPU_SCALARS else tensor.to(device)
        else:
            restored[name] = value
    return _Restore(torch.from_numpy(state.current)[None].to(device), best, float(state.best_loss),
                    dict(state.losses), restored)


def _photo_only(content: Picture, styles: list[StyleInput], settings: Settings, started: float) -> StylizeResult:
    """Strength 0: every result is the photo, exactly (no weights loaded, no optimisation)."""
    names = [s.name for s in styles] + (["blend"] if settings.style_blend_weights is not None else [])
    images = [StyledImage(n, dataclasses.replace(content, rgb=content.rgb.copy(), name=n)) for n in names]
    return StylizeResult(content=content, images=images, settings=settings, working_size=(
        content.width, content.height), seconds=time.perf_counter() - started)


def _style_jobs(vgg: VGGFeatures, styles: list[StyleInput], settings: Settings, ladder: list[int],
                device: torch.device, cancel: CancelToken | None, notes: list[str], budget: int) -> list[_Job] | None:
    """One job per style with its Gram targets per stage (style image at style_scale x the stage's long
    side; in blocks when it does not fit the memory budget whole, e.g. a 50 MP scan at native size), then
    the blend (Grams mixed by style_blend_weights). None when cancelled or paused meanwhile. A style
    smaller than the last stage needs it (by more than STYLE_UPSCALE_WARN) adds a note to ``notes`` and
    a StyleResolutionWarning."""
    per_style: list[list[dict[str, torch.Tensor]]] = []
    for style in styles:
        if cancel is not None and (cancel.cancelled or cancel.paused):   # big style images take a while
            return None
        image = picture_tensor(style.picture)
        grams = []
        for s in ladder:
            long_side = max(MIN_SIDE, int(round(s * settings.style_scale)))
            dims = stage_dims(image.shape[-1], image.shape[-2], long_side)
            scaled = (resize(image, dims) * 255.0).to(device)
            if fits_whole(*dims, budget, factor=STYLE_FACTOR):
                grams.append(style_grams(vgg, scaled, settings.style_layers))
            else:
                before, after = tiled.margins(vgg, tuple(settings.style_layers))
                inner = tiled.inner_side(budget, before, after)
                grams.append(tiled.tiled_grams(vgg, scaled, tuple(settings.style_layers), inner))
            del scaled
        del image
        own = max(style.picture.width, style.picture.height)
        needed = max(MIN_SIDE, int(round(ladder[-1] * settings.style_scale)))
        if needed > STYLE_UPSCALE_WARN * own:
            text = (f"style {style.name!r} is {style.picture.width}x{style.picture.height} px; the last stage uses it "
                    f"at {needed} px on its long side (style-scale x {ladder[-1]} px), so it is upsampled "
                    f"{needed / own:.1f}x and the painted texture can be no finer than the style image: use a scan "
                    f"of at least {needed} px for this size")
            notes.append(text)
            warnings.warn(text, StyleResolutionWarning, stacklevel=4)   # the caller of bridge.engine.stylize
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
    or _Paused when asked to stop."""

    def __init__(self, callback: ProgressCallback | None, cancel: CancelToken | None, counter: _Counter,
                 settings: Settings, *, stage: int, stages: int, size: int, job: int, jobs: int, name: str,
                 estimator: RunEstimator, guide: torch.Tensor, resumed: bool = False) -> None:
        self.callback, self.cancel, self.counter = callback, cancel, counter
        self.settings, self.stage, self.stages, self.size = settings, stage, stages, size
        self.job, self.jobs, self.name, self.estimator = job, jobs, name, estimator
        self.guide = guide   # the photo at this stage (0..1): previews show the strength the result will have
        self.resumed = resumed
        self.done_in_stage = 0   # iterations of this stage finished (a paused run saves this)
        self.best_loss: float | None = None   # the stage's lowest loss so far (block events repeat it)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.cancelled:
            raise _Cancelled
        if self.cancel is not None and self.cancel.paused:
            raise _Paused

    def block(self, pass_: int, done: int, blocks: int) -> None:
        """A block of a tiled evaluation is done (tiled.TiledObjective.on_block): stop if asked, else a
        Progress with the iteration in flight counted in part (tiled.PASS1_SHARE of it is pass 1)."""
        self.check()
        if self.callback is None:
            return
        share = tiled.PASS1_SHARE
        fraction = share * done / blocks if pass_ == 1 else share + (1.0 - share) * done / blocks
        estimate = self.estimator.partial(fraction)
        self.callback(Progress(stage=self.stage + 1, stages=self.stages, stage_size=self.size,
                               style_index=self.job, styles=self.jobs, iteration=self.done_in_stage,
                               stage_iterations=self.estimator.iterations[self.stage],
                               done_iterations=self.counter.done, total_iterations=self.counter.total, loss=None,
                               style_name=self.name, percent=estimate.percent, eta_seconds=estimate.eta_seconds,
                               best_loss=self.best_loss, resumed=self.resumed, block=(pass_, done, blocks)))

    def report(self, iteration: int, stage_iterations: int, loss: float, image: torch.Tensor,
               best_loss: float | None = None) -> None:
        self.counter.done += 1
        self.done_in_stage = iteration
        self.best_loss = best_loss if best_loss is not None and math.isfinite(best_loss) else None
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
                               best_loss=self.best_loss, resumed=self.resumed))


def _preview(image: torch.Tensor, guide: torch.Tensor, mix: float = 1.0) -> np.ndarray:
    with torch.no_grad():
        h, w = image.shape[-2:]
        s = min(1.0, PREVIEW_SIDE / max(h, w))
        dims = (max(1, round(h * s)), max(1, round(w * s)))
        small = (resize(image.detach().float().cpu(), dims) / 255.0).clamp(0, 1)
        if mix < 1.0:
            small = strength.mix_lab(small, resize(guide.detach().float().cpu(), dims), mix)
        return small[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32)


class _WholeObjective:
    """The Gatys loss of the whole image by autograd (the losses.py modules on ``vgg(x)``): sets x.grad."""

    def __init__(self, vgg: VGGFeatures, content: dict[str, torch.Tensor], grams: dict[str, torch.Tensor],
                 settings: Settings, reporter: _Reporter) -> None:
        s = settings
        self.vgg, self.reporter = vgg, reporter
        self.content_losses = {k: ContentLoss(v, s.content_weight, s.normalize_gradients) for k, v in content.items()}
        style_w = s.style_weight * strength.weight_factor(s.style_strength)
        self.style_losses = {k: StyleLoss(v, style_w, s.normalize_gradients) for k, v in grams.items()}
        self.tv = TVLoss(s.tv_weight)
        self.layers = tuple(dict.fromkeys([*self.content_losses, *self.style_losses]))
        self.parts: dict[str, float] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.reporter.check()
        x.grad = None
        feats = self.vgg(x, self.layers)
        c = sum(loss(feats[k]) for k, loss in self.content_losses.items())
        st = sum(loss(feats[k]) for k, loss in self.style_losses.items())
        t = self.tv(x)
        total = c + st + t
        self.parts = {"content": float(c.detach()), "style": float(st.detach()), "tv": float(t.detach()),
                      "total": float(total.detach())}
        total.backward()
        return total.detach()


class _TiledObjective:
    """The same loss and gradient computed in blocks (tiled.TiledObjective); after every block checks for
    cancel/pause and sends a Progress (a 24 MP evaluation takes many minutes on a CPU)."""

    def __init__(self, objective: tiled.TiledObjective, reporter: _Reporter) -> None:
        self.objective, self.reporter = objective, reporter
        objective.on_block = reporter.block
        self.parts: dict[str, float] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.reporter.check()
        loss, x.grad = self.objective.loss_and_grad(x, x.grad)
        self.parts = dict(self.objective.parts)
        return loss


def _objective(vgg: VGGFeatures, guide: torch.Tensor, content_feats: list[dict[str, torch.Tensor] | None], k: int,
               grams: dict[str, torch.Tensor], settings: Settings, plan: StagePlan, device: torch.device,
               reporter: _Reporter) -> _WholeObjective | _TiledObjective:
    """The stage's objective; a tiled stage's content targets are computed here (and dropped at the stage's
    end: they are large, and a no-grad pass costs ~1/3 of an iteration)."""
    if plan.inner is None:
        return _WholeObjective(vgg, content_feats[k] or {}, grams, settings, reporter)
    photo255 = (guide * 255.0).to(device)
    if content_feats[k] is None:
        content_feats[k] = tiled.tiled_features(vgg, photo255, tuple(settings.content_layers), plan.inner)
    objective = tiled.TiledObjective(vgg, photo255, grams, settings, inner=plan.inner, targets=content_feats[k])
    return _TiledObjective(objective, reporter)


def _optimise(x0: torch.Tensor, objective: _WholeObjective | _TiledObjective, settings: Settings, iterations: int,
              reporter: _Reporter, *, start: int = 0, history: int = 100, saver: "_Saver | None" = None,
              restore: _Restore | None = None) -> tuple[torch.Tensor, dict[str, float], str | None]:
    """One stage for one style, its iterations ``start + 1 .. iterations`` (``start`` > 0: resumed from a
    checkpoint; with ``restore`` from the optimiser's saved state, ``x0`` being its iterate, exactly as the
    uninterrupted run). Saves the checkpoint (``saver``) every interval and on pause. Returns (best image
    0..255, its losses, None / "cancel" / "pause")."""
    s = settings
    # x0 itself becomes the parameter (at 24 MP a copy is 288 MB): the caller does not use it afterwards
    x = x0.detach().contiguous().requires_grad_(True)
    del x0
    if restore is not None:
        best: dict = {"loss": restore.best_loss, "image": restore.best, "parts": dict(restore.losses)}
    else:
        best = {"loss": math.inf, "image": x.detach().clone(), "parts": {}}
    reporter.done_in_stage = start
    reporter.best_loss = best["loss"] if math.isfinite(best["loss"]) else None
    opt: torch.optim.Optimizer | None = None

    def save(iteration: int) -> None:
        if saver is not None:
            saver.save(iteration, best["image"], best_loss=best["loss"], losses=best["parts"], current=x,
                       optimizer=opt)

    def evaluate() -> torch.Tensor:
        total = objective(x)
        value = float(total)
        if math.isfinite(value) and value < best["loss"]:
            best["loss"] = value
            best["image"].copy_(x.detach())
            best["parts"] = dict(objective.parts)
        return total

    try:
        if iterations - start <= 0:
            evaluate()
            return best["image"], best["parts"], None
        if s.optimizer == "lbfgs":
            opt: torch.optim.Optimizer = torch.optim.LBFGS(
                [x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=-1, tolerance_change=-1)
        else:
            opt = torch.optim.Adam([x], lr=s.learning_rate)
        if restore is not None:
            opt.state[x] = dict(restore.optimizer)
            restore = None     # (its tensors now belong to the optimiser)

        primed: list[torch.Tensor] = []

        def closure() -> torch.Tensor:
            if primed:              # the evaluation made to size the first step: its gradient is still in x.grad
                return primed.pop()
            with torch.no_grad():   # optimise the image we will return: in range (the output is clamped anyway)
                x.clamp_(0.0, 255.0)
            return evaluate()

        if isinstance(opt, torch.optim.LBFGS) and not opt.state[x]:    # a fresh L-BFGS: size its first step
            primed.append(closure())
            _scale_first_step(opt, x.grad, LBFGS_RESUME_STEP if start > 0 else LBFGS_FIRST_STEP)
        for i in range(start + 1, iterations + 1):
            if i == start + 2 and isinstance(opt, torch.optim.LBFGS):
                opt.param_groups[0]["lr"] = 1.0     # from here on L-BFGS sizes its own steps
            reporter.check()
            # LBFGS with max_iter=1 evaluates once per step and keeps its history between steps.
            loss = opt.step(closure)
            value = float(loss.detach()) if loss is not None else math.nan
            reporter.report(i, iterations, value, x, best["loss"])
            if saver is not None and i < iterations and saver.due():
                save(i)
            if not math.isfinite(value):
                break
    except _Cancelled:
        return best["image"], best["parts"], "cancel"
    except _Paused:
        save(reporter.done_in_stage)
        return best["image"], best["parts"], "pause"
    return best["image"], best["parts"], None


def _scale_first_step(opt: torch.optim.LBFGS, grad: torch.Tensor | None, step: float = LBFGS_FIRST_STEP) -> None:
    """Set lr so that L-BFGS's first step (t = lr * min(1, 1/|g|_1) along -g) moves the pixel with the
    largest gradient by LBFGS_FIRST_STEP; see that constant for why."""
    if grad is None:
        return
    largest = float(grad.abs().max())
    total = float(grad.abs().sum())
    if not (math.isfinite(largest) and math.isfinite(total)) or largest == 0.0:
        return
    opt.param_groups[0]["lr"] = step / (largest * min(1.0, 1.0 / total))
