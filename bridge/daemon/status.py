"""What a client sees of a job while following it: its status JSON (docs/protocol.md) and its preview PNG.

Plain functions of a :class:`~bridge.daemon.store.Job`; the caller holds the store's lock while the job's
fields are read, so a status never mixes two moments of a running job.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..imaging import encode_array_png, to_dtype
from ..protocol import progress_text
from .store import Job, JobState


def encode_preview(preview: np.ndarray) -> bytes:
    """The engine's float 0..1 preview -> 8-bit PNG."""
    return encode_array_png(to_dtype(np.asarray(preview, dtype=np.float32), np.uint8), level=6)


def _percent_eta(job: Job, now: float) -> tuple[float, float | None]:
    """How far the job is (percent, 99 at most until done) and the seconds left: the engine's estimate
    (stage-weighted, from the measured speed), else elapsed time scaled by the fraction done."""
    p = job.progress
    done = job.status is JobState.DONE
    fraction = 1.0 if done else (p.fraction if p else 0.0)
    percent = 100.0 if done else min(99.0, round(fraction * 100.0, 1))
    eta = None
    if job.status is JobState.RUNNING and p and p.eta_seconds is not None:
        eta = round(p.eta_seconds, 1)
    elif job.status is JobState.RUNNING and job.started and p and fraction > 0.0:
        elapsed = now - job.started
        eta = round(max(0.0, elapsed / fraction * (1.0 - fraction)), 1)
    elif done:
        eta = 0.0
    return percent, eta


def _progress_fields(job: Job) -> dict[str, Any]:
    """Where the engine is: stage, style and iteration (None until the first progress report)."""
    p = job.progress
    return {
        "stage": p.stage if p else None,
        "stages": p.stages if p else None,
        "stage_size": p.stage_size if p else None,
        "stage_iteration": p.iteration if p else None,
        "stage_iterations": p.stage_iterations if p else None,
        "style_index": p.style_index if p else None,
        "style_count": p.styles if p else None,
        "style_name": p.style_name if p else None,
        "iteration": p.done_iterations if p else 0,
        "iterations": p.total_iterations if p else None,
        "loss": p.loss if p else None,
    }


def status_json(job: Job, queue_position: int | None, now: float | None = None) -> dict[str, Any]:
    """The job status JSON of docs/protocol.md (plus a few extra keys); ``queue_position``: 1 = next to run."""
    now = time.time() if now is None else now
    percent, eta = _percent_eta(job, now)
    base = f"/v1/jobs/{job.id}"
    out = {
        "id": job.id,
        "status": job.status.value,
        "phase": job.phase,
        "name": job.name,
        "width": job.width,
        "height": job.height,
        "styles": list(job.styles),
        **_progress_fields(job),
        "percent": percent,
        "eta_s": eta,
        "elapsed_s": round((job.finished or now) - job.started, 2) if job.started else None,
        "error": job.error,
        "queue_position": queue_position,
        "partial": job.partial,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "memory_estimate": job.estimate,
        "preview_url": f"{base}/preview" if job.preview is not None else None,
        "result_url": f"{base}/result" if job.result is not None else None,
        "psd_url": f"{base}/result.psd" if job.result is not None else None,
        "working_size": list(job.working_size) if job.working_size else None,
        "priority": job.priority,
        "resumed": job.resumed,
        "warnings": list(job.warnings),
        "node": dict(job.node) if job.node else None,   # the cluster node it runs or ran on (serve --ray)
    }
    out["message"] = progress_text(out)     # the same words in every client
    return out
