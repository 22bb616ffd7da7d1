"""The job queue: one engine worker thread, FIFO, progress, cancel, retention of results.

The engine saturates the GPU/CPU, so jobs run strictly one after another in a single worker
thread; any number of HTTP clients submit and poll. A job lives on its own: a client that
disconnects does not stop it, and a job that crashes fails alone with its error recorded.
Finished results are kept ``retention_s`` seconds, then dropped with their folder. Big layer
stacks are moved out of memory to ``.npy`` files (memory-mapped back on demand) once the
in-memory results exceed ``memory_budget`` bytes.

Memory is bounded by design: a queued job holds only the paths of its uploads (:class:`JobFiles`,
in the daemon's data folder); they are decoded when the job starts and removed when it ends. The
HTTP layer refuses a job whose :func:`estimate_job_memory` is over ``Limits.max_job_memory``, so
the daemon's images never need more than one job's estimate plus ``memory_budget`` of results.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import threading
import time
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

try:
    import fcntl
except ImportError:     # Windows: fall back to "is that process id alive"
    fcntl = None  # type: ignore[assignment]

from ..document.model import Group, Layer, LayerStack
from ..engine.types import CancelToken, Progress
from ..imaging import encode_array_png, to_dtype
from ..settings import LIMITS, SERVICE
from .. import protocol
from ..protocol import progress_text
from . import persist
from .jobfiles import JobFiles, JobRequest
from .memory import working_size

log = logging.getLogger("stylebridge.daemon")

#: The states a job ends in; the wire's home is the protocol client (a test checks they agree with JobState).
TERMINAL: tuple[str, ...] = protocol.TERMINAL


class JobState(str, enum.Enum):
    """Where a job is: the ``status`` of the protocol's job JSON."""

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
        return self.value in TERMINAL


def preview_png(preview: np.ndarray) -> bytes:
    """The engine's float 0..1 preview -> 8-bit PNG."""
    return encode_array_png(to_dtype(np.asarray(preview, dtype=np.float32), np.uint8), level=6)


# ------------------------------------------------------------------------------------------------
# requests, results, jobs
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# uploads waiting on disk, and what a job will cost
# ------------------------------------------------------------------------------------------------


