"""Progress of a run as it goes: the Progress events (percent and ETA from :mod:`.eta`), the previews they
carry, and the stop requests (cancel, pause) checked at every iteration and every tiled block."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..settings import Settings
from . import strength, tiled
from .eta import RunEstimator
from .pixels import resize
from .types import CancelToken, Progress, ProgressCallback

PREVIEW_SIDE = 256         # long side of preview images sent with progress


class Cancelled(Exception):
    """Raised inside the loss closure to leave the optimiser at once."""


class Paused(Exception):
    """Raised inside the loss closure to leave the optimiser at once and save a checkpoint."""


@dataclass
class Counter:
    """Iterations done and to do over the whole run (every style, every stage)."""

    done: int
    total: int


class Reporter:
    """Counts iterations, sends Progress (with the estimator's percent and ETA), and raises Cancelled
    or Paused when asked to stop."""

    def __init__(self, callback: ProgressCallback | None, cancel: CancelToken | None, counter: Counter,
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
            raise Cancelled
        if self.cancel is not None and self.cancel.paused:
            raise Paused

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
        preview_image = None
        if every > 0 and (iteration % every == 0 or iteration == stage_iterations):
            preview_image = preview(image, self.guide, strength.amount(self.settings.style_strength))
        self.callback(Progress(stage=self.stage + 1, stages=self.stages, stage_size=self.size,
                               style_index=self.job, styles=self.jobs, iteration=iteration,
                               stage_iterations=stage_iterations, done_iterations=self.counter.done,
                               total_iterations=self.counter.total, loss=loss, preview=preview_image,
                               style_name=self.name, percent=estimate.percent,
                               eta_seconds=estimate.eta_seconds,
                               best_loss=self.best_loss, resumed=self.resumed))


def preview(image: torch.Tensor, guide: torch.Tensor, mix: float = 1.0) -> np.ndarray:
    """The image being optimised (0..255) as a small H x W x 3 float32 picture (0..1, long side at most
    PREVIEW_SIDE), mixed with the photo (``guide``, 0..1) at the strength the result will have."""
    with torch.no_grad():
        h, w = image.shape[-2:]
        s = min(1.0, PREVIEW_SIDE / max(h, w))
        dims = (max(1, round(h * s)), max(1, round(w * s)))
        small = (resize(image.detach().float().cpu(), dims) / 255.0).clamp(0, 1)
        if mix < 1.0:
            small = strength.mix_lab(small, resize(guide.detach().float().cpu(), dims), mix)
        return small[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32)
