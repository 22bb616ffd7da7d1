"""The resume policy of a run with a checkpoint (:mod:`.checkpoint` holds the file format and the contract).

- :func:`load_state`: the saved state, if it is of this run (same fingerprint; the same seed when one is
  given); :func:`state_fits` refuses one that does not fit the run's ladder (another version's).
- :func:`start_of`: where a job resumes: the stage and iteration reached, the best image so far and, when the
  checkpoint holds it, the optimiser's own state (:class:`Restore`: the run goes on exactly as the
  uninterrupted one; without it the optimiser restarts from the best image).
- :class:`Saver`: saves at stage ends, every ``checkpoint.interval_s`` and on pause; mid-stage with the
  optimiser's state while it is below RESUME_STATE_BYTES.
- :func:`saved_images`: what a run cancelled before it went on gives (the best so far, as saved).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..imaging import Picture
from ..settings import Settings
from .checkpoint import RESUME_STATE_BYTES, Checkpoint, EngineState, FileCheckpoint, fingerprint
from .deliver import deliver
from .types import StyledImage, StyleInput

log = logging.getLogger(__name__)

# torch.optim state entries not saved: L-BFGS's two-loop scratch list (rebuilt by step(), written before read)
_OPTIMIZER_SCRATCH = frozenset({"al"})
# 0-d tensors torch.optim keeps on the CPU whatever the parameter's device (Adam's step count, not capturable)
_CPU_SCALARS = frozenset({"step"})


def load_state(checkpoint: Checkpoint | None, content: Picture, styles: list[StyleInput],
               settings: Settings) -> tuple[EngineState | None, str | None]:
    """(the checkpoint's state if it is of this run, else None; the run's fingerprint, None without a
    checkpoint). A :class:`FileCheckpoint` is told the fingerprint first, so that it skips another run's file."""
    if checkpoint is None:
        return None, None
    print_ = fingerprint(content, styles, settings)
    if isinstance(checkpoint, FileCheckpoint):
        checkpoint.fingerprint = print_
    state = checkpoint.load()
    if state is not None and (state.fingerprint != print_ or
                              (settings.seed is not None and state.seed != settings.seed)):
        state = None
    return state, print_


def state_fits(state: EngineState, dims: list[tuple[int, int]], iters: list[int], jobs: int) -> bool:
    """A matching fingerprint should mean a matching state; this also refuses one from another version."""
    if not (0 <= state.style_index < jobs and 0 <= state.stage < len(dims) and len(state.finished) == state.style_index
            and 0 <= state.iteration <= iters[state.stage]):
        return False
    return (tuple(state.image.shape) == (3, *dims[state.stage])
            and all(tuple(f.shape) == (3, *dims[-1]) for f in state.finished))


def saved_images(state: EngineState, content: Picture, guides: list[torch.Tensor], settings: Settings,
                 names: list[str]) -> list[StyledImage]:
    """What a run cancelled before it went on from ``state`` gives, as a cancel during the run would: the
    finished jobs' images, then the best image of the job it had reached (at the stage it had reached)."""
    images = [deliver(torch.from_numpy(image)[None], content, guides[-1], settings, names[j], {})
              for j, image in enumerate(state.finished)]
    if state.style_index < len(names):
        images.append(deliver(torch.from_numpy(state.image)[None], content, guides[state.stage], settings,
                              names[state.style_index], dict(state.losses)))
    return images


@dataclass
class Restore:
    """What a checkpoint with the optimiser's state gives back: its iterate, best image and optimiser."""

    current: torch.Tensor        # 1 x 3 x H x W, 0..255
    best: torch.Tensor
    best_loss: float
    losses: dict[str, float]
    optimizer: dict[str, object]  # torch.optim state for the parameter (tensors on their devices)


@dataclass
class Start:
    """Where a job's optimisation starts: stage, iterations of it done, the image (0..255) and, resuming
    mid-stage, the optimiser's saved state."""

    stage: int
    iteration: int
    image: torch.Tensor
    restore: Restore | None = None
    resumed: bool = False        # from a checkpoint (its stage may be done: saved at the stage's end)


def start_of(state: EngineState, name: str, iters: list[int], history: int, device: torch.device) -> Start:
    """Where the job ``state`` reached resumes (``history``: the L-BFGS pairs its stage keeps now). The state
    gives up its images (the start's image may be that very array: not two references)."""
    k0, i0 = state.stage, state.iteration
    x = torch.from_numpy(state.image)[None].to(device)
    restore = None
    if 0 < i0 < iters[k0]:
        restore = restore_of(state, x, history, device)
        log.info("resuming %s at stage %d iteration %d %s", name, k0 + 1, i0,
                 "with the optimiser's state (exact continuation)" if restore is not None else
                 "from the best image with a fresh optimiser (the checkpoint holds no optimiser state)")
    state.image = np.empty((3, 0, 0), np.float32)
    state.current, state.optimizer = None, None
    return Start(k0, i0, x, restore, resumed=True)


def restore_of(state: EngineState, best: torch.Tensor, history: int, device: torch.device) -> Restore | None:
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
    return Restore(torch.from_numpy(state.current)[None].to(device), best, float(state.best_loss),
                   dict(state.losses), restored)


class Saver:
    """Saves EngineStates to the checkpoint (if any): at stage ends, on pause, and every
    ``checkpoint.interval_s``. ``finished`` holds the finished jobs' last-stage images (only kept to be saved)."""

    def __init__(self, checkpoint: Checkpoint | None, print_: str | None, seed: int, elapsed0: float,
                 started: float, finished: list[np.ndarray]) -> None:
        self.checkpoint, self.print_, self.seed = checkpoint, print_, seed
        self.elapsed0, self.started, self.finished = elapsed0, started, finished
        self.interval = float(checkpoint.interval_s) if checkpoint is not None else math.inf
        self.last = time.perf_counter()
        self.job = self.stage = 0
        self.told = False    # the log line on this stage's optimiser state (kept or too large) was written

    def position(self, job: int, stage: int) -> None:
        self.job, self.stage, self.told = job, stage, False

    def due(self) -> bool:
        return self.checkpoint is not None and time.perf_counter() - self.last >= self.interval

    def finish(self, best: torch.Tensor) -> None:
        """A job is done: its last-stage image goes into every later save (at 24 MP each is 288 MB: none kept
        without a checkpoint)."""
        if self.checkpoint is not None:
            self.finished.append(best[0].detach().float().cpu().numpy())

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
                arrays = optimizer_state(optimizer, current)
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


def optimizer_state(optimizer: torch.optim.Optimizer, x: torch.Tensor
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
