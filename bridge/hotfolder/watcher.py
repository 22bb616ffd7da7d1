"""The hot folder's main loop: notice files, take each complete one, run it once, carry on whatever happens.

watchdog's events only wake the loop; a periodic scan of ``in/`` is the source of truth, and a file is
taken once it is complete (:mod:`.stability`). Jobs a dead peer watcher left in working/ are resumed
every few seconds.

Job life cycle (each step journalled, see :mod:`.journal`)::

    in/NAME --claim--> working/ID--NAME --render--> .stylebridge/tmp/ID/STEM.psd
            --publish (link, no overwrite)--> out/STEM.psd --> original to done/NAME
    any JobError: original to error/NAME + error/NAME.txt (why, and what to do)

The claim and its lock are :mod:`.claim`'s, the render is the engine's (:mod:`.process`), the ending
(publish, done/, error/) is :mod:`.settle`'s, and a full disk is :mod:`.diskwait`'s.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

from watchdog.events import FileSystemEvent
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from ..engine.types import CancelToken
from ..job import JobSpec
from ..outputs import remove_stale_parts
from ..settings import SERVICE, SettingsError
from . import resume
from .claim import Claim, claim, clean_tmp, recover, remove_stale_locks
from .diskwait import ADVICE_TOO_BIG_FOR_DISK, Attempt, DiskWaits, is_disk_full
from .errors import ADVICE_DAEMON, ADVICE_ENGINE, ADVICE_SETTINGS, ADVICE_WRITE, Cancelled, JobError, Unavailable
from .inputs import Inputs, load_inputs, output_suffix
from .journal import Journal
from .layout import Layout
from .presets import resolve
from .process import Engine
from .report import REPEAT_LOG_SECONDS, Reporter
from .settle import Settler
from .stability import DEFAULT_STABLE_SECONDS, StabilityTracker, Wakeup


class _QuietStop(logging.Filter):
    """watchdog logs an ERROR when its inotify thread is stopped mid-read; it is harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStop())

RECOVER_EVERY_SECONDS = 5.0   # look for jobs left by a dead peer watcher this often

Report = Callable[..., None]   # report(stage, percent=None, style=""): one terminal line for this job


