"""The seam between the queue and the engine: what runs one job (:data:`Runner`), and the real one.

The worker (:mod:`bridge.daemon.jobqueue`) hands a runner the job's decoded request and a
:class:`RunContext`; tests pass ``create_app(runner=...)`` a stand-in, the daemon :func:`run_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..document.model import LayerStack
from ..engine.types import CancelToken, Progress
from ..pipeline import LoadedJob, render


@dataclass
class RunContext:
    """What a runner gets besides the request: where to report, and whether to go on."""

    progress: Callable[[Progress], None]
    cancel: CancelToken
    set_phase: Callable[[str], None]
    wanted: Callable[[], bool]        # False once the client cancelled without keeping the result
    checkpoint: Any = None            # the job's engine Checkpoint (persist.ReportingCheckpoint): resume, pause
    job_id: str = ""                  # the daemon's id of the job (a cluster runner names its shared checkpoint so)
    # where the job runs, told by a runner that runs it elsewhere (bridge.daemon.cluster): node, address, pid, attempt...
    placed: Callable[[dict[str, Any]], None] = lambda info: None


#: runner(request, ctx) -> (stack, settings JSON, partial) or None when there is nothing to keep
Runner = Callable[[LoadedJob, RunContext], "tuple[LayerStack, dict[str, Any], bool] | None"]


def run_engine(request: LoadedJob, ctx: RunContext) -> tuple[LayerStack, dict[str, Any], bool] | None:
    """The real pipeline (:func:`bridge.pipeline.render`): the engine, then the layer stack of the fusion document;
    None when the run paused, gave nothing, or the client cancelled without keeping the result."""
    rendered = render(request, progress=ctx.progress, cancel=ctx.cancel, checkpoint=ctx.checkpoint,
                      keep=lambda result: not result.paused and ctx.wanted() and bool(result.images),
                      on_layers=lambda: ctx.set_phase("building layers"))
    if rendered is None:
        return None
    document, result = request.document, rendered.result
    used = "mask" if request.masks is not None else document.reveal      # protocol 1's word, kept in the result
    settings = {**result.settings.to_dict(), **document.to_dict(), "mask_mode": used}
    return rendered.stack, settings, bool(result.cancelled)
