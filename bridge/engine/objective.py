"""The loss a stage minimises, with its gradient: the Gatys loss of the whole image by autograd, or exactly
the same loss and gradient in blocks (:class:`.tiled.TiledObjective`) when the stage is too large for memory
(the stage's plan says which: :mod:`.plan`). Both check for cancel/pause before each evaluation; the tiled one
also after every block, with a Progress (a 24 MP evaluation takes many minutes on a CPU)."""

from __future__ import annotations

from typing import Union

import torch

from ..settings import Settings
from . import strength, tiled
from .losses import ContentLoss, GuidedStyleLoss, RegionTarget, StyleLoss, TVLoss
from .plan import StagePlan
from .report import Reporter
from .vgg import VGGFeatures


class WholeImage:
    """The Gatys loss of the whole image by autograd (the losses.py modules on ``vgg(x)``): sets x.grad."""

    def __init__(self, vgg: VGGFeatures, content: dict[str, torch.Tensor], grams: dict[str, torch.Tensor],
                 settings: Settings, reporter: Reporter, regions: list[RegionTarget] | None = None) -> None:
        s = settings
        self.vgg, self.reporter = vgg, reporter
        self.content_losses = {k: ContentLoss(v, s.content_weight, s.normalize_gradients) for k, v in content.items()}
        style_w = s.style_weight * strength.weight_factor(s.style_strength)
        self.style_losses = {k: StyleLoss(v, style_w, s.normalize_gradients) for k, v in grams.items()}
        # the fused job's regions: (layer, guided loss) pairs, every region at every layer where it has weight
        self.region_losses = [(k, GuidedStyleLoss(r.grams[k], r.weights[k], style_w, s.normalize_gradients))
                              for r in regions or [] for k in r.grams]
        self.tv = TVLoss(s.tv_weight)
        self.layers = tuple(dict.fromkeys([*self.content_losses, *self.style_losses,
                                           *(k for k, _ in self.region_losses)]))
        self.parts: dict[str, float] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.reporter.check()
        x.grad = None
        feats = self.vgg(x, self.layers)
        c = sum(loss(feats[k]) for k, loss in self.content_losses.items())
        st = (sum(loss(feats[k]) for k, loss in self.style_losses.items())
              + sum(loss(feats[k]) for k, loss in self.region_losses))
        st = st if isinstance(st, torch.Tensor) else x.new_zeros(())
        t = self.tv(x)
        total = c + st + t
        self.parts = {"content": float(c.detach()), "style": float(st.detach()), "tv": float(t.detach()),
                      "total": float(total.detach())}
        total.backward()
        return total.detach()


class InBlocks:
    """The same loss and gradient computed in blocks (tiled.TiledObjective); after every block checks for
    cancel/pause and sends a Progress (the reporter's ``block``)."""

    def __init__(self, objective: tiled.TiledObjective, reporter: Reporter) -> None:
        self.objective, self.reporter = objective, reporter
        objective.on_block = reporter.block
        self.parts: dict[str, float] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.reporter.check()
        loss, x.grad = self.objective.loss_and_grad(x, x.grad)
        self.parts = dict(self.objective.parts)
        return loss


Objective = Union[WholeImage, InBlocks]


def stage_objective(vgg: VGGFeatures, guide: torch.Tensor, content_feats: list[dict[str, torch.Tensor] | None],
                    k: int, grams: dict[str, torch.Tensor], settings: Settings, plan: StagePlan,
                    device: torch.device, reporter: Reporter, regions: list[RegionTarget] | None = None
                    ) -> Objective:
    """Stage ``k``'s objective (with ``regions``: the fused job's guided style losses; content and TV stay
    global); a tiled stage's content targets are computed here into ``content_feats[k]``
    (the loop drops them at the stage's end: they are large, and a no-grad pass costs ~1/3 of an iteration)."""
    if plan.inner is None:
        return WholeImage(vgg, content_feats[k] or {}, grams, settings, reporter, regions)
    photo255 = (guide * 255.0).to(device)
    if content_feats[k] is None:
        content_feats[k] = tiled.tiled_features(vgg, photo255, tuple(settings.content_layers), plan.inner)
    objective = tiled.TiledObjective(vgg, photo255, grams, settings, inner=plan.inner, targets=content_feats[k],
                                     regions=regions)
    return InBlocks(objective, reporter)
