"""The optimisation loop: features once, then one coarse-to-fine Gatys optimisation per style (and blend).

Shape of a run (``stylize``):

1. working size = ``settings.size`` clamped to the photo's long side (never optimise above native
   resolution), or the photo's own long side for ``size`` "native"; the coarse-to-fine ladder is
   ``settings.ladder`` for that size (doubling above ``base_size``, with ``large_iterations`` there).
2. per stage, a plan (:func:`.plan.plan_run`, once per run): the whole image by autograd when it fits the memory budget
   (``tiled.budget_bytes``: ``block_memory``, or a share of free memory), else the exact tiled objective
   (:mod:`.objective`: same loss and gradient, in blocks), with an L-BFGS history sized from the same budget.
   The targets (:mod:`.targets`): the photo's content features once per stage (shared by every style; a
   tiled stage's are recomputed per style rather than kept: 768 MB at 24 MP), each style's Gram matrices
   once (style image at ``style_scale`` x the stage size, in blocks when it is large; a style smaller than
   needed gets a StyleResolutionWarning); the blend's targets are the Grams mixed by ``style_blend_weights``.
3. per style (then the blend): L-BFGS or Adam at each stage (:mod:`.step`), warm-started from the previous
   stage's best image upsampled; progress every iteration and, at a tiled stage, every block of its
   evaluation (:mod:`.report`: percent and ETA count the iteration in flight in part); cancel/pause checked
   every iteration (and every block).
   With a checkpoint (the policy: :mod:`.resume`; the file: :mod:`.checkpoint`): resumed from a matching
   saved state, saved at stage ends, every ``checkpoint.interval_s`` and on pause (the result is then
   ``paused`` with no images). Mid-stage saves hold the optimiser's state (its iterate and L-BFGS history)
   while it is below RESUME_STATE_BYTES, so a resumed run goes on exactly as the uninterrupted one; above
   that only the best image (the optimiser restarts).
4. the best image of the last stage goes to the photo's native size (:mod:`.deliver`; at native size as it
   is), with the photo's chroma if ``original_colors``, then is mixed with the photo by ``style_strength``
   (``strength``: 0 = the photo, returned without optimising; 1 = the result as it is).
   Cancel keeps the best image of the stage reached (a call cancelled before it starts: those its checkpoint
   holds, without optimising).

Progress carries a stage-weighted percent and an ETA from the measured speed (``eta.RunEstimator``; tiled
stages weighted by TILED_COST).

Pixels are optimised as RGB in 0..255 (neural-style's scale); the VGG wrapper applies its own
preprocessing.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..imaging import Picture, load_image
from ..settings import Settings, SettingsError
from . import resume, strength, targets, threads
from .checkpoint import Checkpoint, EngineState
from .deliver import deliver, photo_only
from .device import engine_device
from .eta import RunEstimator, cost_model
from .objective import stage_objective
from .pixels import picture_tensor, resize
from .plan import StagePlan, ladder_dims, plan_run
from .report import Counter, Reporter
from .step import optimise_stage
from .types import CancelToken, ProgressCallback, StyledImage, StyleInput, StylizeResult
from .vgg import VGGFeatures, load_vgg


@dataclass
class _Loop:
    """What every job and stage of one run shares (fixed once the style targets are known)."""

    content: Picture
    settings: Settings
    device: torch.device
    vgg: VGGFeatures
    ladder: list[int]                 # long side of each stage
    iters: list[int]                  # iterations of each stage
    plans: list[StagePlan]
    guides: list[torch.Tensor]        # the photo (0..1) at each stage
    content_feats: list[dict[str, torch.Tensor] | None]   # per stage (a tiled stage's: only while it runs)
    jobs: list[targets.StyleJob]
    progress: ProgressCallback | None
    cancel: CancelToken | None
    counter: Counter
    estimator: RunEstimator
    saver: resume.Saver
    resumed: bool


def stylize(content: Picture, styles: list[StyleInput], settings: Settings,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None, *,
            checkpoint: Checkpoint | None = None) -> StylizeResult:
    """Stylise ``content`` once per style (plus a blend if ``style_blend_weights``); see the module doc. When a
    style has a ``region``: one optimisation paints every region with its own style, the result "fused" (after
    the per-style ones only with ``region_style_layers``; see targets.py and docs/regions.md).

    With ``checkpoint`` the run resumes from a matching saved state and saves its own (see checkpoint.py);
    ``cancel.pause()`` then stops it with ``paused=True`` and no images; a ``cancel`` already cancelled returns
    the saved state's images (finished styles, then the best so far of the style reached) at once."""
    started = time.perf_counter()            # (a Settings is valid once it exists: bridge.settings)
    _check_styles(styles, settings)
    targets.check_regions((content.width, content.height), styles)
    state, print_ = resume.load_state(checkpoint, content, styles, settings)
    settings = dataclasses.replace(settings, seed=_seed(state, settings))
    if strength.amount(settings.style_strength) == 0.0:     # the photo itself: nothing to optimise
        return photo_only(content, targets.job_names(styles, settings), settings, started)
    device = engine_device(settings.device, settings.threads)
    ladder, dims, iters = ladder_dims(settings, content.width, content.height)
    # The photo as each stage sees it (0..1): native -> working size once, then down from there
    # (resampling a 24 MP photo costs seconds; doing it once per stage would cost that many times more).
    working = resize(picture_tensor(content), dims[-1])
    guides = [resize(working, d) for d in dims[:-1]] + [working]
    names = targets.job_names(styles, settings)
    if state is not None and not resume.state_fits(state, dims, iters, len(names)):
        state = None
    working_size = (dims[-1][1], dims[-1][0])
    resumed = state is not None
    elapsed0 = state.elapsed_s if state is not None else 0.0
    notes: list[str] = []

    def result(images: list[StyledImage], **flags: bool) -> StylizeResult:
        return StylizeResult(content=content, images=images, settings=settings, working_size=working_size,
                             seconds=elapsed0 + time.perf_counter() - started, resumed=resumed,
                             warnings=list(notes), **flags)

    if state is not None and cancel is not None and cancel.cancelled:   # cancelled before it started: the
        return result(resume.saved_images(state, content, guides, settings, names), cancelled=True)   # best so far

    vgg = load_vgg(settings.weights, settings.pooling, device)
    run = plan_run(settings, content.width, content.height, device, vgg)   # the budget, sampled once
    plans = list(run.stages)
    content_feats = targets.content_features(vgg, guides, plans, settings, device)
    jobs = targets.style_jobs(vgg, styles, settings, ladder, device, cancel, notes, run.budget, working_dims=dims[-1])
    if jobs is None and state is not None and cancel is not None and cancel.cancelled:
        return result(resume.saved_images(state, content, guides, settings, names), cancelled=True)
    if jobs is None:
        return result([], paused=True) if cancel is not None and cancel.paused else result([], cancelled=True)

    saver = resume.Saver(checkpoint, print_, settings.seed, elapsed0, started,
                         list(state.finished) if state is not None else [])
    loop = _Loop(content=content, settings=settings, device=device, vgg=vgg, ladder=ladder, iters=iters, plans=plans,
                 guides=guides, content_feats=content_feats, jobs=jobs, progress=progress, cancel=cancel,
                 counter=Counter(0, sum(iters) * len(jobs)),
                 estimator=RunEstimator([p.cost_pixels for p in plans], iters, len(jobs), cost_model(device.type)),
                 saver=saver, resumed=resumed)
    images, stop = _run_jobs(loop, state)
    if stop == "pause":
        return result([], paused=True)
    return result(images, cancelled=stop == "cancel")


