"""The job queue: one engine worker thread, interactive jobs first, batch jobs paused for them, cancel.

The engine saturates the GPU/CPU, so jobs run strictly one after another in a single worker
thread; any number of HTTP clients submit and poll. A job lives on its own: a client that
disconnects does not stop it, and a job that crashes fails alone with its error recorded.
Interactive jobs run before batch ones (FIFO within each); a running batch job pauses at its
checkpoint when an interactive one arrives and resumes after it.

Memory is bounded by design: a queued job holds only the paths of its uploads (:class:`JobFiles`,
in the daemon's data folder); they are decoded when the job starts and removed when it ends. The
HTTP layer refuses a job whose :func:`~bridge.daemon.memory.estimate_job_memory` is over
``Limits.max_job_memory``, so the daemon's images never need more than one job's estimate plus
``memory_budget`` of results (kept by :class:`~bridge.daemon.store.JobStore`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engine.types import CancelToken, Progress
from ..settings import LIMITS, SERVICE
from . import folders, persist
from ..pipeline import LoadedJob
from .jobfiles import JobFiles
from .results import JobResult
from .runner import RunContext, Runner
from .status import encode_preview, status_json
from .store import Job, JobState, JobStore

log = logging.getLogger("stylebridge.daemon")


class QueueFull(Exception):
    """Too many jobs wait already; ``waiting`` is how many."""

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        super().__init__(f"{waiting} jobs are waiting")


class JobManager:
    """The queue + one worker thread, over the job store (and its janitor for expired results)."""

    def __init__(self, runner: Runner, folder: Path, *, retention_s: float = SERVICE.keep_results_minutes * 60.0,
                 memory_budget: int = LIMITS.memory_budget, checkpoint_s: float = SERVICE.checkpoint_seconds,
                 fixed: dict[str, Any] | None = None, slots: Callable[[], int] | None = None,
                 workers: int = 1) -> None:
        """``folder``: the data folder's ``jobs/`` (this daemon's own folder is made in it, :mod:`.folders`);
        ``checkpoint_s``: how often a running job's checkpoint is saved at least; ``fixed``: the settings
        this daemon fixes (device, weights), applied to the unfinished jobs it takes over; ``workers`` threads
        run jobs, at most ``slots()`` at once (a cluster's free places, :mod:`bridge.daemon.cluster`; default: one)."""
        self.runner = runner
        self.checkpoint_s = float(checkpoint_s)
        self._own = folders.claim(Path(folder))
        self.folder, self.uploads = self._own.path, self._own.uploads
        self.store = JobStore(self.folder, retention_s=retention_s, memory_budget=memory_budget)
        self._lock = self.store.lock
        self._queue: deque[Job] = deque()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._running: list[Job] = []     # the jobs the workers run now (one, unless a cluster runs them)
        self._slots = slots or (lambda: 1)
        self.completed = 0
        self.on_done: Callable[[Job], None] | None = None    # called (no lock held) as each job ends done
        self._adopt(self._own.adopted, fixed)
        self._workers = [threading.Thread(target=self._work, name=f"stylebridge-engine-{i}", daemon=True)
                         for i in range(max(1, workers))]
        self._janitor = threading.Thread(target=self.store.clean_until, args=(self._stop,),
                                         name="stylebridge-janitor", daemon=True)

    def _adopt(self, adopted: list[Path], fixed: dict[str, Any] | None) -> None:
        """Queue the unfinished jobs taken over from dead daemons, oldest first, under their own ids. A job
        folder that cannot be resumed is set aside in ``quarantine/`` beside the daemons' folders (one warning
        line): a damaged one never stops the daemon nor the others' resumption."""
        aside = self.folder.parent / persist.QUARANTINE
        for stored in persist.load_adopted(adopted, fixed, aside):
            files = stored.files
            try:
                job = Job.from_files(stored.job_id, files)
            except Exception as exc:  # noqa: BLE001 - e.g. settings no stage ladder can be made of
                persist.quarantine(files.folder, aside, f"{type(exc).__name__}: {exc}")
                continue
            job.created, job.resumed, job.phase = stored.created or job.created, True, "queued (resumes)"
            self.store.add(job)
            self._queue.append(job)
            log.info("job %s taken over from a previous daemon: %s, resumes from its checkpoint", job.id, job.name)

    def upload_folder(self) -> Path:
        """A new empty folder for one submission's files (removed by the job, or by the caller if the
        submission is refused)."""
        folder = self.uploads / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._janitor.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; unfinished jobs stay on disk for the next daemon (:mod:`.persist`).

        The running job pauses (the engine saves its checkpoint at its next iteration); if it has not
        stopped after half of ``timeout`` it is cancelled. Queued and paused jobs keep their folders
        (description, uploads, checkpoint); finished results are removed (:func:`folders.release`)."""
        self._stop.set()
        with self._lock:
            for job in self._running:
                job.cancel.pause()
            self._wake.notify_all()
        deadline = time.monotonic() + timeout / 2
        for worker in [w for w in self._workers if w.is_alive()]:     # (never started: nothing to join)
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in self._workers):
            with self._lock:
                for job in self._running:
                    job.cancel.cancel()
            deadline = time.monotonic() + timeout / 2
            for worker in [w for w in self._workers if w.is_alive()]:
                worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            keep = {job.files.folder.name for job in self.store.all()
                    if not job.status.terminal and job.files is not None
                    and (job.files.folder / persist.JOB_FILE).is_file()}
        folders.release(self._own, keep)

    # -- client side ---------------------------------------------------------------------------
    def submit(self, files: JobFiles, max_queued: int | None = None) -> Job:
        """Queue a job; :class:`QueueFull` when ``max_queued`` jobs already wait (their uploads on disk)."""
        job = Job.from_files(uuid.uuid4().hex, files)
        with self._lock:
            if max_queued is not None and len(self._queue) >= max_queued:
                raise QueueFull(len(self._queue))
        try:
            persist.save(files.folder, job.id, job.created, files)
        except OSError as exc:       # e.g. a full disk: the job runs, but would not survive a restart
            job.warnings.append(f"the job's description could not be saved ({exc.strerror or exc}): it runs, but "
                                "would not be resumed after a restart of the daemon; free some disk space in the "
                                "daemon's data folder")
        with self._lock:
            if max_queued is not None and len(self._queue) >= max_queued:
                raise QueueFull(len(self._queue))
            self.store.add(job)
            self._queue.append(job)
            self._pause_batch_for(job)
            self._wake.notify_all()
        log.info("job %s queued: %s, %dx%d, styles %s", job.id, job.name, job.width, job.height, job.styles)
        return job

    def _pause_batch_for(self, job: Job) -> None:
        """An interactive job arrived while a batch job runs: the batch job stops at a checkpoint and
        resumes after this one (caller holds the lock). With room for it (a cluster), none pauses."""
        if len(self._running) < self._slots():
            return
        batch = [j for j in self._running if j.priority == "batch"]
        current = batch[-1] if batch else None
        if (job.priority != "batch" and current is not None and current.priority == "batch"
                and current.status is JobState.RUNNING and not current.cancel.cancelled):
            current.cancel.pause()
            current.phase = "pausing"
            log.info("job %s pauses for interactive job %s", current.id, job.id)

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def jobs(self) -> list[Job]:
        return self.store.all()

    def forget(self, job_id: str) -> None:
        """Drop a finished job and its files now (:meth:`JobStore.forget`)."""
        self.store.forget(job_id)

    def cancel(self, job_id: str, keep_result: bool = False) -> Job | None:
        """Queued: cancelled at once. Running: the engine stops at its next iteration; with
        ``keep_result`` the job then ends ``done`` with ``partial: true`` and the best image so far,
        otherwise it is ``cancelled`` at once. Waiting with a checkpoint (paused, or taken over after a
        restart) and ``keep_result``: it runs next just long enough to get its best image back, then ends
        like a running one. Finished jobs are left as they are."""
        with self._lock:
            job = self.store.get(job_id)
            if job is None or job.status.terminal:
                return job
            if (job.status in (JobState.QUEUED, JobState.PAUSED) and job in self._queue and keep_result
                    and job.files is not None and persist.checkpoint_path(job.files.folder).is_file()):
                # Its best image so far is in its checkpoint: it runs next, stops at its first iteration
                # and ends done, partial, with that image (the engine returns images only from a run).
                job.keep_result = job.finish_on_resume = True
                job.phase = "finishing"
                self._wake.notify_all()
            elif job.status in (JobState.QUEUED, JobState.PAUSED) and job in self._queue:
                self._queue.remove(job)
                job.finish(JobState.CANCELLED)
            else:
                job.cancel.cancel()
                if keep_result:
                    job.keep_result = True
                    job.phase = "finishing"
                else:
                    job.finish(JobState.CANCELLED)
            log.info("job %s cancel requested (keep_result=%s)", job.id, keep_result)
            return job

    def queue_position(self, job: Job) -> int | None:
        """1 = next to run (interactive jobs first, then batch ones); None when not waiting."""
        with self._lock:
            if job.status not in (JobState.QUEUED, JobState.PAUSED):
                return None
            for i, queued in enumerate(self._order()):
                if queued is job:
                    return i + 1
            return None

    def _order(self) -> list[Job]:
        """The queue in the order the worker takes it: interactive jobs first (FIFO), then batch jobs."""
        return sorted(self._queue, key=lambda j: (not j.finish_on_resume, j.priority == "batch"))

    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {"queued": len(self._queue),
                   "running": sum(1 for j in self._running if j.status is JobState.RUNNING),
                   "paused": sum(1 for j in self._queue if j.status is JobState.PAUSED)}
            out["kept"] = self.store.kept()
            return out

    def status(self, job: Job) -> dict[str, Any]:
        """The job's status JSON (:func:`status.status_json`), read under the lock, with its queue position."""
        with self._lock:
            return status_json(job, self.queue_position(job))

    def preview_png(self, job: Job) -> bytes | None:
        """The job's latest preview as PNG, encoded once per preview the engine reported."""
        with self._lock:
            preview, serial, cache = job.preview, job.preview_serial, job.preview_cache
        if preview is None:
            return None
        if cache is not None and cache[0] == serial:
            return cache[1]
        data = encode_preview(preview)
        with self._lock:
            job.preview_cache = (serial, data)
        return data

    # -- worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while (not self._queue or len(self._running) >= self._slots()) and not self._stop.is_set():
                    self._wake.wait(timeout=5.0 if len(self._workers) == 1 else 1.0)
                if self._stop.is_set():
                    return
                job = self._order()[0]
                self._queue.remove(job)
                files = job.files
                job.status = JobState.RUNNING
                job.phase = "finishing" if job.finish_on_resume else "starting"
                job.started = time.time()
                self._running.append(job)
            try:
                self._run(job, files)
            except BaseException as exc:  # noqa: BLE001 - a crashing job fails alone
                from ..imaging import ImageError
                if isinstance(exc, ImageError):
                    log.warning("job %s failed: %s", job.id, exc)
                else:
                    log.exception("job %s failed", job.id)
                with self._lock:
                    if not job.status.terminal:
                        job.finish(JobState.FAILED, error=_error_text(exc))
            finally:
                files = None
                with self._lock:
                    self._running.remove(job)
                    self.completed += 1
                    self._wake.notify_all()

    def _context(self, job: Job, files: JobFiles) -> RunContext:
        """What the runner reports to (progress, phase, checkpoint failures: into the job, under the lock)
        and asks (whether the job still wants a result)."""

        def on_progress(progress: Progress) -> None:
            with self._lock:
                if progress.preview is not None:
                    job.preview = np.array(progress.preview, dtype=np.float32, copy=True)
                    job.preview_serial += 1
                job.progress = replace(progress, preview=None)
                if job.finish_on_resume and not job.cancel.cancelled:
                    job.cancel.cancel()          # the run has its best image back: stop and keep it
                if job.status is JobState.RUNNING and not job.cancel.cancelled and not job.cancel.paused:
                    job.phase = "optimizing"

        def set_phase(phase: str) -> None:
            with self._lock:
                if job.status is JobState.RUNNING:
                    job.phase = phase

        def wanted() -> bool:
            with self._lock:
                return job.status is JobState.RUNNING and (job.keep_result or not job.cancel.cancelled)

        def checkpoint_failed(path: Path) -> None:
            message = persist.checkpoint_failure_text(path, "in the daemon's data folder")
            log.warning("job %s: %s", job.id, message)
            with self._lock:
                if message not in job.warnings:
                    job.warnings.append(message)

        def placed(info: dict[str, Any]) -> None:
            with self._lock:
                job.node = dict(info)
                job.resumed = job.resumed or bool(info.get("resumed"))

        checkpoint = persist.ReportingCheckpoint(persist.checkpoint_path(files.folder), self.checkpoint_s,
                                                 on_failure=checkpoint_failed, bound=persist.checkpoint_bound(files))
        return RunContext(on_progress, job.cancel, set_phase, wanted, checkpoint, job.id, placed)

    def _run(self, job: Job, files: JobFiles | None) -> None:
        assert files is not None
        ctx = self._context(job, files)
        outcome = None
        if not job.cancel.cancelled:     # decoded only now (queued jobs hold no pixels), released on return
            request = self._load(job, files)
            outcome = self.runner(request, ctx)
        if outcome is None and self._paused(job):
            return
        result = None
        if outcome is not None and ctx.wanted():
            result = JobResult.from_stack(outcome[0], outcome[1], self.store.result_folder(job.id))
            self.store.enforce_budget(result)     # before 'done', so clients never race a spill
        with self._lock:
            if job.status.terminal:      # cancelled without keep_result while it ran
                log.info("job %s cancelled", job.id)
                return
            if result is None:
                job.finish(JobState.CANCELLED, error="cancelled before any result existed" if job.keep_result else None)
                return
            job.result = result
            partial = outcome[2]
            job.partial = bool(partial)
            job.finish(JobState.DONE)
            log.info("job %s done in %.1f s%s", job.id, job.finished - (job.started or job.finished),
                     " (partial)" if partial else "")
        if self.on_done is not None:
            try:
                self.on_done(job)
            except Exception:  # noqa: BLE001 - a hook (the speed meter's learning) never fails the worker
                log.exception("after job %s", job.id)

    def _load(self, job: Job, files: JobFiles) -> LoadedJob:
        """Decode the job's uploads; what reading dropped (:class:`~bridge.imaging.MetadataWarning`: an
        animation's later frames, a broken ICC profile) goes into the job's ``warnings``, once each."""
        from ..imaging import MetadataWarning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MetadataWarning)
            request = files.load()
        for w in caught:
            if not issubclass(w.category, MetadataWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            message = str(w.message)
            with self._lock:
                if message not in job.warnings:
                    job.warnings.append(message)
        return request

    def _paused(self, job: Job) -> bool:
        """After a run that returned nothing: a paused job (for an interactive one, or because the daemon
        stops) waits again, first of the batch jobs, with a fresh token; True if so."""
        with self._lock:
            if job.status.terminal or job.cancel.cancelled or not job.cancel.paused:
                return False
            job.status, job.phase = JobState.PAUSED, "paused"
            job.cancel = CancelToken()
            job.resumed = True
            if not self._stop.is_set():
                self._queue.appendleft(job)
                self._wake.notify_all()
            log.info("job %s paused at its checkpoint", job.id)
            return True


def _error_text(exc: BaseException) -> str:
    """One line for the job's ``error``: what went wrong (:func:`bridge.pipeline.classify`), with the advice
    for running out of memory."""
    from ..pipeline import FailureKind, classify
    failure = classify(exc)
    return f"{failure.message}: {failure.advice}" if failure.kind is FailureKind.MEMORY else failure.message
