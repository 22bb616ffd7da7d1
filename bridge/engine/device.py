"""Pick the compute device: ``auto`` means CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

from . import threads as _threads


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


def resolve_device(name: str = "auto") -> torch.device:
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise DeviceError("device 'cuda' requested but no CUDA GPU is available (use --device auto or cpu)")
    if name == "mps" and not mps:
        raise DeviceError("device 'mps' requested but Apple MPS is not available (use --device auto or cpu)")
    return torch.device(name)


def engine_device(name: str = "auto", threads: int = 0) -> torch.device:
    """The device a run uses (:func:`resolve_device`); on the CPU also this run's torch thread count, fixed
    (``threads`` > 0) or adapted to the load (0: :mod:`.threads`), set on the calling thread (the one that runs
    the optimisation: torch's count is per thread)."""
    device = resolve_device(name)
    _threads.begin(threads, device.type)
    return device
