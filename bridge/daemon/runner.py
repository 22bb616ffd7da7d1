"""The seam between the queue and the engine: what runs one job (:data:`Runner`), and the real one.

The worker (:mod:`bridge.daemon.jobqueue`) hands a runner the job's decoded request and a
:class:`RunContext`; tests pass ``create_app(runner=...)`` a stand-in, the daemon :func:`run_engine`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from ..document.model import LayerStack
from ..engine.types import CancelToken, Progress
from .jobfiles import JobRequest


@dataclass
class RunContext:
    """What a runner gets besides the request: where to report, and whether to go on."""

    progress: Callable[[Progress], None]
    cancel: CancelToken
    set_phase: Callable[[str], None]
    wanted: Callable[[], bool]        # False once the client cancelled without keeping the result
    checkpoint: Any = None            # the job's engine Checkpoint (persist.ReportingCheckpoint): resume, pause


#: runner(request, ctx) -> (stack, settings JSON, partial) or None when there is nothing to keep
Runner = Callable[[JobRequest, RunContext], "tuple[LayerStack, dict[str, Any], bool] | None"]


def run_engine(request: JobRequest, ctx: RunContext) -> tuple[LayerStack, dict[str, Any], bool] | None:
    """The real pipeline: :func:`bridge.engine.stylize`, then the layer stack of the fusion document."""
    from ..document.stack import build_stack
    from ..engine import stylize

    started = time.perf_counter()
    result = stylize(request.content, request.styles, request.settings, ctx.progress, ctx.cancel,
                     checkpoint=ctx.checkpoint)
    engine_s = time.perf_counter() - started
    if result.paused or not ctx.wanted() or not result.images:
        return None
    ctx.set_phase("building layers")
    document = request.document
    masks = request.masks
    layers_started = time.perf_counter()
    stack = build_stack(result, document, masks=masks, run_name=request.name)
    layers_s = time.perf_counter() - layers_started
    # The job's own time, engine and layers: the engine's StylizeResult.seconds leaves out its set-up
    # (weights, style targets), so it could be smaller than timings.engine_s measured around it.
    stack.meta["seconds"] = round(time.perf_counter() - started, 3)
    stack.meta["timings"] = {"engine_s": round(engine_s, 3), "layers_s": round(layers_s, 3)}
    used = "mask" if masks is not None else document.reveal      # protocol 1's word, kept in the result
    settings = {**result.settings.to_dict(), **document.to_dict(), "mask_mode": used}
    return stack, settings, bool(result.cancelled)
