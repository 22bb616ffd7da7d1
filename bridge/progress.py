"""Engine progress in the words every front end shows: one conversion, one formatter.

The formatter is :func:`bridge.protocol.progress_text` (its home is the protocol client the
GIMP plug-in runs, so GIMP, the daemon's ``message``, the CLI's bar and the hot folder's lines all say the
same thing). It reads a job-status dict; :func:`status_from_progress` turns an engine
:class:`~bridge.engine.types.Progress` into the keys it reads, the same keys the daemon's job status has.
"""

from __future__ import annotations

from typing import Any

from .protocol import progress_text

#: What progress_text puts before every line (GIMP's status bar needs it; a terminal line does not).
_PREFIX = "Stylebridge: "


def status_from_progress(p: Any, status: str = "running") -> dict[str, Any]:
    """A job-status dict (the daemon's keys: ``GET /v1/jobs/{id}``) for one engine Progress."""
    return {
        "status": status,
        "stage": p.stage,
        "stages": p.stages,
        "stage_size": p.stage_size,
        "stage_iteration": p.iteration,
        "stage_iterations": p.stage_iterations,
        "style_index": p.style_index,
        "style_count": p.styles,
        "style_name": p.style_name,
        "iteration": p.done_iterations,
        "iterations": p.total_iterations,
        "loss": p.loss,
        "best_loss": p.best_loss,
        "percent": round(100.0 * p.fraction, 1),
        "eta_s": None if p.eta_seconds is None else round(p.eta_seconds, 1),
    }


def status_line(status: dict[str, Any]) -> str:
    """progress_text without its ``Stylebridge:`` label, for a line that already says who speaks."""
    text = progress_text(status)
    return text[len(_PREFIX):] if text.startswith(_PREFIX) else text


def progress_line(p: Any) -> str:
    """The one progress text for an engine Progress (style, stage, iteration, time left)."""
    return status_line(status_from_progress(p))
