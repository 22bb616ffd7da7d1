"""The daemon's jobs as records: where each job is (:class:`JobState`), what it holds (:class:`Job`), and
the table of them (:class:`JobStore`), which also decides how long a finished one is kept.

Finished jobs are kept ``retention_s`` seconds, then dropped with their folder (a janitor thread runs
:meth:`JobStore.clean`); their results beyond ``memory_budget`` bytes move to disk, oldest first
(:func:`~bridge.daemon.results.spill_over_budget`). One lock (:attr:`JobStore.lock`) guards the records:
the queue (:mod:`bridge.daemon.jobqueue`) shares it, so the worker and the HTTP threads see one state.
"""

from __future__ import annotations

import enum
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import protocol
from ..engine.types import CancelToken, Progress
from .jobfiles import JobFiles
from .memory import working_size
from .results import JobResult, spill_over_budget

log = logging.getLogger("stylebridge.daemon")


class JobState(str, enum.Enum):
    """Where a job is: the wire's job state (:data:`bridge.protocol.STATES`), the ``status`` of the job JSON."""

    QUEUED = "queued"
    PAUSED = "paused"          # a batch job stopped at a checkpoint for an interactive one; resumes after it
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        """True once the job has ended (its state no longer changes)."""
        return self.value in protocol.TERMINAL


@dataclass
class Job:
    """One submitted job: its uploads until it runs, its progress and preview while it runs, then its result."""

    id: str
    files: JobFiles | None             # the uploads on disk until the job ends
    name: str
    created: float = field(default_factory=time.time)
    status: JobState = JobState.QUEUED
    phase: str = "queued"
    started: float | None = None
    finished: float | None = None
    progress: Progress | None = None
    preview: np.ndarray | None = None
    preview_serial: int = 0
    preview_cache: tuple[int, bytes] | None = None
    error: str | None = None
    cancel: CancelToken = field(default_factory=CancelToken)
    keep_result: bool = False
    partial: bool = False
    result: JobResult | None = None
    width: int = 0
    height: int = 0
    styles: list[str] = field(default_factory=list)
    estimate: int = 0                  # bytes, estimate_job_memory at submission
    working_size: tuple[int, int] | None = None   # (w, h) of the last optimisation stage
    priority: str = "interactive"
    warnings: list[str] = field(default_factory=list)   # e.g. a checkpoint that could not be saved
    resumed: bool = False              # taken over from a daemon that is gone (or paused): goes on from a checkpoint
    finish_on_resume: bool = False     # cancelled with keep_result while waiting: runs to its first iteration, ends
    node: dict | None = None           # where it runs or ran, when a cluster runs it (bridge.daemon.cluster): id, address...

    @classmethod
    def from_files(cls, job_id: str, files: JobFiles) -> "Job":
        """A queued job for uploads already on disk (a submission, or a job taken over)."""
        return cls(id=job_id, files=files, name=files.name or files.content_name,
                   width=files.content_shape.width, height=files.content_shape.height,
                   styles=[name for name, _ in files.styles], estimate=files.estimate,
                   working_size=working_size(files.content_shape, files.settings), priority=files.priority)

    def finish(self, status: JobState, error: str | None = None) -> None:
        """End the job in ``status``; its uploads are not needed any more, whatever the outcome (caller holds
        the store's lock)."""
        self.status = status
        self.phase = status.value
        self.error = error if error is not None else self.error
        self.finished = time.time()
        if self.files is not None:
            shutil.rmtree(self.files.folder, ignore_errors=True)
            self.files = None
        if status is JobState.FAILED:
            self.preview = None


class JobStore:
    """The jobs this daemon holds, by id, under one lock; finished ones expire after ``retention_s``."""

    def __init__(self, folder: Path, *, retention_s: float, memory_budget: int) -> None:
        """``folder``: this daemon's own folder; a job's result files go in ``folder/<job id>/``."""
        self.folder = folder
        self.retention_s = retention_s
        self.memory_budget = memory_budget
        self.lock = threading.RLock()
        self._jobs: dict[str, Job] = {}

    def result_folder(self, job_id: str) -> Path:
        return self.folder / job_id

    def add(self, job: Job) -> None:
        with self.lock:
            self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self.lock:
            return list(self._jobs.values())

    def kept(self) -> int:
        """How many finished jobs are held (their results until they expire)."""
        with self.lock:
            return sum(1 for j in self._jobs.values() if j.status.terminal)

    def forget(self, job_id: str) -> None:
        """Drop a finished job and its files now (the client has what it needs)."""
        with self.lock:
            job = self._jobs.get(job_id)
            if job is None or not job.status.terminal:
                return
            del self._jobs[job_id]
            job.result = None
            job.preview = None
        shutil.rmtree(self.result_folder(job_id), ignore_errors=True)

    def clean(self, now: float | None = None) -> int:
        """Drop finished jobs older than the retention time; returns how many."""
        now = time.time() if now is None else now
        with self.lock:
            old = [j for j in self._jobs.values()
                   if j.status.terminal and j.finished is not None and now - j.finished > self.retention_s]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            job.result = None
            job.preview = None
            shutil.rmtree(self.result_folder(job.id), ignore_errors=True)
        if old:
            log.info("dropped %d expired job(s)", len(old))
        return len(old)

    def clean_until(self, stop: threading.Event) -> None:
        """The janitor thread: :meth:`clean` every quarter of the retention time (1 s to 1 min) until ``stop``."""
        interval = max(1.0, min(60.0, self.retention_s / 4))
        while not stop.wait(interval):
            try:
                self.clean()
            except Exception:  # noqa: BLE001 - the janitor must not die
                log.exception("cleaning expired jobs failed")

    def enforce_budget(self, new: JobResult) -> None:
        """Spill in-memory results to disk, oldest first (``new`` last), while over the budget."""
        with self.lock:
            done = sorted((j for j in self._jobs.values() if j.result is not None and j.result.in_memory),
                          key=lambda j: j.finished or 0.0)
            held = [j.result for j in done if j.result is not None] + [new]
        spill_over_budget(held, self.memory_budget)
