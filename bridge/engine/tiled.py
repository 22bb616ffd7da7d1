"""The exact Gatys loss and its gradient for an image of any size, computed block by block.

Why: the style loss depends on the image only through Gram matrices, which are sums over all positions,
and the content and TV losses are local. So the whole-image gradient can be computed in blocks whose
memory is bounded by the block, with no seams and no style drift by construction (the idea of Galerne et
al., "Scaling Painting Style Transfer", EGSR 2024; written from the idea, no code taken):

1. pass 1: forward every block without gradient; sum the Gram statistics ``F F^T`` over the features each
   block *owns* (the positions whose 16-pixel-aligned cell lies in the block's inner region);
2. pass 2: forward each block again with gradient and inject ``dL/dF`` (from the global Gram and the
   content target) at its owned positions only; the gradient of the whole block, margins included, is
   added into the image's gradient (overlap-add). Every feature position is owned by exactly one block,
   so the sum is the whole-image gradient.

Regions (guided Grams, :class:`bridge.engine.losses.GuidedStyleLoss`): a guided Gram ``(F W) F^T / (C sum W)``
is a weighted sum over positions too, so pass 1 sums ``(F W) F^T`` per region over the owned cells with the
region's weights (given on the whole image's feature grid) cut with the same cells, and pass 2 injects each
region's ``dL/dF`` times its weights: exact as the plain Gram (tests/test_engine_regions.py).

A block's margin only has to cover the *forward* receptive field of its owned features (70 px for relu5_1,
computed from the modules by :func:`context`), not twice that as when only the inner gradient is kept.
Block origins are multiples of 16 so the four 2x2 poolings fall on the whole image's grid. Blocks are laid
out on the image with its mirrored frame (``vgg.frame``, see vgg.py): a border block mirrors the image
around its own pixels exactly as the whole-image forward does (a reflection reads at most 32 px from the
border, which every border block holds), and blocks stop at the outer edge, so the convolutions pad
exactly as in the whole-image forward (with any of vgg.py's padding modes). The last block of pass 1
keeps its graph and is the first of pass 2, so an image that fits in one block costs one forward and one
backward, like the whole-image computation.

Losses and normalisation are those of :mod:`bridge.engine.losses` as ``objective.py`` combines them:
``content_weight * mean((F - T)^2)`` per content layer, ``style_weight * style_strength * mean((G - A)^2)``
per style layer with ``G = F F^T / (C H W)``, and ``tv_weight * 0.5 * sum of squared neighbour
differences``. ``normalize_gradients`` needs each layer's whole gradient before any of it is used, so it
is refused here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..settings import Settings, SettingsError
from .losses import RegionTarget
from .strength import weight_factor
from .vgg import LAYER_INDEX, VGGFeatures, layer_stride, mirror_mode, mirror_pad

ALIGN = 16                  # four 2x2 poolings before relu5_x: block origins on this grid
MIN_INNER = ALIGN           # the smallest inner block side
AUTO_FRACTION = 0.4         # of available RAM / free GPU memory, when no budget is given
AUTO_CAP_BYTES = 4 << 30    # bigger blocks gain little (the margins are already a small fraction) and the
                            # rest of the memory is needed by the optimiser at native size
# Peak memory of pass 2 (forward with graph + backward) per pixel of a block, in values of the dtype, for
# the layers up to relu5_1: measured 514 (842 MB for a 640 x 640 block, `bench_tiled.py memory`, with
# per-convolution padding, which keeps a padded copy of every conv input; mirror padding keeps fewer);
# 640 leaves a 25% margin.
VALUES_PER_PIXEL = 640
FIXED_BLOCK_BYTES = 64 << 20   # weights, allocator slack
# Share of one evaluation's time spent in pass 1 (forwards without graph, but the last block's), for progress
# within an iteration (report.py): measured 0.31-0.36 at 256-512 px (bench/bench_pass_share.py, 6-12 small
# blocks, 1 thread) and 0.26 at 24 MP (329 of 1244 s, 24 blocks of 1120 px: bench/README.md); pass 2 (forward
# with graph and backward per block) is the rest.
PASS1_SHARE = 0.3


def context(features: nn.Sequential, last: int) -> tuple[int, int]:
    """(before, after): input pixels a feature at module ``last`` reads before its cell's first pixel and
    after its cell's last one (its receptive field, from the modules' kernels, paddings and strides)."""
    lo, hi, jump = 0, 0, 1
    for module in list(features)[: last + 1][::-1]:
        if isinstance(module, nn.Conv2d):
            k, p, s, d = module.kernel_size[0], module.padding[0], module.stride[0], module.dilation[0]
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            k, p, s, d = _pair0(module.kernel_size), _pair0(module.padding), _pair0(module.stride), 1
        else:
            continue
        lo, hi, jump = lo * s - p, hi * s - p + d * (k - 1), jump * s
    return -lo, hi - (jump - 1)


def _pair0(v: int | tuple[int, ...]) -> int:
    return v[0] if isinstance(v, tuple) else int(v)


@dataclass(frozen=True)
class Block:
    """A block: rows y0:y1, columns x0:x1 are computed; rows iy0:iy1, columns ix0:ix1 are its own."""

    y0: int
    y1: int
    x0: int
    x1: int
    iy0: int
    iy1: int
    ix0: int
    ix1: int

    @property
    def pixels(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def plan(height: int, width: int, inner: int, before: int, after: int) -> list[Block]:
    """Blocks of inner side about ``inner`` (a multiple of 16) covering the image, with margins."""
    inner = max(MIN_INNER, inner // ALIGN * ALIGN)
    margin0 = -(-before // ALIGN) * ALIGN     # keeps block origins on the 16-pixel grid

    def split(n: int) -> list[tuple[int, int, int, int]]:
        count = -(-n // inner)
        step = -(-(-(-n // count)) // ALIGN) * ALIGN
        return [(max(0, s - margin0), min(n, s + step + after), s, min(n, s + step)) for s in range(0, n, step)]

    return [Block(y0, y1, x0, x1, iy0, iy1, ix0, ix1)
            for y0, y1, iy0, iy1 in split(height) for x0, x1, ix0, ix1 in split(width)]


def block_bytes(side: int, dtype: torch.dtype = torch.float32) -> int:
    """Estimated peak memory of pass 2 for a ``side`` x ``side`` block (up to relu5_1)."""
    return FIXED_BLOCK_BYTES + VALUES_PER_PIXEL * side * side * torch.empty((), dtype=dtype).element_size()


def inner_side(budget_bytes: int, before: int, after: int, dtype: torch.dtype = torch.float32) -> int:
    """The largest inner block side (a multiple of 16) whose block fits ``budget_bytes``; SettingsError
    naming the minimum budget when even the smallest block does not fit."""
    margins = -(-before // ALIGN) * ALIGN + after
    smallest = block_bytes(MIN_INNER + margins, dtype)
    if budget_bytes < smallest:
        need = -(-smallest // (1 << 20))
        raise SettingsError("block_memory", f"{budget_bytes / (1 << 20):.0f} MB is too small for one block of "
                            f"the tiled computation: give at least {need} MB (or 0 to size it from free memory)")
    per_value = VALUES_PER_PIXEL * torch.empty((), dtype=dtype).element_size()
    side = int(math.isqrt(max(0, budget_bytes - FIXED_BLOCK_BYTES) // per_value))
    return max(MIN_INNER, (side - margins) // ALIGN * ALIGN)


def available_bytes(device: torch.device) -> int:
    """Free memory for blocks: free GPU memory on CUDA, else MemAvailable from /proc/meminfo (or psutil)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil  # optional
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30   # unknown system: a modest guess


