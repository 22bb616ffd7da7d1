"""A *faithful* preview: a small real Gatys run (the engine itself) with the job's own settings.

The instant preview (:mod:`.engine`) is a different method (a feed-forward network) and ignores the job's
settings; it can disagree with the real result (issue 23: the swirls style dissolves the cup in the result,
the instant preview keeps a crisp cup). This one runs :func:`bridge.engine.stylize` with the job's own
losses, weights, ``style_strength``, ``original_colors`` and ``style_scale``, but on the photo reduced to
``PREVIEW.faithful_size`` (~176 px long side), one whole-image stage (no coarse-to-fine ladder, no tiling, no
checkpoint) and ``PREVIEW.faithful_iterations`` L-BFGS iterations. ``style_scale`` is relative to the working
size, so the strokes keep their size relative to the frame: the small result looks like the full one
scaled down (bench/bench_preview_fidelity.py measures how closely).

What it changes of the job's settings (:func:`faithful_settings`): the schedule (size and iterations),
``preview_every`` (no progress images), ``style_blend_weights`` (one preview per style, no blend) and
``init`` 'file' (a preview never reads a file named in settings: it starts from the photo).
"""

from __future__ import annotations

import time
from typing import Sequence

from ..imaging import Picture
from ..settings import DEFAULTS, PREVIEW, Settings
from .engine import StylePreview, preview_size, resized, rgb8

METHOD = "gatys"          # what an answered item's ``method`` says
MIN_SIZE, MAX_SIZE = 16, 256     # accepted long sides (a preview, not a job); PREVIEW.faithful_size is the default


class PreviewCancelled(Exception):
    """The faithful preview was cancelled (the client went away, or the choice changed) before it finished."""


def faithful_settings(settings: Settings = DEFAULTS, long_side: int = PREVIEW.faithful_size,
                      iterations: int = PREVIEW.faithful_iterations) -> Settings:
    """The job's settings as a preview runs them: its losses and colour options, a small one-stage schedule."""
    return settings.replace(size=int(long_side), iterations=int(iterations), coarse_to_fine=False,
                            preview_every=0, style_blend_weights=None,
                            init="content" if settings.init == "file" else settings.init, init_image=None)


def faithful_preview(photo: Picture, style: Picture, *, settings: Settings = DEFAULTS, style_name: str | None = None,
                     long_side: int = PREVIEW.faithful_size, iterations: int = PREVIEW.faithful_iterations,
                     cancel: object | None = None) -> StylePreview:
    """``photo`` under ``style`` by a small real Gatys run with ``settings`` (see the module doc).

    The preview has the photo's aspect and ``long_side`` pixels on its long side (never more than the photo),
    8-bit RGB without alpha. ``cancel``: a :class:`bridge.engine.types.CancelToken`; when it is cancelled the
    run stops within an iteration and :class:`PreviewCancelled` is raised."""
    from ..engine import stylize
    from ..engine.types import StyleInput

    if not MIN_SIZE <= int(long_side) <= MAX_SIZE:
        raise ValueError(f"faithful preview size {long_side} is not between {MIN_SIZE} and {MAX_SIZE}")
    name = style_name or style.name
    start = time.perf_counter()
    size = preview_size(photo.width, photo.height, long_side)
    small = Picture(rgb=resized(rgb8(photo), size), name=photo.name)
    run = faithful_settings(settings, max(size), iterations)
    result = stylize(small, [StyleInput(name, style)], run, cancel=cancel)   # type: ignore[arg-type]
    if result.cancelled or not result.images:
        raise PreviewCancelled(f"the faithful preview of {name!r} was cancelled")
    picture = Picture(rgb=rgb8(result.images[0].picture), name=f"{name} (preview)")
    return StylePreview(name, picture, METHOD, time.perf_counter() - start)


def faithful_previews(photo: Picture, styles: Sequence[Picture], *, settings: Settings = DEFAULTS,
                      long_side: int = PREVIEW.faithful_size, iterations: int = PREVIEW.faithful_iterations,
                      cancel: object | None = None) -> list[StylePreview]:
    """One faithful preview per style, in order."""
    return [faithful_preview(photo, s, settings=settings, long_side=long_side, iterations=iterations, cancel=cancel)
            for s in styles]
