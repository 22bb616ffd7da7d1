"""What every front end does with a job, once: run it into a layer stack, and say how it failed.

:func:`render` takes a :class:`LoadedJob` (the photo, the styles, the settings and masks, decoded and checked by
the front end) through the engine into the fusion document's layer stack (:class:`Rendered`, with its timings);
the daemon's worker and the hot folder's in-process engine both use it, so a job runs the same way from either.
:func:`classify` decides once what kind of failure an exception is (the input, the settings, memory, or the
engine itself) and the words for it; each front end maps the :class:`Failure` to its own channel: the CLI to an
exit code, the daemon to the job's ``error``, the hot folder to ``error/NAME.txt`` with its own advice (which
names its own files: preset.json, in/).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .document.model import LayerStack
    from .engine.checkpoint import Checkpoint
    from .engine.types import CancelToken, Progress, StyleInput, StylizeResult
    from .imaging import Picture
    from .settings import DocumentSettings, Settings


@dataclass
class LoadedJob:
    """Everything a run needs, already decoded and checked by its front end."""

    content: "Picture"
    styles: "list[StyleInput]"
    settings: "Settings"
    document: "DocumentSettings"
    mask: np.ndarray | None = None     # H x W, the content's dtype: one mask for every style layer
    style_masks: dict[str, np.ndarray] = field(default_factory=dict)   # style layer name -> its own mask
    name: str | None = None            # the run's name (the Styles group's), None: from the styles
    # style name -> where it is painted (H x W float32 0..1 at the photo's size): one fused run (issue #22)
    regions: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def masks(self) -> dict[str, np.ndarray] | np.ndarray | None:
        """What :func:`~bridge.document.stack.build_stack` takes: one array, a mapping, or None (reveal)."""
        if not self.style_masks:
            return self.mask
        if self.mask is None:
            return dict(self.style_masks)
        return {s.name: self.style_masks.get(s.name, self.mask) for s in self.styles}


@dataclass
class Rendered:
    """A finished (or, cancelled with its best so far, partial) run and its layer stack."""

    result: "StylizeResult"
    stack: "LayerStack | None"         # None: asked for images only (``layers=False``)
    engine_s: float
    layers_s: float


def render(job: LoadedJob, *, progress: "Callable[[Progress], None] | None" = None,
           cancel: "CancelToken | None" = None, checkpoint: "Checkpoint | None" = None,
           keep: "Callable[[StylizeResult], bool]" = lambda result: bool(result.images),
           on_layers: Callable[[], None] = lambda: None, layers: bool = True) -> Rendered | None:
    """The engine's run (:func:`bridge.engine.stylize`), then the layer stack of the fusion document (unless
    ``layers`` is False: the CLI writing images); None when ``keep(result)`` says the run gave nothing to keep
    (paused, cancelled without a result). ``on_layers`` is called as the layers begin (the daemon's phase). The
    stack's ``meta`` carries ``seconds`` (engine and layers: the engine's own leaves out its set-up) and
    ``timings``."""
    from .document.stack import build_stack
    from .engine import stylize

    started = time.perf_counter()
    styles = with_regions(job.styles, job.regions)
    result = stylize(job.content, styles, job.settings, progress, cancel, checkpoint=checkpoint)
    engine_s = time.perf_counter() - started
    if not keep(result):
        return None
    if not layers:
        return Rendered(result, None, engine_s, 0.0)
    on_layers()
    layers_started = time.perf_counter()
    stack = build_stack(result, job.document, masks=job.masks, run_name=job.name, regions=job.regions or None)
    layers_s = time.perf_counter() - layers_started
    stack.meta["seconds"] = round(time.perf_counter() - started, 3)
    stack.meta["timings"] = {"engine_s": round(engine_s, 3), "layers_s": round(layers_s, 3)}
    return Rendered(result, stack, engine_s, layers_s)


def with_regions(styles: "list[StyleInput]", regions: dict[str, np.ndarray]) -> "list[StyleInput]":
    """The StyleInputs the engine takes: each style with its region (``StyleInput.region``), or unchanged when
    the job has none. Copies: the job's own inputs stay as they were (a paused job runs again from them)."""
    if not regions:
        return list(styles)
    unknown = sorted(set(regions) - {s.name for s in styles})
    if unknown:
        from .settings import SettingsError
        raise SettingsError("regions", f"{unknown[0]!r}: no such style (styles: "
                                       f"{', '.join(s.name for s in styles)})")
    return [dataclasses.replace(style, region=regions.get(style.name)) for style in styles]


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
