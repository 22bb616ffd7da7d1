"""The engine's public data: what goes in, what comes out, and how progress is reported.

Front ends (CLI, daemon, hot folder) depend only on these types and on :func:`bridge.engine.stylize`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..imaging import Picture
from ..settings import Settings


@dataclass
class StyleInput:
    """One style image and its name (used for the layer and file names).

    ``region``: where this style goes (H x W float32 0..1 at the content photo's native size); when any style
    has one, the run paints every region with its own style in one optimisation, the result "fused".
    ``style_region``: which part of the style image is the style (H x W float32 0..1 at its size)."""

    name: str
    picture: Picture
    region: np.ndarray | None = None
    style_region: np.ndarray | None = None


@dataclass
class Progress:
    stage: int               # 1-based index of the coarse-to-fine stage
    stages: int
    stage_size: int          # long side of this stage in pixels
    style_index: int         # 0-based: which style is being optimised
    styles: int              # how many optimisations this run has (styles + blended)
    iteration: int           # iterations done in this stage
    stage_iterations: int
    done_iterations: int     # across the whole run
    total_iterations: int    # across the whole run
    loss: float | None = None           # this iteration's loss (it may spike: L-BFGS tries a step)
    preview: np.ndarray | None = None   # small H x W x 3 float32 0..1, only every preview_every iterations
    style_name: str = ""
    # What front ends show (computed once, by bridge.engine.eta): percent of the run weighted by each
    # stage's cost (a 512 px iteration costs ~16x a 128 px one), seconds left predicted from the speed
    # measured so far, and the lowest loss of this stage so far (the image that will be kept).
    percent: float | None = None
    eta_seconds: float | None = None
    best_loss: float | None = None
    resumed: bool = False    # this run went on from a checkpoint (a paused or interrupted run) instead of from 0
    # Within an iteration of a tiled stage (one evaluation takes minutes at 24 MP): (pass 1 or 2, blocks done in
    # that pass, blocks), with ``iteration`` the iterations done so far, ``loss`` None and no preview; percent
    # and ETA count the iteration in flight in part. None on the event that ends an iteration (one per
    # iteration, as before): a consumer that wants one event per iteration skips the others.
    block: tuple[int, int, int] | None = None

    @property
    def fraction(self) -> float:
        """0..1 done: the engine's stage-weighted percent (iterations counted as equal if it is absent)."""
        if self.percent is not None:
            return max(0.0, min(1.0, self.percent / 100.0))
        return 0.0 if self.total_iterations <= 0 else min(1.0, self.done_iterations / self.total_iterations)


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """Set from any thread; the optimisation loop checks it every iteration (and every block of a tiled
    evaluation) and stops cleanly.

    ``cancel()``: stop and return the best result so far. ``pause()``: stop, save a checkpoint (when
    ``stylize`` was given one) and return a result with ``paused=True`` and no images; calling ``stylize``
    again with the same checkpoint goes on from there. Cancel wins over pause when both are set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._pause = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def pause(self) -> None:
        self._pause.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def paused(self) -> bool:
        return self._pause.is_set() and not self._event.is_set()


class StyleResolutionWarning(UserWarning):
    """A style image is smaller than a stage needs it (style_scale x the stage's long side): it is
    upsampled, so the painted texture can be no finer than the style image. Front ends may show it;
    the run goes on. The same text is in :attr:`StylizeResult.warnings`."""


@dataclass
class StyledImage:
    name: str                # the style's name, "blend" for the blended result, "fused" for the regions' one
    picture: Picture         # at the content photo's native size, depth, ICC, DPI; alpha = the photo's
    losses: dict[str, float] = field(default_factory=dict)  # final content/style/tv/total at the working size


@dataclass
class StylizeResult:
    content: Picture
    images: list[StyledImage]   # one per style, in input order, then the blend if asked for; with regions "fused"
                                # (last; alone unless settings.region_style_layers)
    settings: Settings          # the settings actually used (seed filled in)
    working_size: tuple[int, int]   # (width, height) of the last optimisation stage
    cancelled: bool = False
    seconds: float = 0.0        # the run's seconds, those before a pause or interruption included
    paused: bool = False        # stopped by CancelToken.pause(): no images; resume with the same checkpoint
    resumed: bool = False       # went on from a checkpoint
    warnings: list[str] = field(default_factory=list)   # e.g. StyleResolutionWarning texts, for front ends