@dataclass
class JobResult:
    """A finished layer stack with its items numbered in :meth:`LayerStack.walk` order."""

    stack: LayerStack
    items: list[tuple[Layer | Group, int | None]]   # (item, index of its parent group)
    settings: dict[str, Any]
    folder: Path
    in_memory: bool = True
    psd_lock: threading.Lock = field(default_factory=threading.Lock)
    json_cache: dict[str, Any] | None = None

    @classmethod
    def from_stack(cls, stack: LayerStack, settings: dict[str, Any], folder: Path) -> "JobResult":
        items: list[tuple[Layer | Group, int | None]] = []
        index_of: dict[int, int] = {}
        for item, parent in stack.walk():
            index_of[id(item)] = len(items)
            items.append((item, None if parent is None else index_of[id(parent)]))
        return cls(stack, items, settings, folder)

    def nbytes(self) -> int:
        total = 0
        for item, _ in self.items:
            for arr in (getattr(item, "pixels", None), item.mask):
                if isinstance(arr, np.ndarray) and not isinstance(arr, np.memmap):
                    total += arr.nbytes
        return total

    def spill(self) -> None:
        """Move the pixel arrays to ``.npy`` files and memory-map them back: frees RAM, keeps access."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for index, (item, _) in enumerate(self.items):
            for attr in ("pixels", "mask"):
                arr = getattr(item, attr, None)
                if isinstance(arr, np.ndarray) and not isinstance(arr, np.memmap):
                    path = self.folder / f"{index}.{attr}.npy"
                    np.save(path, arr)
                    setattr(item, attr, np.load(path, mmap_mode="r"))
        self.in_memory = False


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


@dataclass
class Job:
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


class QueueFull(Exception):
    """Too many jobs wait already; ``waiting`` is how many."""

    def __init__(self, waiting: int) -> None:
        self.waiting = waiting
        super().__init__(f"{waiting} jobs are waiting")


class JobManager:
    """FIFO queue + one worker thread + a janitor for expired results."""

    def __init__(self, runner: Runner, folder: Path, *, retention_s: float = SERVICE.keep_results_minutes * 60.0,
                 memory_budget: int = LIMITS.memory_budget, checkpoint_s: float = SERVICE.checkpoint_seconds,
                 fixed: dict[str, Any] | None = None) -> None:
        """``checkpoint_s``: how often a running job's checkpoint is saved at least; ``fixed``: the settings
        this daemon fixes (device, weights), applied to the unfinished jobs it takes over."""
        self.runner = runner
        self.folder = Path(folder)
        self.retention_s = retention_s
        self.memory_budget = memory_budget
        self.checkpoint_s = float(checkpoint_s)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._current: Job | None = None
        self.completed = 0
        adopted = self._reset_folder()
        self._adopt(adopted, fixed)
        self._worker = threading.Thread(target=self._work, name="stylebridge-engine", daemon=True)
        self._janitor = threading.Thread(target=self._clean_loop, name="stylebridge-janitor", daemon=True)

    def _reset_folder(self) -> list[Path]:
        """One sub-folder per daemon process (two daemons may share a data folder). The unfinished jobs
        of daemons that are gone (killed, crashed, stopped) are taken over (:func:`persist.adopt`: their
        folders move into this daemon's); the rest of their folders (finished results) is removed.

        Each daemon holds a lock on its folder's ``.lock`` for its lifetime, so a folder whose lock
        can be taken is an orphan even when its process id has been reused meanwhile."""
        parent = self.folder
        parent.mkdir(parents=True, exist_ok=True)
        # Orphans stay locked by this daemon while it takes them over: two daemons starting at once never
        # both move (or one remove) the same unfinished job.
        held: dict[Path, Any] = {}
        for child in parent.iterdir():
            if child.is_dir() and (child.name.isdigit() or child.name.startswith("previous-")):
                taken, handle = _hold_orphan(child)
                if taken:
                    held[child] = handle
        self.folder = parent / str(os.getpid())
        if self.folder in held:          # a previous daemon with our process id (containers): take it over too
            aside = parent / f"previous-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(self.folder, aside)
            held[aside] = held.pop(self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir()
        self._lock_file = open(self.folder / ".lock", "wb")     # noqa: SIM115 - held until the process ends
        if fcntl is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.uploads = self.folder / "uploads"     # queued jobs' files; one sub-folder per job
        self.uploads.mkdir()
        adopted: list[Path] = []
        for orphan in sorted(held, key=lambda p: p.stat().st_mtime if p.exists() else 0.0):
            try:
                adopted += persist.adopt(orphan, self.uploads)
                shutil.rmtree(orphan, ignore_errors=True)
            finally:
                if held[orphan] is not None:
                    held[orphan].close()
        return adopted

    def _adopt(self, folders: list[Path], fixed: dict[str, Any] | None) -> None:
        """Queue the unfinished jobs taken over from dead daemons, oldest first, under their own ids. A job
        folder that cannot be resumed is set aside in ``quarantine/`` beside the daemons' folders (one warning
        line): a damaged one never stops the daemon nor the others' resumption."""
        aside = self.folder.parent / persist.QUARANTINE
        for stored in persist.load_adopted(folders, fixed, aside):
            files = stored.files
            try:
                job = self._new_job(stored.job_id, files)
            except Exception as exc:  # noqa: BLE001 - e.g. settings no stage ladder can be made of
                persist.quarantine(files.folder, aside, f"{type(exc).__name__}: {exc}")
                continue
            job.created, job.resumed, job.phase = stored.created or job.created, True, "queued (resumes)"
            self._jobs[job.id] = job
            self._queue.append(job)
            log.info("job %s taken over from a previous daemon: %s, resumes from its checkpoint", job.id, job.name)

    @staticmethod
    def _new_job(job_id: str, files: JobFiles) -> Job:
        return Job(id=job_id, files=files, name=files.name or files.content_name,
                   width=files.content_shape.width, height=files.content_shape.height,
                   styles=[name for name, _ in files.styles], estimate=files.estimate,
                   working_size=working_size(files.content_shape, files.settings), priority=files.priority)

    def upload_folder(self) -> Path:
        """A new empty folder for one submission's files (removed by the job, or by the caller if the
        submission is refused)."""
        folder = self.uploads / uuid.uuid4().hex
        folder.mkdir()
        return folder

    def start(self) -> None:
        self._worker.start()
        self._janitor.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; unfinished jobs stay on disk for the next daemon (:mod:`.persist`).

        The running job pauses (the engine saves its checkpoint at its next iteration); if it has not
        stopped after half of ``timeout`` it is cancelled. Queued and paused jobs keep their folders
        (description, uploads, checkpoint); finished results are removed."""
        self._stop.set()
        with self._lock:
            if self._current is not None:
                self._current.cancel.pause()
            self._wake.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout / 2)
            if self._worker.is_alive():
                with self._lock:
                    if self._current is not None:
                        self._current.cancel.cancel()
                self._worker.join(timeout / 2)
        with self._lock:
            keep = {job.files.folder.name for job in self._jobs.values()
                    if not job.status.terminal and job.files is not None
                    and (job.files.folder / persist.JOB_FILE).is_file()}
        if not keep:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            for child in self.folder.iterdir():
                if child.name not in (".lock", "uploads"):
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            for child in self.uploads.iterdir():
                if child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)
            log.info("%d unfinished job(s) kept in %s: the next daemon on this data folder resumes them",
                     len(keep), self.folder)
        self._lock_file.close()

    # -- client side ---------------------------------------------------------------------------
    def submit(self, files: JobFiles, max_queued: int | None = None) -> Job:
        """Queue a job; :class:`QueueFull` when ``max_queued`` jobs already wait (their uploads on disk)."""
        job = self._new_job(uuid.uuid4().hex, files)
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
            self._jobs[job.id] = job
            self._queue.append(job)
            current = self._current
            if (job.priority != "batch" and current is not None and current.priority == "batch"
                    and current.status is JobState.RUNNING and not current.cancel.cancelled):
                current.cancel.pause()       # it stops at a checkpoint and resumes after this one
                current.phase = "pausing"
                log.info("job %s pauses for interactive job %s", current.id, job.id)
            self._wake.notify_all()
        log.info("job %s queued: %s, %dx%d, styles %s", job.id, job.name, job.width, job.height, job.styles)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str, keep_result: bool = False) -> Job | None:
        """Queued: cancelled at once. Running: the engine stops at its next iteration; with
        ``keep_result`` the job then ends ``done`` with ``partial: true`` and the best image so far,
        otherwise it is ``cancelled`` at once. Waiting with a checkpoint (paused, or taken over after a
        restart) and ``keep_result``: it runs next just long enough to get its best image back, then ends
        like a running one. Finished jobs are left as they are."""
        with self._lock:
            job = self._jobs.get(job_id)
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
                self._finish(job, JobState.CANCELLED)
            else:
                job.cancel.cancel()
                if keep_result:
                    job.keep_result = True
                    job.phase = "finishing"
                else:
                    self._finish(job, JobState.CANCELLED)
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
            out = {"queued": len(self._queue), "running": int(self._current is not None
                                                              and self._current.status is JobState.RUNNING),
                   "paused": sum(1 for j in self._queue if j.status is JobState.PAUSED)}
            out["kept"] = sum(1 for j in self._jobs.values() if j.status.terminal)
            return out

    def status(self, job: Job) -> dict[str, Any]:
        """The job status JSON of docs/protocol.md (plus a few extra keys)."""
        with self._lock:
            p = job.progress
            now = time.time()
            done = job.status is JobState.DONE
            fraction = 1.0 if done else (p.fraction if p else 0.0)
            percent = 100.0 if done else min(99.0, round(fraction * 100.0, 1))
            eta = None
            if job.status is JobState.RUNNING and p and p.eta_seconds is not None:
                eta = round(p.eta_seconds, 1)      # the engine's: stage-weighted, from the measured speed
            elif job.status is JobState.RUNNING and job.started and p and fraction > 0.0:
                elapsed = now - job.started
                eta = round(max(0.0, elapsed / fraction * (1.0 - fraction)), 1)
            elif done:
                eta = 0.0
            base = f"/v1/jobs/{job.id}"
            out = {
                "id": job.id,
                "status": job.status.value,
                "phase": job.phase,
                "name": job.name,
                "width": job.width,
                "height": job.height,
                "styles": list(job.styles),
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
                "percent": percent,
                "eta_s": eta,
                "elapsed_s": round((job.finished or now) - job.started, 2) if job.started else None,
                "error": job.error,
                "queue_position": self.queue_position(job),
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
            }
        out["message"] = progress_text(out)     # the same words in every client
        return out

    def preview_png(self, job: Job) -> bytes | None:
        with self._lock:
            preview, serial, cache = job.preview, job.preview_serial, job.preview_cache
        if preview is None:
            return None
        if cache is not None and cache[0] == serial:
            return cache[1]
        data = preview_png(preview)
        with self._lock:
            job.preview_cache = (serial, data)
        return data

    # -- worker --------------------------------------------------------------------------------
    def _finish(self, job: Job, status: JobState, error: str | None = None) -> None:
        job.status = status
        job.phase = status.value
        job.error = error if error is not None else job.error
        job.finished = time.time()
        if job.files is not None:           # the uploads are not needed any more, whatever the outcome
            shutil.rmtree(job.files.folder, ignore_errors=True)
            job.files = None
        if status is JobState.FAILED:
            job.preview = None

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while not self._queue and not self._stop.is_set():
                    self._wake.wait(timeout=5.0)
                if self._stop.is_set():
                    return
                job = self._order()[0]
                self._queue.remove(job)
                files = job.files
                job.status = JobState.RUNNING
                job.phase = "finishing" if job.finish_on_resume else "starting"
                job.started = time.time()
                self._current = job
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
                        self._finish(job, JobState.FAILED, error=_error_text(exc))
            finally:
                files = None
                with self._lock:
                    self._current = None
                    self.completed += 1

    def _run(self, job: Job, files: JobFiles | None) -> None:
        assert files is not None

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

        checkpoint = persist.ReportingCheckpoint(persist.checkpoint_path(files.folder), self.checkpoint_s,
                                                 on_failure=checkpoint_failed, bound=persist.checkpoint_bound(files))
        outcome = None
        if not job.cancel.cancelled:     # decoded only now (queued jobs hold no pixels), released on return
            request = self._load(job, files)
            outcome = self.runner(request, RunContext(on_progress, job.cancel, set_phase, wanted, checkpoint))
        if outcome is None and self._paused(job):
            return
        result = None
        if outcome is not None and wanted():
            result = JobResult.from_stack(outcome[0], outcome[1], self.folder / job.id)
            self._enforce_budget(result)     # before 'done', so clients never race a spill
        with self._lock:
            if job.status.terminal:      # cancelled without keep_result while it ran
                log.info("job %s cancelled", job.id)
                return
            if result is None:
                self._finish(job, JobState.CANCELLED,
                             error="cancelled before any result existed" if job.keep_result else None)
                return
            job.result = result
            partial = outcome[2]
            job.partial = bool(partial)
            self._finish(job, JobState.DONE)
            log.info("job %s done in %.1f s%s", job.id, job.finished - (job.started or job.finished),
                     " (partial)" if partial else "")

    def _load(self, job: Job, files: JobFiles) -> JobRequest:
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

    def _enforce_budget(self, new: JobResult) -> None:
        """Spill in-memory results to disk, oldest first (``new`` last), while over the budget."""
        with self._lock:
            done = sorted((j for j in self._jobs.values() if j.result is not None and j.result.in_memory),
                          key=lambda j: j.finished or 0.0)
            held = [j.result for j in done if j.result is not None] + [new]
        total = sum(r.nbytes() for r in held)
        for result in held:
            if total <= self.memory_budget:
                break
            size = result.nbytes()
            try:
                result.spill()
                total -= size
            except OSError as exc:
                log.warning("could not move a result to disk (%s): %s", result.folder, exc)
                break

    def forget(self, job_id: str) -> None:
        """Drop a finished job and its files now (the client has what it needs)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.status.terminal:
                return
            del self._jobs[job_id]
            job.result = None
            job.preview = None
        shutil.rmtree(self.folder / job_id, ignore_errors=True)

    # -- retention -----------------------------------------------------------------------------
    def clean(self, now: float | None = None) -> int:
        """Drop finished jobs older than the retention time; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            old = [j for j in self._jobs.values()
                   if j.status.terminal and j.finished is not None and now - j.finished > self.retention_s]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            job.result = None
            job.preview = None
            shutil.rmtree(self.folder / job.id, ignore_errors=True)
        if old:
            log.info("dropped %d expired job(s)", len(old))
        return len(old)

    def _clean_loop(self) -> None:
        interval = max(1.0, min(60.0, self.retention_s / 4))
        while not self._stop.wait(interval):
            try:
                self.clean()
            except Exception:  # noqa: BLE001 - the janitor must not die
                log.exception("cleaning expired jobs failed")


def _hold_orphan(folder: Path) -> tuple[bool, Any]:
    """(True, the open lock file, held: close it when done) when ``folder``'s daemon is gone, else
    (False, None). Each daemon holds its folder's ``.lock`` for its lifetime, so a lock that can be taken
    means the daemon is gone even when its process id was reused; a folder without one (or no ``fcntl``):
    its process id is not alive. The lock stays taken while the folder is taken over."""
    lock = folder / ".lock"
    if fcntl is None or not lock.is_file():
        return (not folder.name.isdigit() or not _alive(int(folder.name))), None
    try:
        handle = open(lock, "rb")       # noqa: SIM115 - returned to the caller, who closes it
    except OSError:
        return False, None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return False, None
    return True, handle


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _error_text(exc: BaseException) -> str:
    """One line for the job's ``error``: what went wrong (:func:`bridge.pipeline.classify`), with the advice
    for running out of memory."""
    from ..pipeline import FailureKind, classify
    failure = classify(exc)
    return f"{failure.message}: {failure.advice}" if failure.kind is FailureKind.MEMORY else failure.message