def _check_styles(styles: list[StyleInput], settings: Settings) -> None:
    """At least one style, and one blend weight per style (SettingsError naming the setting otherwise)."""
    if not styles:
        raise SettingsError("style", "at least one style image is needed")
    blend = settings.style_blend_weights
    if blend is not None and len(blend) != len(styles):
        raise SettingsError("style_blend_weights", f"{len(blend)} weights given for {len(styles)} styles")


def _seed(state: EngineState | None, settings: Settings) -> int:
    """The run's seed: the checkpoint's when resuming, else the settings', else a fresh random one."""
    if state is not None:
        return state.seed
    return settings.seed if settings.seed is not None else secrets.randbelow(2**31 - 1)


def _run_jobs(loop: _Loop, state: EngineState | None) -> tuple[list[StyledImage], str | None]:
    """Every job from the one the checkpoint reached (the finished ones delivered as saved). Returns (the images,
    None / "cancel": the images so far, the best of the job reached last / "pause": no images)."""
    init_file = _init_file(loop.settings)
    images = [deliver(torch.from_numpy(image)[None], loop.content, loop.guides[-1], loop.settings, loop.jobs[j].name,
                      {}) for j, image in enumerate(loop.saver.finished)]
    first_job = 0
    if state is not None:
        first_job = state.style_index
        loop.counter.done = first_job * sum(loop.iters) + sum(loop.iters[:state.stage]) + state.iteration
    for j in range(first_job, len(loop.jobs)):
        best, losses, stage_used, stop = _run_job(loop, j, state, init_file)
        if stop == "pause":       # (step.optimise_stage saved the checkpoint, with the optimiser's state)
            return [], stop
        if stop is None:
            loop.saver.finish(best)
        images.append(deliver(best, loop.content, loop.guides[stage_used], loop.settings, loop.jobs[j].name, losses))
        if stop == "cancel":
            return images, stop
    return images, None