class Watcher:
    """Serves one hot folder.  ``run()`` returns 0 if every job succeeded, 1 if any went to error/.

    Nothing about one file, one name or a full disk may stop it: every step for one file is
    guarded (see :meth:`_take` and :meth:`_run_job`); a full disk makes the file wait (it is
    retried once space comes back) instead of failing it; anything else sends it to error/.
    """

    def __init__(self, root: Path, engine: Engine, *, stable_seconds: float = DEFAULT_STABLE_SECONDS,
                 once: bool = False, poll_seconds: float | None = None, reporter: Reporter | None = None,
                 checkpoint_seconds: float = SERVICE.checkpoint_seconds) -> None:
        self.layout = Layout(Path(root).resolve()).create()
        self.engine = engine
        self.once = once
        self.checkpoint_seconds = checkpoint_seconds     # the engine's checkpoint (resume.py) at least this often
        self.poll_seconds = poll_seconds if poll_seconds is not None else min(0.5, max(0.05, stable_seconds / 4))
        self.tracker = StabilityTracker(stable_seconds)
        self.reporter = reporter or Reporter()
        self.journal = Journal(self.layout.journal_path)
        self.disk = DiskWaits(self.layout, self.journal, self.reporter)
        self.settle = Settler(self.layout, self.journal, self.reporter, self.disk)
        self._stop = threading.Event()
        self._cancel: CancelToken | None = None
        self._refused: dict[str, tuple[int, int, int] | None] = {}   # in/ paths that could not be taken
        self._stuck: set[str] = set()           # jobs whose failure could not be settled: not retried
        self._said: dict[str, float] = {}       # rate limit of repeated log lines
        self._observer: BaseObserver | None = None
        self._handler: Wakeup | None = None

    # -- control --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop after pausing the current job (its checkpoint is saved: it resumes from there at the next
        start); callable from a signal handler or thread."""
        self._stop.set()
        cancel = self._cancel
        if cancel is not None:
            cancel.pause()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> int:
        wake: queue.Queue[FileSystemEvent] = queue.Queue()
        observer = self._observe(wake)
        try:
            self._guard("start-up", self._startup)
            self._loop(wake)
        finally:
            try:
                observer.stop()
                observer.join(timeout=5)
            except (RuntimeError, OSError):
                pass
            self.journal.close()
        return self._exit_code()

    def _observe(self, wake: "queue.Queue[FileSystemEvent]") -> BaseObserver:
        """Start watching in/ for events (they only wake the loop up)."""
        handler = Wakeup(self.tracker, wake)
        observer = Observer()
        try:
            observer.schedule(handler, str(self.layout.inbox), recursive=True)
            observer.start()
            self._observer, self._handler = observer, handler
        except OSError as exc:   # e.g. inotify watch limit: the periodic scan still finds every file
            self._say("observer", f"warning: no file-system events ({exc}); scanning every "
                                  f"{self.poll_seconds:g} s instead")
        return observer

    def _loop(self, wake: "queue.Queue[FileSystemEvent]") -> None:
        """Scan in/ until stopped (with --once: until nothing is left), resuming orphaned jobs now and then."""
        last_recover = time.monotonic()
        while not self._stop.is_set():
            finished = self._guard("scan", self._tick)
            if finished:
                break
            if time.monotonic() - last_recover > RECOVER_EVERY_SECONDS:
                self._guard("resume", self._resume_orphans)
                last_recover = time.monotonic()
            try:
                wake.get(timeout=self.poll_seconds)
                while True:             # drain a burst of events
                    wake.get_nowait()
            except queue.Empty:
                pass

    def _exit_code(self) -> int:
        """1 if any job went to error/ or still waits for disk space, else 0."""
        waiting = len(self.disk.jobs)
        if waiting:
            self.reporter.line(str(self.layout.root), f"{waiting} file(s) wait in working/ for disk space; "
                                                      "they resume at the next start")
        return 1 if (self.settle.failed or waiting or self.disk.blocked) else 0

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one step of the loop; an unexpected error is logged (rate-limited), never fatal."""
        try:
            return fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - the watcher outlives any one failure
            if is_disk_full(exc):
                self.disk.block_all(exc)
            else:
                self._say(f"{what}:{type(exc).__name__}:{exc}", f"warning: {what} failed: "
                          f"{type(exc).__name__}: {exc}; carrying on", traceback_too=True)
            if self.once and what == "scan":
                return self.disk.blocked
            return False

    def _tick(self) -> bool:
        """One pass over in/; True when --once has nothing left to do."""
        self._recreate_missing_folders()
        if self.disk.still_blocked():
            return self.once
        pending = self.layout.inputs()
        if self.once and not pending:
            return True
        keys = {str(p) for p in pending}
        for key in [k for k in self._refused if k not in keys]:
            del self._refused[key]
        for path in self.tracker.ready(pending):
            if self._stop.is_set() or self.disk.blocked:
                break
            self._take(path)
        return False

    def _recreate_missing_folders(self) -> None:
        """Someone deleted a folder (e.g. in the Finder): recreate it and watch it again."""
        layout = self.layout
        if all(d.is_dir() for d in (layout.inbox, layout.working, layout.state, layout.locks, layout.tmp)):
            return
        layout.create()
        if self._observer is not None and self._handler is not None:
            self._observer.unschedule_all()
            self._observer.schedule(self._handler, str(layout.inbox), recursive=True)
        self.reporter.line(str(layout.root), "recreated missing folders")

    def _startup(self) -> None:
        names = ", ".join(f"{d.name}/" for d in (self.layout.inbox, self.layout.out, self.layout.done,
                                                   self.layout.error))
        self.reporter.line(str(self.layout.root), f"watching ({names})")
        check = getattr(self.engine, "check", None)
        problem = check() if callable(check) else None
        if problem:
            self.reporter.line(str(self.layout.root), f"warning: {problem}")
        self._guard("tidy-up", lambda: remove_stale_parts((self.layout.out, self.layout.done, self.layout.error)))
        self._guard("resume", self._resume_orphans)      # first: it locks (or finishes) jobs whose tmp/ counts
        self._guard("tidy-up", lambda: clean_tmp(self.layout))
        self._guard("tidy-up", lambda: remove_stale_locks(self.layout))
        self._guard("tidy-up", lambda: resume.clean(self.layout))

    def _resume_orphans(self) -> None:
        """Run the jobs left in working/: a dead watcher's, or this one's that waited for the daemon or disk."""
        if self._stop.is_set() or self.disk.blocked:
            return
        jobs = recover(self.layout, self.journal, skip=self._stuck | self.disk.not_ready())
        for i, job in enumerate(jobs):
            if self._stop.is_set() or self.disk.blocked:
                _unlock(jobs[i:])
                break
            if job.job_id in self.disk.jobs:
                report_line = "retrying now that there is more disk space"
            else:
                report_line = "resuming after an interrupted run"
            try:
                self.journal.append("resumed", job.job_id, rel=job.rel)
            except OSError:
                _unlock(jobs[i:])
                raise
            self.reporter.line(job.rel, report_line)
            self._run_job(job)

    def _say(self, key: str, text: str, *, rel: str | None = None, traceback_too: bool = False) -> None:
        """Log a line, at most once a minute for the same ``key`` (a loop must not flood the terminal)."""
        now = time.monotonic()
        if now - self._said.get(key, -1e9) < REPEAT_LOG_SECONDS:
            return
        self._said[key] = now
        self.reporter.line(rel or str(self.layout.root), text)
        if traceback_too:
            try:
                traceback.print_exc()
            except (OSError, ValueError):
                pass

    # -- taking one file ------------------------------------------------------------------

    def _take(self, path: Path) -> None:
        """Claim one stable file from in/ and run it; any problem stays with this file."""
        key = str(path)
        sig = _signature(path)
        if key in self._refused and self._refused[key] == sig:
            return                          # could not be taken, and it has not changed since
        try:
            job = claim(self.layout, self.journal, path)
        except OSError as exc:
            if is_disk_full(exc):
                raise                       # nothing can be journalled: the whole loop waits
            self._refused[key] = sig
            self.reporter.line(_rel_or_name(self.layout, path),
                               f"cannot take it ({type(exc).__name__}: {exc.strerror or exc}); it stays in in/ "
                               "and is tried again when it changes (check the folder's permissions, and "
                               "that in/'s sub-folders are on the same disk as the hot folder)")
            return
        finally:
            self.tracker.forget(path)
        if job is not None:
            self._run_job(job)

    def _run_job(self, job: Claim) -> None:
        """:meth:`handle`, plus what to do when even settling the job fails."""
        try:
            self.handle(job)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. error/ not writable: leave the file, keep going
            if is_disk_full(exc):
                self.disk.defer(job, exc, self.layout.root)
                return
            self._stuck.add(job.job_id)
            self._say(f"stuck:{job.job_id}", f"could not settle this file ({type(exc).__name__}: {exc}); "
                      "it stays in working/ until the watcher is restarted", rel=job.rel, traceback_too=True)
            job.lock.release()

    # -- one job --------------------------------------------------------------------------

    def handle(self, job: Claim) -> bool:
        """Run one claimed job to done/ or error/; True on success.  Holds ``job.lock`` until settled.

        A full disk (ENOSPC/EDQUOT) at any step is not the file's fault: the job stays in working/
        and waits (see :meth:`.DiskWaits.defer`), unless its output could never fit.
        """
        report: Report = lambda stage, pct=None, style="": self.reporter.line(job.rel, stage, pct, style)  # noqa: E731
        self._cancel = CancelToken()
        if self._stop.is_set():
            self._cancel.pause()
        attempt = Attempt(self.layout.root)
        try:
            if job.state is not None and self.settle.finish_recovered(job, report):
                return True
            self._run_steps(job, report, attempt)
            return True
        except Cancelled:
            self.journal.try_append("interrupted", job.job_id)
            report("stopped; it stays in working/ and resumes at the next start")
            job.lock.release()
        except Unavailable as exc:
            self._wait_for_daemon(job, exc, report)
        except KeyboardInterrupt:
            self.journal.try_append("interrupted", job.job_id)
            job.lock.release()
            raise
        except JobError as exc:
            self.settle.fail(job, str(exc), exc.advice)
        except SettingsError as exc:
            self.settle.fail(job, f"bad settings: {exc}", ADVICE_SETTINGS)
        except OSError as exc:
            self._on_os_error(job, exc, attempt)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the watcher
            traceback.print_exc()
            self.settle.fail(job, f"internal error {type(exc).__name__}: {exc}", ADVICE_ENGINE)
        finally:
            self._cancel = None
        return False

    def _run_steps(self, job: Claim, report: Report, attempt: Attempt) -> None:
        """Render the job into its scratch folder, publish it to out/, move the original to done/;
        ``attempt`` follows the steps (on a full disk it tells waiting from never fitting)."""
        self.journal.append("started", job.job_id, rel=job.rel)
        report("started")
        tmp_dir = self.layout.job_tmp(job.job_id)
        shutil.rmtree(tmp_dir, ignore_errors=True)   # a partial write from a crashed run
        tmp_dir.mkdir(parents=True)
        spec, inputs = self._load(job, report)
        # A short scratch name: the writers add temporary suffixes, and out/'s name comes from job.name.
        attempt.scratch = scratch = tmp_dir / ("output" + output_suffix(inputs.content))
        attempt.enter("render", self.layout.root)
        checkpoint = resume.job_checkpoint(self.layout, job.job_id, self.checkpoint_seconds, report)
        self.engine.render(inputs, job.working, scratch, report, self._cancel, checkpoint=checkpoint)
        attempt.enter("publish", self.layout.out / job.subdir)
        output = self.settle.publish(job, scratch)
        report(f"wrote out/{output.relative_to(self.layout.out).as_posix()}", 100.0)
        if spec.document.contact_sheet:
            self.settle.contact_sheet(output, inputs, report)
        attempt.step, attempt.where = "finish", self.layout.root    # (the free space before publishing stays)
        self.settle.finish(job)

    def _load(self, job: Claim, report: Report) -> tuple[JobSpec, Inputs]:
        """The job's settings and its inputs (photo, styles); what they note is reported."""
        spec = _resolve(self.layout.root, job)
        for note in spec.notes:
            report(f"note: {note}")
        inputs = load_inputs(job.working, spec, allow_library=self.engine.allows_library)
        for note in inputs.notes:
            report(f"note: {note}")
        return spec, inputs

    def _wait_for_daemon(self, job: Claim, exc: Unavailable, report: Report) -> None:
        """The daemon cannot be reached: the job waits in working/ (with --once it goes to error/)."""
        if self.once:
            self.settle.fail(job, str(exc), getattr(exc, "advice", ADVICE_DAEMON))
            return
        self.journal.try_append("deferred", job.job_id, reason=str(exc))
        report(f"waiting: {exc}; it stays in working/ and is retried every "
               f"{RECOVER_EVERY_SECONDS:g} s")
        shutil.rmtree(self.layout.job_tmp(job.job_id), ignore_errors=True)
        job.lock.release()

    def _on_os_error(self, job: Claim, exc: OSError, attempt: Attempt) -> None:
        """A full disk: the job waits, unless its output could never fit there; any other: to error/."""
        if not is_disk_full(exc):
            self.settle.fail(job, f"{type(exc).__name__}: {exc}", ADVICE_WRITE)
            return
        never = attempt.never_fits()
        if never is None:
            self.disk.defer(job, exc, attempt.where, attempt.free_before)
        else:
            self.settle.fail(job, never, ADVICE_TOO_BIG_FOR_DISK)


def _resolve(root: Path, job: Claim) -> JobSpec:
    """The job (its settings and styles); JSON that cannot even be parsed (nested 50,000 deep, a 5,000-digit
    number) is the user's settings problem, not an internal error."""
    try:
        return resolve(root, job.rel, job.sidecar, job.sidecar_name)
    except SettingsError:
        raise
    except RecursionError:
        raise JobError("the settings (preset.json or the file's sidecar .json) are nested too deeply to read",
                       ADVICE_SETTINGS) from None
    except ValueError as exc:
        raise JobError(f"the settings (preset.json or the file's sidecar .json) cannot be read: {exc}",
                       ADVICE_SETTINGS) from None


def _unlock(jobs: Iterable[Claim]) -> None:
    """Let go of recovered jobs this pass will not run (another pass, or another watcher, takes them)."""
    for job in jobs:
        job.lock.release()


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _rel_or_name(layout: Layout, path: Path) -> str:
    try:
        return layout.rel(path)
    except ValueError:
        return str(path)
