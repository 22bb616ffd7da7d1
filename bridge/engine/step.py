"""One stage of one job: the optimiser's iterations (L-BFGS or Adam) on the stage's objective, keeping the best
image, with the size of L-BFGS's first step set here (torch's own is far too small: see LBFGS_FIRST_STEP)."""

from __future__ import annotations

import math

import torch

from ..settings import Settings
from .objective import Objective
from .report import Cancelled, Paused, Reporter
from .resume import Restore, Saver

# Largest pixel change (of 0..255) of each stage's first L-BFGS step. torch's own first step is
# 1/|gradient|_1 (~1e-10 here): it changes nothing, and the curvature guessed from it often sends the
# second step to a loss 10-200x higher that takes 5-25 iterations to undo. 16-32 halve the final-stage
# iterations to reach pastiche's loss (bench/README.md); 1-2 are too small to fix the guess.
LBFGS_FIRST_STEP = 32.0
# The first step after resuming mid-stage from the best image alone (the checkpoint has no L-BFGS history:
# above RESUME_STATE_BYTES, or an older file): 32 px from a half-converged image costs more than it gains;
# 2-8 end ~7% above the uninterrupted run's loss 7 iterations later on the tests' 96 px case, 32 px 29%.
LBFGS_RESUME_STEP = 8.0


def _optimisers_without_dynamo() -> None:
    """Spare every L-BFGS run the import of ``torch._dynamo`` (~1.2 s of CPU: a third of a small CLI run).

    torch wraps ``Optimizer.add_param_group`` (called by ``__init__``), ``zero_grad``, ``state_dict`` and
    ``load_state_dict`` in ``torch._disable_dynamo``, whose first call imports the compiler only to mark them
    "never compile", and caches that mark on the function as ``__dynamo_disable``. The engine never compiles, so
    the mark is set here to the function itself. Nothing changes where torch wraps them otherwise (the mark is then
    unused). Adam's ``step`` imports the compiler itself (torch's ``_use_grad_for_differentiable``): with
    ``optimizer = "adam"`` the import stays. tests/test_engine_step.py checks that L-BFGS runs without it. (A program
    that imports the engine and also compiles its own code with ``torch.compile`` would see these methods traced
    instead of skipped: nothing in stylebridge does.)"""
    disable = getattr(torch, "_disable_dynamo", None)
    inner = getattr(disable(lambda: None), "__code__", None) if callable(disable) else None
    if inner is None:
        return
    for cls in (torch.optim.Optimizer, torch.optim.LBFGS):
        for attr in vars(cls).values():
            fn = getattr(attr, "__wrapped__", None)
            if getattr(attr, "__code__", None) is inner and fn is not None and not hasattr(fn, "__dynamo_disable"):
                setattr(fn, "__dynamo_disable", fn)


_optimisers_without_dynamo()


def optimise_stage(x0: torch.Tensor, objective: Objective, settings: Settings, iterations: int,
                   reporter: Reporter, *, start: int = 0, history: int = 100, saver: Saver | None = None,
                   restore: Restore | None = None) -> tuple[torch.Tensor, dict[str, float], str | None]:
    """One stage for one style, its iterations ``start + 1 .. iterations`` (``start`` > 0: resumed from a
    checkpoint; with ``restore`` from the optimiser's saved state, ``x0`` being its iterate, exactly as the
    uninterrupted run). Saves the checkpoint (``saver``) every interval and on pause. Returns (best image
    0..255, its losses, None / "cancel" / "pause")."""
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
        opt = _optimizer(x, settings, history, restore)
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
            scale_first_step(opt, x.grad, LBFGS_RESUME_STEP if start > 0 else LBFGS_FIRST_STEP)
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
    except Cancelled:
        return best["image"], best["parts"], "cancel"
    except Paused:
        save(reporter.done_in_stage)
        return best["image"], best["parts"], "pause"
    return best["image"], best["parts"], None


def _optimizer(x: torch.Tensor, settings: Settings, history: int, restore: Restore | None) -> torch.optim.Optimizer:
    """The stage's optimiser for ``x``: L-BFGS (one evaluation per step, ``history`` pairs) or Adam, with the
    optimiser's saved state when resuming from one (``restore``)."""
    opt: torch.optim.Optimizer
    if settings.optimizer == "lbfgs":
        opt = torch.optim.LBFGS([x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=-1,
                                tolerance_change=-1)
    else:
        opt = torch.optim.Adam([x], lr=settings.learning_rate)
    if restore is not None:
        opt.state[x] = dict(restore.optimizer)
    return opt


def scale_first_step(opt: torch.optim.LBFGS, grad: torch.Tensor | None, step: float = LBFGS_FIRST_STEP) -> None:
    """Set lr so that L-BFGS's first step (t = lr * min(1, 1/|g|_1) along -g) moves the pixel with the
    largest gradient by ``step`` (LBFGS_FIRST_STEP; see that constant for why)."""
    if grad is None:
        return
    largest = float(grad.abs().max())
    total = float(grad.abs().sum())
    if not (math.isfinite(largest) and math.isfinite(total)) or largest == 0.0:
        return
    opt.param_groups[0]["lr"] = step / (largest * min(1.0, 1.0 / total))