def _run_job(loop: _Loop, j: int, state: EngineState | None, init_file: torch.Tensor | None
             ) -> tuple[torch.Tensor, dict[str, float], int, str | None]:
    """Job ``j``'s stages, from where the checkpoint's ``state`` left it or from the start, each warm-started from
    the previous stage's best image upsampled. Returns (best image 0..255, its losses, its stage, None / "cancel" /
    "pause")."""
    if state is not None and j == state.style_index:
        start = resume.start_of(state, loop.jobs[j].name, loop.iters, loop.plans[state.stage].history, loop.device)
    else:
        start = resume.Start(0, 0, _initial(loop.settings, loop.guides[0], init_file, loop.settings.seed, loop.device))
    x, k0, i0, restore, resumed = start.image, start.stage, start.iteration, start.restore, start.resumed
    del start
    best, losses, stage_used = x, {}, k0
    for k in range(k0, len(loop.plans)):
        if k > k0:
            x = F.interpolate(best, size=loop.plans[k].dims, mode="bilinear", align_corners=False)
            del best
        stage_used = k
        if resumed and k == k0 and i0 >= loop.iters[k]:   # the checkpoint was saved at this stage's end
            best = x
            continue
        best, parts, stop = _run_stage(loop, j, k, x, i0 if k == k0 else 0, restore)
        restore = None
        del x
        losses = parts or losses
        if stop is not None:
            return best, losses, stage_used, stop
        loop.saver.save(loop.iters[k], best)
    return best, losses, stage_used, None


def _run_stage(loop: _Loop, j: int, k: int, x: torch.Tensor, start: int, restore: resume.Restore | None
               ) -> tuple[torch.Tensor, dict[str, float], str | None]:
    """Stage ``k`` of job ``j`` from its iteration ``start`` (from the optimiser's saved state with ``restore``).
    Returns (best image 0..255, its losses, None / "cancel" / "pause")."""
    job, plan = loop.jobs[j], loop.plans[k]
    reporter = Reporter(loop.progress, loop.cancel, loop.counter, loop.settings, stage=k, stages=len(loop.plans),
                        size=loop.ladder[k], job=j, jobs=len(loop.jobs), name=job.name, estimator=loop.estimator,
                        guide=loop.guides[k], resumed=loop.resumed)
    threads.watch(reporter)          # thread count re-checked now and every few seconds (threads.py)
    regions = targets.stage_regions(loop.vgg, job, k, plan.dims, tuple(loop.settings.style_layers), loop.device)
    objective = stage_objective(loop.vgg, loop.guides[k], loop.content_feats, k, job.grams[k], loop.settings, plan,
                                loop.device, reporter, regions)
    del regions
    loop.estimator.start_stage(j, k, done=start)
    loop.saver.position(j, k)
    if restore is not None:
        x = restore.current
    best, parts, stop = optimise_stage(x, objective, loop.settings, loop.iters[k], reporter, start=start,
                                       history=plan.history, saver=loop.saver, restore=restore)
    del x, objective
    if plan.inner is not None:
        loop.content_feats[k] = None   # a tiled stage's targets (768 MB at 24 MP): recomputed per style instead
    loop.estimator.end_stage()
    return best, parts, stop


def _init_file(settings: Settings) -> torch.Tensor | None:
    """The init image (0..1) when ``init`` is "file", read once for every job."""
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