def budget_bytes(settings: Settings, device: torch.device) -> int:
    """The memory budget for one block: the setting (MB), or a share of free memory when it is 0."""
    if settings.block_memory:
        return int(settings.block_memory) << 20
    free = int(available_bytes(device) * AUTO_FRACTION)
    return free if device.type == "cuda" else min(free, AUTO_CAP_BYTES)


def block_count(vgg: VGGFeatures, layers: tuple[str, ...], height: int, width: int, inner: int) -> int:
    """How many blocks of inner side ``inner`` an image of this size needs (1: it fits whole)."""
    return len(_Grid(vgg, layers, height, width, inner).blocks)


def margins(vgg: VGGFeatures, layers: tuple[str, ...]) -> tuple[int, int]:
    """(before, after) context of a block for ``layers`` (the receptive field, and the mirrored frame)."""
    before, after = context(vgg.features, _deepest(layers))
    if vgg.mirror:
        before, after = max(before, 3 * vgg.mirror), max(after, 2 * vgg.mirror)
    return before, after


def _deepest(layers: tuple[str, ...] | list[str]) -> int:
    return max(LAYER_INDEX[name] for name in layers)


def _forward(vgg: VGGFeatures, image255: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The activations of ``layers`` (same values as ``vgg(image255, layers)``), with in-place ReLUs: the
    convolutions' outputs are not needed by their backward, so this halves the memory kept for pass 2."""
    wanted = {LAYER_INDEX[name]: name for name in layers}
    last = max(wanted)
    vgg.calls += 1
    x = vgg.preprocess(image255)
    out: dict[str, torch.Tensor] = {}
    for i, module in enumerate(vgg.features):
        x = torch.relu_(x) if isinstance(module, nn.ReLU) else module(x)
        if i in wanted:
            out[wanted[i]] = x
        if i >= last:
            break
    return out


class _Grid:
    """The blocks for one image size, in the coordinates of the image with its mirrored frame
    (``vgg.frame``; none without mirror padding), and which feature positions each block owns."""

    def __init__(self, vgg: VGGFeatures, layers: tuple[str, ...], height: int, width: int, inner: int) -> None:
        # a border block must hold the pixels its frame mirrors (up to 2 * mirror - 1 px): see margins()
        before, after = margins(vgg, layers)
        self.height, self.width = height, width
        self.frame = vgg.frame(height, width)
        self.mode = mirror_mode(height, width, vgg.mirror)
        top, bottom, left, right = self.frame
        self.blocks = plan(height + top + bottom, width + left + right, inner, before, after)
        self.sizes = {name: vgg.feature_size(name, height, width) for name in layers}

    def source(self, b: Block) -> tuple[tuple[slice, slice], tuple[int, int, int, int]]:
        """The image pixels a block reads, and the (top, bottom, left, right) frame it mirrors around them."""
        top, _, left, _ = self.frame
        y0, y1 = max(0, b.y0 - top), min(self.height, b.y1 - top)
        x0, x1 = max(0, b.x0 - left), min(self.width, b.x1 - left)
        pads = (max(0, top - b.y0), max(0, b.y1 - top - self.height),
                max(0, left - b.x0), max(0, b.x1 - left - self.width))
        return (slice(y0, y1), slice(x0, x1)), pads

    def input(self, image255: torch.Tensor, b: Block, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(the block's image pixels, as a leaf if ``grad``; the block's input with its frame)."""
        (rows, cols), pads = self.source(b)
        src = image255[..., rows, cols]
        if grad:
            src = src.detach().requires_grad_(True)
        return src, mirror_pad(src, pads, self.mode)

    def owned(self, b: Block, layer: str) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """The feature positions the block owns at ``layer``: (in its own feature map, in the image's)."""
        s = layer_stride(layer)
        top, _, left, _ = self.frame
        out_local, out_global = [], []
        for lo, hi, origin, pad, size in ((b.iy0, b.iy1, b.y0, top, self.sizes[layer][0]),
                                          (b.ix0, b.ix1, b.x0, left, self.sizes[layer][1])):
            g0 = max(lo // s, pad // s)
            g1 = max(g0, min(hi // s, pad // s + size))
            out_local.append(slice(g0 - origin // s, g1 - origin // s))
            out_global.append(slice(g0 - pad // s, g1 - pad // s))
        return (out_local[0], out_local[1]), (out_global[0], out_global[1])


BlockCallback = Callable[[int, int, int], None]   # (pass 1 or 2, blocks done in this pass, blocks)


Weights = dict[str, torch.Tensor]   # a region's position weights per layer, on the whole image's feature grid


def _gram_sums(vgg: VGGFeatures, image255: torch.Tensor, layers: tuple[str, ...], grid: _Grid,
               keep_last: tuple[str, ...] = (), on_block: BlockCallback | None = None,
               weights: list[Weights | None] | None = None) -> tuple[list[dict[str, torch.Tensor]], tuple | None]:
    """Pass 1: sum over blocks of ``F F^T`` at each layer's owned positions (unnormalised), one dict per entry
    of ``weights``: None = plain Grams of ``layers``; a region's weights = its guided sums ``(F w) F^T`` at the
    layers it has, the weights cut with the same owned cells (default: one plain set).

    With ``keep_last`` the last block is forwarded with gradient for those layers and returned as
    (block, its input, its features) for pass 2 to reuse."""
    sets = [None] if weights is None else weights
    sums: list[dict[str, torch.Tensor]] = [{} for _ in sets]
    kept = None
    for n, b in enumerate(grid.blocks):
        if keep_last and n == len(grid.blocks) - 1:
            with torch.enable_grad():
                src, xb = grid.input(image255, b, grad=True)
                feats = _forward(vgg, xb, keep_last)
            kept = (b, src, feats)
        else:
            with torch.no_grad():
                _, xb = grid.input(image255, b)
                feats = _forward(vgg, xb, layers)
        with torch.no_grad():
            for name in layers:
                (rows, cols), (grows, gcols) = grid.owned(b, name)
                f = feats[name].detach()[0, :, rows, cols]
                f = f.reshape(f.shape[0], -1)
                for out, w in zip(sums, sets):
                    if w is not None and name not in w:
                        continue
                    fw = f if w is None else f * w[name][grows, gcols].reshape(1, -1)
                    gram = fw @ f.t()
                    out[name] = gram if name not in out else out[name].add_(gram)
        del feats
        if on_block is not None:
            on_block(1, n + 1, len(grid.blocks))
    return sums, kept


def tiled_grams(vgg: VGGFeatures, image255: torch.Tensor, layers: tuple[str, ...], inner: int,
                weights: Weights | None = None) -> dict[str, torch.Tensor]:
    """Gram matrices of an image of any size (e.g. a large style scan), normalised as
    :func:`bridge.engine.losses.gram_matrix`, computed in blocks of inner side ``inner``; with ``weights``
    (per layer, the image's feature grid) the guided Grams as :func:`bridge.engine.losses.guided_gram`."""
    height, width = image255.shape[-2:]
    grid = _Grid(vgg, layers, height, width, inner)
    (sums,), _ = _gram_sums(vgg, image255, layers, grid, weights=[weights])
    if weights is not None:
        return {k: v / (float(v.shape[0]) * float(weights[k].sum())) for k, v in sums.items()}
    return {k: v / float(v.shape[0] * grid.sizes[k][0] * grid.sizes[k][1]) for k, v in sums.items()}


def tiled_features(vgg: VGGFeatures, image255: torch.Tensor, layers: tuple[str, ...], inner: int) -> dict[str, torch.Tensor]:
    """Whole-image feature maps (e.g. the photo's content targets), assembled from blocks."""
    height, width = image255.shape[-2:]
    grid = _Grid(vgg, layers, height, width, inner)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for b in grid.blocks:
            feats = _forward(vgg, grid.input(image255, b)[1], layers)
            for name, f in feats.items():
                if name not in out:
                    out[name] = f.new_empty((1, f.shape[1], *grid.sizes[name]))
                (rows, cols), (grows, gcols) = grid.owned(b, name)
                out[name][..., grows, gcols] = f[..., rows, cols]
    return out


def tv_loss_and_grad(x: torch.Tensor, weight: float, grad: torch.Tensor, band_pixels: int = 1 << 20) -> float:
    """``weight * 0.5 * sum of squared neighbour differences`` (as losses.TVLoss), its gradient added into
    ``grad``; in bands of rows so a 24 MP image needs no image-sized temporaries."""
    if weight == 0:
        return 0.0
    height, width = x.shape[-2:]
    rows = max(1, band_pixels // max(1, width))
    total = 0.0
    with torch.no_grad():
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            band = x[..., r0:r1, :]
            dx = band[..., :, 1:] - band[..., :, :-1]
            total += float(dx.pow(2).sum(dtype=torch.float64))
            grad[..., r0:r1, 1:].add_(dx, alpha=weight)
            grad[..., r0:r1, :-1].sub_(dx, alpha=weight)
            r2 = min(height - 1, r1)
            if r2 > r0:
                dy = x[..., r0 + 1:r2 + 1, :] - x[..., r0:r2, :]
                total += float(dy.pow(2).sum(dtype=torch.float64))
                grad[..., r0 + 1:r2 + 1, :].add_(dy, alpha=weight)
                grad[..., r0:r2, :].sub_(dy, alpha=weight)
    return weight * 0.5 * total


class TiledObjective:
    """The Gatys loss of ``x`` (1 x 3 x H x W, RGB 0..255, the photo's size) and its exact gradient, in blocks.

    ``content255`` is the photo at the same size; ``grams`` the style targets per style layer (one style's or a
    blend's). ``inner`` is the inner block side; by default it comes from the memory budget
    (:func:`budget_bytes`). ``parts`` holds the last evaluation's content/style/tv/total. ``on_block`` is
    called after every block of both passes (a 24 MP evaluation takes minutes on a CPU: progress, and a
    place to raise for cancelling).
    """

    def __init__(self, vgg: VGGFeatures, content255: torch.Tensor, grams: dict[str, torch.Tensor],
                 settings: Settings, inner: int | None = None, on_block: BlockCallback | None = None,
                 targets: dict[str, torch.Tensor] | None = None, regions: list[RegionTarget] | None = None) -> None:
        if settings.normalize_gradients:
            raise SettingsError("normalize_gradients", "is not available with the tiled (large-image) computation: "
                                "each layer's gradient norm needs the whole image at once; turn it off")
        self.vgg = vgg
        self.content_layers = tuple(settings.content_layers)
        self.regions = [RegionTarget({k: w.detach() for k, w in r.weights.items()},
                                     {k: g.detach() for k, g in r.grams.items()}) for r in (regions or [])]
        self.style_layers = tuple(dict.fromkeys([*grams, *(k for r in self.regions for k in r.grams)]))
        self.layers = tuple(dict.fromkeys([*self.content_layers, *self.style_layers]))
        self.content_weight = float(settings.content_weight)
        self.style_weight = float(settings.style_weight * weight_factor(settings.style_strength))  # as objective.py
        self.tv_weight = float(settings.tv_weight)
        before, after = context(vgg.features, _deepest(self.layers))
        if inner is None:
            device = content255.device
            inner = inner_side(budget_bytes(settings, device), before, after, content255.dtype)
        self.inner = inner
        height, width = content255.shape[-2:]
        self.grid = _Grid(vgg, self.layers, height, width, inner)
        self.grams = {k: v.detach() for k, v in grams.items()}
        # the photo's content features (``tiled_features``): given when several styles share them
        self.targets = targets if targets is not None else tiled_features(vgg, content255, self.content_layers, inner)
        self.parts: dict[str, float] = {}
        self.on_block = on_block

    @property
    def blocks(self) -> list[Block]:
        return self.grid.blocks

    def _style_multipliers(self, all_sums: list[dict[str, torch.Tensor]]
                           ) -> tuple[float, dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Pass 1's sums -> the style loss and, per layer, the matrix that turns a block's features into their
        style gradient (plain Grams, then one set per region)."""
        # dL/dF = 4 w (G - A) F / (C^2 * C H W) for w * mean((G - A)^2), G = F F^T / (C H W)
        style_loss = 0.0
        mult: dict[str, torch.Tensor] = {}
        if self.grams:
            sums = all_sums.pop(0)
            for name in self.grams:
                c = sums[name].shape[0]
                norm = float(c * self.grid.sizes[name][0] * self.grid.sizes[name][1])
                diff = sums[name] / norm - self.grams[name]
                style_loss += self.style_weight * float(diff.pow(2).mean())
                mult[name] = diff * (4.0 * self.style_weight / (c * c * norm))
        # A region (losses.GuidedStyleLoss): w * share * mean((G - A)^2), G = (F W) F^T / (C M), M = sum W,
        # share = M / (H W): dL/dF = 4 w (G - A) F W / (C^3 H W), W being the position's weight.
        region_mult: list[dict[str, torch.Tensor]] = []
        for region, sums in zip(self.regions, all_sums):
            mults = {}
            for name, target in region.grams.items():
                c = sums[name].shape[0]
                positions = float(self.grid.sizes[name][0] * self.grid.sizes[name][1])
                mass = float(region.weights[name].sum(dtype=torch.float64))
                diff = sums[name] / (c * mass) - target
                style_loss += self.style_weight * (mass / positions) * float(diff.pow(2).mean())
                mults[name] = diff * (4.0 * self.style_weight / (c * c * c * positions))
            region_mult.append(mults)
        return style_loss, mult, region_mult

    def loss_and_grad(self, x: torch.Tensor, grad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, dloss/dx); ``grad``, if given, is overwritten and returned (saves a 288 MB buffer at 24 MP)."""
        grid = self.grid
        if tuple(x.shape[-2:]) != (grid.height, grid.width):
            raise ValueError(f"image is {tuple(x.shape[-2:])}, the objective was built for {(grid.height, grid.width)}")
        x = x.detach()
        sets: list[Weights | None] = ([None] if self.grams else []) + [r.weights for r in self.regions]
        all_sums, kept = _gram_sums(self.vgg, x, self.style_layers, grid, keep_last=self.layers,
                                    on_block=self.on_block, weights=sets)
        style_loss, mult, region_mult = self._style_multipliers(all_sums)
        del all_sums
        if grad is None:
            grad = torch.zeros_like(x)
        else:
            grad.zero_()
        content_loss = 0.0
        order = [len(grid.blocks) - 1, *range(len(grid.blocks) - 1)]
        for done, n in enumerate(order, start=1):
            b = grid.blocks[n]
            if kept is not None:
                _, src, feats = kept
                kept = None
            else:
                with torch.enable_grad():
                    src, xb = grid.input(x, b, grad=True)
                    feats = _forward(self.vgg, xb, self.layers)
            outputs, injected = [], []
            with torch.no_grad():
                for name in self.layers:
                    f = feats[name]
                    (rows, cols), (grows, gcols) = grid.owned(b, name)
                    g = torch.zeros_like(f)
                    own = f.detach()[0, :, rows, cols]
                    if name in mult:
                        c = own.shape[0]
                        g[0, :, rows, cols] = (mult[name] @ own.reshape(c, -1)).reshape(own.shape)
                    for region, mults in zip(self.regions, region_mult):
                        if name in mults:
                            w = region.weights[name][grows, gcols]
                            flat = own.reshape(own.shape[0], -1)
                            g[0, :, rows, cols] += (mults[name] @ flat).reshape(own.shape) * w
                    if name in self.targets:
                        numel = float(f.shape[1] * grid.sizes[name][0] * grid.sizes[name][1])
                        t = self.targets[name][0, :, grows, gcols]
                        d = own - t
                        content_loss += self.content_weight * float(d.pow(2).sum(dtype=torch.float64)) / numel
                        g[0, :, rows, cols] += d * (2.0 * self.content_weight / numel)
                    outputs.append(f)
                    injected.append(g)
            (gx,) = torch.autograd.grad(outputs, src, injected)
            del feats, outputs, injected
            (rows, cols), _ = grid.source(b)
            grad[..., rows, cols] += gx
            del gx, src
            if self.on_block is not None:
                self.on_block(2, done, len(order))
        tv = tv_loss_and_grad(x, self.tv_weight, grad)
        total = content_loss + style_loss + tv
        self.parts = {"content": content_loss, "style": style_loss, "tv": tv, "total": total}
        return torch.tensor(total, dtype=x.dtype), grad

    def closure(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """An L-BFGS closure for the single parameter ``x``: evaluates, writes ``x.grad``, returns the loss."""
        def evaluate() -> torch.Tensor:
            loss, x.grad = self.loss_and_grad(x, x.grad)
            return loss
        return evaluate
