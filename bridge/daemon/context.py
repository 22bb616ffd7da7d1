"""What every route shares: the daemon's configuration, job manager, style library and preview engine.

:func:`create_app <bridge.daemon.app.create_app>` builds one :class:`Daemon` and keeps it in ``app.state``;
routes receive it with ``d: DaemonDep`` (a FastAPI dependency, so it stays out of the OpenAPI schema).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from ..settings import DEFAULTS, LIMITS, PREVIEW, SERVICE, Limits, Settings
from .jobqueue import JobManager
from .library import StyleLibrary
from .results import JobResult
from .store import Job
from .web import ApiError


def _resolved_default_device() -> str:
    from ..engine.device import resolve_device
    return str(resolve_device(SERVICE.device))


@dataclass
class DaemonConfig:
    """How one daemon runs; built by ``stylebridge serve`` from its options (defaults: :data:`SERVICE`)."""

    data_dir: Path
    host: str = SERVICE.host
    port: int = SERVICE.port
    token: str | None = None
    # The device jobs run on: SERVICE.device ("auto") resolved once, when the daemon starts (cpu, cuda, mps).
    resolved_device: str = field(default_factory=_resolved_default_device)
    weights: str = DEFAULTS.weights
    weights_path: str | None = None
    preset: str | None = None              # default preset for jobs that name none
    retention_s: float = SERVICE.keep_results_minutes * 60.0
    checkpoint_s: float = SERVICE.checkpoint_seconds    # a running job's checkpoint is saved at least this often
    limits: Limits = field(default_factory=lambda: LIMITS)
    extra_hosts: tuple[str, ...] = ()
    png_level: int | None = None           # zlib level of layer PNGs; None = per layer (0 or 1)
    # L-BFGS iterations of one faithful preview (POST /v1/previews method "faithful"; serve --faithful-iterations)
    faithful_iterations: int = PREVIEW.faithful_iterations

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass
class Daemon:
    """One running daemon's shared state."""

    config: DaemonConfig
    manager: JobManager
    library: StyleLibrary
    base_settings: Settings                 # the daemon's defaults: its device, weights and --preset
    previews: Any = None                    # bridge.daemon.previews.PreviewService
    started: float = field(default_factory=time.time)
    style_upload_lock: threading.Lock = field(default_factory=threading.Lock)

    def job(self, job_id: str) -> Job:
        """The job, or 404."""
        job = self.manager.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} (finished jobs are kept {self.config.retention_s / 60:.0f} min)")
        return job

    def result(self, job_id: str) -> tuple[Job, JobResult]:
        """The job and its result; 409 while it runs or when cancelled, 422 when it failed."""
        job = self.job(job_id)
        if job.result is None:
            if not job.status.terminal:
                raise ApiError(409, f"job {job_id} is {job.status}; the result is not ready yet",
                               status=job.status)
            raise ApiError(409 if job.status == "cancelled" else 422 if job.status == "failed" else 404,
                           f"job {job_id} has no result ({job.status}{': ' + job.error if job.error else ''})",
                           status=job.status)
        return job, job.result


def daemon(request: Request) -> Daemon:
    return request.app.state.daemon


DaemonDep = Annotated[Daemon, Depends(daemon)]
