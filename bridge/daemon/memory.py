"""How much memory a daemon job needs, known from image headers before anything is decoded.

The HTTP layer refuses a job (and a preview) whose estimate is over ``Limits.max_job_memory`` (default: half
of :func:`machine_memory`), so the daemon never holds more than one job's estimate plus its results' budget.
The optimisation's own share is the engine's run plan (:mod:`bridge.engine.plan`): one rule for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..settings import DocumentSettings, Settings


@dataclass(frozen=True)
class ImageShape:
    """What the header says about an image, enough to plan its memory without decoding it."""

    width: int
    height: int
    alpha: bool = False
    bit_depth: int = 8          # 8 or 16 after decoding
    file_bytes: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


# Per-pixel costs measured with the real engine on the CPU (torch 2.14, 2 threads; see
# docs/protocol.md "Memory"): 12 MP photo, size 64: ~29 B/px of native-size float work beyond the
# decoded photo and the layers (photo -> float32 0..1 and its resize, upsampling bands); 256 px and
# 512 px working sizes: ~150 MB plus ~1.5 KB per working pixel (VGG-19 activations and gradients)
# plus the L-BFGS history (engine.plan.WHOLE_BYTES_PER_PIXEL). Rounded up: the estimate is meant to be an upper bound.
NATIVE_FLOAT_BYTES = 32          # per photo (and style) pixel: float copies while resizing


ENGINE_BASE_BYTES = 200 * 2 ** 20   # optimiser state, Gram targets, temporaries of any size


def estimate_job_memory(content: ImageShape, styles: list[ImageShape], settings: Settings,
                        document: DocumentSettings, *, mask: ImageShape | None = None,
                        on_cpu: bool = True) -> int:
    """Bytes a job needs at most: decoded photo and styles, the working-size optimisation (CPU only:
    on a GPU it lives in GPU memory), the native-size float work and the output layers.

    Phases are added up rather than overlapped, so this errs on the high side (measured peaks
    are 0.4-0.8 of it: bench/bench_daemon_memory.py); it is computed from headers, before anything
    is decoded.
    """
    b = 2 if content.bit_depth == 16 else 1
    b_doc = (document.depth or content.bit_depth) // 8
    pixels = content.pixels
    total = pixels * (4 if content.alpha else 3) * b + content.file_bytes
    for style in styles:
        total += style.pixels * (4 if style.alpha else 3) * (2 if style.bit_depth == 16 else 1)
    if styles:
        total += max(s.pixels for s in styles) * NATIVE_FLOAT_BYTES + max(s.file_bytes for s in styles)
    total += ENGINE_BASE_BYTES
    if on_cpu:
        total += optimisation_bytes(content, settings)
    total += pixels * NATIVE_FLOAT_BYTES
    outputs = len(styles) + (1 if settings.style_blend_weights is not None else 0)
    alpha = 4 if content.alpha else 0
    # per output: its colour (shared with the layer, or copied beside its alpha) and its mask;
    # then Detail + its mask, the colours layer's mask, Refine (RGBA), the photo's layer if copied
    layer_samples = outputs * (4 + alpha) + 9 + alpha + (3 + alpha if b_doc != b else 0)
    total += pixels * b_doc * layer_samples
    if mask is not None:
        total += mask.pixels * (4 + b_doc) + mask.file_bytes
    return int(total)


def optimisation_bytes(content: ImageShape, settings: Settings) -> int:
    """The largest stage of the engine's own run plan (:func:`bridge.engine.plan.plan_run`): a whole-image
    stage with its L-BFGS history, or a tiled one (native size, large working sizes): one block from the
    memory budget, image-sized buffers and a short history. SettingsError when the budget cannot hold a
    stage (the message says what to do)."""
    from ..engine.plan import plan_run

    return plan_run(settings, content.width, content.height).peak_bytes(settings)


def working_size(content: ImageShape, settings: Settings) -> tuple[int, int]:
    """(width, height) of the last optimisation stage for this photo: known from the header alone."""
    from ..engine.plan import ladder_dims

    _, dims, _ = ladder_dims(settings, content.width, content.height)
    h, w = dims[-1]
    return w, h


def machine_memory() -> int | None:
    """Bytes of RAM this process may use: the machine's, or its cgroup's limit when lower; None if unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:
            total = int(text) if total is None else min(total, int(text))
        break
    return total


def default_job_memory() -> int:
    """``Limits.max_job_memory`` when it is None: half of :func:`machine_memory` (8 GiB if unknown)."""
    total = machine_memory()
    return total // 2 if total else 8 * 2 ** 30
