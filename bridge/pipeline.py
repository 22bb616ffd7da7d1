"""What every front end does with a job, once: for now, how a failed run is told to the user.

The command line, the daemon and the hot folder each run the engine and must say what went wrong when it
fails. :func:`classify` decides once what kind of failure an exception is (the input, the settings, memory,
or the engine itself) and the words for it; each front end maps the :class:`Failure` to its own channel: the
CLI to an exit code, the daemon to the job's ``error``, the hot folder to ``error/NAME.txt`` with its own
advice (which names its own files: preset.json, in/).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FailureKind(str, enum.Enum):
    INPUT = "input"          # a file that cannot be read or is over a limit: another file, or a smaller one
    SETTINGS = "settings"    # settings, weights or device that cannot be honoured: change them
    MEMORY = "memory"        # ran out of memory: a smaller size or fewer styles
    ENGINE = "engine"        # anything else: a bug or a resource problem


@dataclass(frozen=True)
class Failure:
    """One failed run in words: ``message`` is one line naming what went wrong, ``advice`` what to do."""

    kind: FailureKind
    message: str
    advice: str
    exception: str           # the exception's type name (kept for logs and for unexpected failures)

    @property
    def exit_code(self) -> int:
        """The command line's code: 2 for what the user gives (input, settings), 1 for the run itself."""
        return 2 if self.kind in (FailureKind.INPUT, FailureKind.SETTINGS) else 1


MEMORY_ADVICE = "try a smaller size or fewer styles"
ADVICE = {
    FailureKind.INPUT: "use another file (JPEG, PNG, TIFF, WebP or PSD) or a smaller one",
    FailureKind.SETTINGS: "change the setting named in the message",
    FailureKind.MEMORY: MEMORY_ADVICE,
    FailureKind.ENGINE: "this looks like a bug or a resource problem; see the log, then retry",
}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, and torch's out-of-memory errors: ``torch.cuda.OutOfMemoryError`` and MPS say "out of
    memory", the CPU allocator "DefaultCPUAllocator: not enough memory" (all RuntimeErrors)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "not enough memory" in text


def classify(exc: BaseException) -> Failure:
    """The kind of failure ``exc`` is, its one-line message and the advice for it."""
    from .engine.device import DeviceError
    from .engine.vgg import WeightsError
    from .imaging import ImageError
    from .settings import SettingsError

    name = type(exc).__name__
    text = first_line(exc)
    if isinstance(exc, ImageError):
        kind = FailureKind.INPUT
    elif isinstance(exc, (SettingsError, WeightsError, DeviceError)):
        kind = FailureKind.SETTINGS
    elif is_out_of_memory(exc):
        return Failure(FailureKind.MEMORY, f"out of memory ({name})", MEMORY_ADVICE, name)
    else:
        return Failure(FailureKind.ENGINE, f"{name}: {text}" if text else name, ADVICE[FailureKind.ENGINE], name)
    return Failure(kind, text or name, ADVICE[kind], name)
