"""Gatys losses as small modules, with jcjohnson/neural-style's normalisations.

Content: mean squared error of features. Style: mean squared error of Gram matrices normalised by the
number of feature elements (C*H*W), per layer. TV: half the sum of squared neighbour differences (the
gradient neural-style's TVLoss applies). ``normalize_gradients`` divides each loss's gradient by its L1
norm on the way back, as neural-style's ``-normalize_gradients``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class _NormalizeGrad(torch.autograd.Function):
    """Identity forward; backward divides the gradient by its L1 norm (neural-style)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad / (grad.abs().sum() + 1e-8)


def normalize_grad(x: torch.Tensor) -> torch.Tensor:
    return _NormalizeGrad.apply(x)


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> C x C Gram matrix divided by C*H*W (batch summed; the engine uses N=1)."""
    n, c, h, w = features.shape
    flat = features.reshape(n * c, h * w) if n == 1 else features.permute(1, 0, 2, 3).reshape(c, n * h * w)
    return (flat @ flat.t()) / float(c * h * w * n)


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor, weight: float, normalize: bool = False) -> None:
        super().__init__()
        self.register_buffer("target", target.detach())
        self.weight = weight
        self.normalize = normalize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = normalize_grad(features)
        return self.weight * F.mse_loss(features, self.target)


class StyleLoss(nn.Module):
    """Gram-matrix loss against a target Gram (possibly a weighted mix of several styles' Grams)."""

    def __init__(self, target_gram: torch.Tensor, weight: float, normalize: bool = False) -> None:
        super().__init__()
        self.register_buffer("target", target_gram.detach())
        self.weight = weight
        self.normalize = normalize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = normalize_grad(features)
        return self.weight * F.mse_loss(gram_matrix(features), self.target)


MIN_MASS = 1e-6   # a region whose guidance sums to less than this at a layer takes no part in that layer's loss
SPARSE_SHARE = 0.9   # a region covering less than this share of a layer's positions gathers them first


@dataclass
class RegionTarget:
    """One region at one stage: per style layer its position weights (the layer's H x W, the whole image's
    feature grid: :func:`bridge.engine.targets.guidance`) and its target Gram. Layers where the region vanished
    (weights summing below MIN_MASS) are left out."""

    weights: dict[str, torch.Tensor]
    grams: dict[str, torch.Tensor]


def guided_gram(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """1 x C x H x W features and H x W position weights (a region's guidance T squared) -> the guided Gram
    ``(F T)(F T)^T / (C sum T^2)`` (Gatys et al. 2017); all-ones weights give :func:`gram_matrix`."""
    c = features.shape[1]
    flat = features.reshape(c, -1)
    w = weights.reshape(1, -1).to(flat.dtype)
    return ((flat * w) @ flat.t()) / (float(c) * w.sum())


class GuidedStyleLoss(nn.Module):
    """One region's style loss at one layer: the guided Gram against its style's target, times the region's share
    of the layer's positions (sum of weights / positions). Why the share: the guided Gram is normalised by the
    region's own weight, so each of its positions pulls ``1/share`` times harder than in a plain run; the share
    brings every pixel back to a plain run's style/content balance (an all-ones region is exactly StyleLoss)."""

    def __init__(self, target_gram: torch.Tensor, weights: torch.Tensor, weight: float,
                 normalize: bool = False) -> None:
        super().__init__()
        self.register_buffer("target", target_gram.detach())
        flat = weights.detach().reshape(-1)
        self.share = float(flat.sum()) / max(1, flat.numel())
        # Only the positions the region covers enter its Gram: regions that split the image then cost about one
        # plain Gram together, not one each (the Grams are ~1/5 of an evaluation on a CPU).
        index = torch.nonzero(flat > 0).reshape(-1)
        self.index: torch.Tensor | None = index if index.numel() < SPARSE_SHARE * flat.numel() else None
        self.register_buffer("weights", flat if self.index is None else flat[index])
        self.weight = weight
        self.normalize = normalize

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = normalize_grad(features)
        c = features.shape[1]
        flat = features.reshape(c, -1)
        if self.index is not None:
            flat = flat.index_select(1, self.index)
        return self.weight * self.share * F.mse_loss(guided_gram(flat[None, :, None], self.weights), self.target)


class TVLoss(nn.Module):
    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dx = image[..., :, 1:] - image[..., :, :-1]
        dy = image[..., 1:, :] - image[..., :-1, :]
        return self.weight * 0.5 * (dx.pow(2).sum() + dy.pow(2).sum())


def style_distance(features: dict[str, torch.Tensor], target_grams: dict[str, torch.Tensor]) -> float:
    """Unweighted sum over layers of the Gram MSE: one common yardstick for comparing images' style."""
    return float(sum(F.mse_loss(gram_matrix(features[k]), target_grams[k]) for k in target_grams))
