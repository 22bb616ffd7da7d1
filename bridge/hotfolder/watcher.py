"""The hot folder's main loop: notice files, wait until they are complete, run each job once.

A file is picked up only when its size and mtime have not changed for ``stable_seconds`` *and*
no open-for-writing is pending (inotify's open/close-after-write events, reported by watchdog as
``FileOpenedEvent`` / ``FileClosedEvent`` on Linux).  watchdog's ``created`` event arrives when a
copy *starts*, so it is only a wake-up; a periodic scan of ``in/`` is the source of truth (it also
covers network shares, where inotify sees nothing).

Job life cycle (each step journalled, see :mod:`.claim`)::

    in/NAME --claim--> working/ID--NAME --render--> .stylebridge/tmp/ID/STEM.psd
            --publish (link, no overwrite)--> out/STEM.psd --> original to done/NAME
    any JobError: original to error/NAME + error/NAME.txt (why, and what to do)
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from watchdog.events import (FileClosedEvent, FileClosedNoWriteEvent, FileDeletedEvent, FileMovedEvent,
                             FileOpenedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer

from ..engine.types import CancelToken
from ..imaging import ImageError
from ..job import JobSpec
from ..outputs import candidates, name_bytes, remove_stale_parts, write_bytes
from ..settings import SERVICE, SettingsError
from . import resume
from .claim import Job, Journal, Layout, claim, clean_tmp, is_disk_full, place, recover, remove_stale_locks
from .presets import resolve
from .errors import ADVICE_DAEMON, ADVICE_ENGINE, ADVICE_SETTINGS, ADVICE_WRITE, Cancelled, JobError, Unavailable
from .inputs import contact_sheet, load_inputs, output_suffix
from .process import Engine

class _QuietStop(logging.Filter):
    """watchdog logs an ERROR when its inotify thread is stopped mid-read; it is harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStop())

DEFAULT_STABLE_SECONDS = 2.0
OPEN_GRACE_FACTOR = 15.0      # an open never seen closed stops blocking after this many stable periods
RECOVER_EVERY_SECONDS = 5.0   # look for jobs left by a dead peer watcher this often
REPEAT_LOG_SECONDS = 60.0     # the same warning at most this often
DISK_MARGIN_BYTES = 64 * 1024  # a job that hit a full disk is retried once this much more is free...
DISK_RETRY_SECONDS = 60.0     # ...or after this long (doubling per failed try, up to the maximum)
DISK_RETRY_MAX_SECONDS = 900.0
NEVER_FITS_FRACTION = 0.9     # ENOSPC although this share of the disk was free: it can never fit there
ADVICE_TOO_BIG_FOR_DISK = ("Put the hot folder (or out/) on a larger disk, or lower \"size\" in preset.json or "
                           "the file's sidecar, then move the file from error/ back into in/.")


# --------------------------------------------------------------------------------------------
# Completeness


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


class StabilityTracker:
    """Decides when a file in ``in/`` is complete: stable size+mtime and no pending writer."""

    def __init__(self, stable_seconds: float, open_grace: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stable_seconds = stable_seconds
        self.open_grace = open_grace if open_grace is not None else max(10.0, stable_seconds * OPEN_GRACE_FACTOR)
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._opens: dict[str, int] = {}
        self.lock = threading.Lock()

    def on_event(self, event: FileSystemEvent) -> None:
        """Track open/close pairs (inotify); a close-after-write settles a writer."""
        if event.is_directory:
            return
        path = os.fsdecode(event.src_path)
        with self.lock:
            if isinstance(event, FileOpenedEvent):
                self._opens[path] = self._opens.get(path, 0) + 1
            elif isinstance(event, (FileClosedEvent, FileClosedNoWriteEvent)):
                n = self._opens.get(path, 0) - 1
                if n > 0:
                    self._opens[path] = n
                else:
                    self._opens.pop(path, None)
            elif isinstance(event, (FileDeletedEvent, FileMovedEvent)):
                self._opens.pop(path, None)
                self._seen.pop(path, None)

    def ready(self, paths: list[Path]) -> list[Path]:
        """Those of ``paths`` that are complete now (and forget files no longer listed)."""
        now = self._clock()
        out: list[Path] = []
        keys = set()
        with self.lock:
            for p in paths:
                key = str(p)
                keys.add(key)
                try:
                    st = p.stat()
                except OSError:
                    try:
                        st = p.lstat()       # a dangling link is "stable" too: it goes to error/
                    except OSError:
                        continue
                seen = self._seen.get(key)
                if seen is None or seen.size != st.st_size or seen.mtime_ns != st.st_mtime_ns:
                    self._seen[key] = _Seen(st.st_size, st.st_mtime_ns, now)
                    continue
                quiet = now - seen.since
                if quiet < self.stable_seconds:
                    continue
                if self._opens.get(key, 0) > 0 and quiet < self.open_grace:
                    continue            # someone still has it open (a slow copy paused)
                out.append(p)
            for key in list(self._seen):
                if key not in keys:
                    del self._seen[key]
        return out

    def forget(self, path: Path) -> None:
        with self.lock:
            self._seen.pop(str(path), None)
            self._opens.pop(str(path), None)


class _Wakeup(FileSystemEventHandler):
    def __init__(self, tracker: StabilityTracker, wake: "queue.Queue[FileSystemEvent]") -> None:
        self.tracker = tracker
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.tracker.on_event(event)
        self.wake.put(event)


# --------------------------------------------------------------------------------------------
# Reporting


class Reporter:
    """One line per file and stage on the terminal: ``[time] NAME  STYLE  STAGE  PCT%``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def line(self, rel: str, stage: str, percent: float | None = None, style: str = "") -> None:
        pct = f"{percent:5.1f}%" if percent is not None else ""
        parts = [time.strftime("%H:%M:%S"), rel, style, stage, pct]
        text = "  ".join(p for p in parts if p)
        try:
            try:
                print(text, file=self.stream, flush=True)
            except UnicodeEncodeError:       # an odd name (undecodable bytes) on a strict terminal
                enc = getattr(self.stream, "encoding", None) or "utf-8"
                print(text.encode(enc, "backslashreplace").decode(enc, "replace"), file=self.stream, flush=True)
        except (OSError, ValueError):
            pass   # a closed terminal must not stop the watcher


# --------------------------------------------------------------------------------------------
# The watcher


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
        self._stop = threading.Event()
        self._cancel: CancelToken | None = None
        self.succeeded = 0
        self.failed = 0
        self._refused: dict[str, tuple[int, int, int] | None] = {}   # in/ paths that could not be taken
        self._stuck: set[str] = set()           # jobs whose failure could not be settled: not retried
        self._disk_jobs: dict[str, _DiskWait] = {}   # jobs waiting for space, by id
        self._disk_all: _DiskWait | None = None  # nothing at all can be written (the journal hit ENOSPC)
        self._said: dict[str, float] = {}       # rate limit of repeated log lines
        self._observer: Any = None
        self._handler: _Wakeup | None = None

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
        handler = _Wakeup(self.tracker, wake)
        observer = Observer()
        try:
            observer.schedule(handler, str(self.layout.inbox), recursive=True)
            observer.start()
            self._observer, self._handler = observer, handler
        except OSError as exc:   # e.g. inotify watch limit: the periodic scan still finds every file
            self._say("observer", f"warning: no file-system events ({exc}); scanning every "
                                  f"{self.poll_seconds:g} s instead")
        try:
            self._guard("start-up", self._startup)
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
        finally:
            try:
                observer.stop()
                observer.join(timeout=5)
            except (RuntimeError, OSError):
                pass
            self.journal.close()
        waiting = len(self._disk_jobs)
        if waiting:
            self.reporter.line(str(self.layout.root), f"{waiting} file(s) wait in working/ for disk space; "
                                                      "they resume at the next start")
        return 1 if (self.failed or waiting or self._disk_all is not None) else 0

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one step of the loop; an unexpected error is logged (rate-limited), never fatal."""
        try:
            return fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - the watcher outlives any one failure
            if is_disk_full(exc):
                self._wait_for_disk(exc)
            else:
                self._say(f"{what}:{type(exc).__name__}:{exc}", f"warning: {what} failed: "
                          f"{type(exc).__name__}: {exc}; carrying on", traceback_too=True)
            if self.once and what == "scan":
                return self._disk_all is not None
            return False

    def _tick(self) -> bool:
        """One pass over in/; True when --once has nothing left to do."""
        if not all(d.is_dir() for d in (self.layout.inbox, self.layout.working, self.layout.state,
                                         self.layout.locks, self.layout.tmp)):
            # Someone deleted a folder (e.g. in the Finder): recreate it and watch it again.
            self.layout.create()
            if self._observer is not None and self._handler is not None:
                self._observer.unschedule_all()
                self._observer.schedule(self._handler, str(self.layout.inbox), recursive=True)
            self.reporter.line(str(self.layout.root), "recreated missing folders")
        if self._disk_all is not None:
            if not self._disk_all.ready():
                self._disk_all.remind(self)
                return self.once
            self.reporter.line(str(self.layout.root), "disk space is back; carrying on")
            self._disk_all = None
        pending = self.layout.inputs()
        if self.once and not pending:
            return True
        keys = {str(p) for p in pending}
        for key in [k for k in self._refused if k not in keys]:
            del self._refused[key]
        for path in self.tracker.ready(pending):
            if self._stop.is_set() or self._disk_all is not None:
                break
            self._take(path)
        return False

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
        if self._stop.is_set() or self._disk_all is not None:
            return
        waiting = {job_id for job_id, wait in self._disk_jobs.items() if not wait.ready()}
        jobs = recover(self.layout, self.journal, skip=self._stuck | waiting)
        for i, job in enumerate(jobs):
            if self._stop.is_set() or self._disk_all is not None:
                for rest in jobs[i:]:
                    rest.lock.release()
                break
            if job.job_id in self._disk_jobs:
                report_line = "retrying now that there is more disk space"
            else:
                report_line = "resuming after an interrupted run"
            try:
                self.journal.append("resumed", job.job_id, rel=job.rel)
            except OSError as exc:
                for rest in jobs[i:]:
                    rest.lock.release()
                raise exc
            self.reporter.line(job.rel, report_line)
            self._run_job(job)

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

    def _run_job(self, job: Job) -> None:
        """:meth:`handle`, plus what to do when even settling the job fails."""
        try:
            self.handle(job)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. error/ not writable: leave the file, keep going
            if is_disk_full(exc):
                self._defer_for_disk(job, exc, self.layout.root)
                return
            self._stuck.add(job.job_id)
            self._say(f"stuck:{job.job_id}", f"could not settle this file ({type(exc).__name__}: {exc}); "
                      "it stays in working/ until the watcher is restarted", rel=job.rel, traceback_too=True)
            job.lock.release()

    # -- one job --------------------------------------------------------------------------

    def handle(self, job: Job) -> bool:
        """Run one claimed job to done/ or error/; True on success.  Holds ``job.lock`` until settled.

        A full disk (ENOSPC/EDQUOT) at any step is not the file's fault: the job stays in working/
        and waits (see :meth:`_defer_for_disk`), unless its output could never fit.
        """
        report = lambda stage, pct=None, style="": self.reporter.line(job.rel, stage, pct, style)  # noqa: E731
        self._cancel = CancelToken()
        if self._stop.is_set():
            self._cancel.pause()
        step = "start"
        where = self.layout.root
        free_before = _free_bytes(where)
        scratch: Path | None = None
        try:
            if job.state is not None and self._finish_recovered(job, report):
                return True
            self.journal.append("started", job.job_id, rel=job.rel)
            report("started")
            tmp_dir = self.layout.job_tmp(job.job_id)
            shutil.rmtree(tmp_dir, ignore_errors=True)   # a partial write from a crashed run
            tmp_dir.mkdir(parents=True)
            spec = _resolve(self.layout.root, job)
            for note in spec.notes:
                report(f"note: {note}")
            inputs = load_inputs(job.working, spec, allow_library=self.engine.allows_library)
            for note in inputs.notes:
                report(f"note: {note}")
            # A short scratch name: the writers add temporary suffixes, and out/'s name comes from job.name.
            scratch = tmp_dir / ("output" + output_suffix(inputs.content))
            step, free_before = "render", _free_bytes(where)
            checkpoint = resume.job_checkpoint(self.layout, job.job_id, self.checkpoint_seconds, report)
            self.engine.render(inputs, job.working, scratch, report, self._cancel, checkpoint=checkpoint)
            where = self.layout.out / job.subdir
            step, free_before = "publish", _free_bytes(where)
            output = self._publish(job, scratch)
            report(f"wrote out/{output.relative_to(self.layout.out).as_posix()}", 100.0)
            if spec.document.contact_sheet:
                self._contact_sheet(output, inputs, report)
            where = self.layout.root
            step = "finish"
            self._finish(job)
            return True
        except Cancelled:
            _quietly(self.journal.append, "interrupted", job.job_id)
            report("stopped; it stays in working/ and resumes at the next start")
            job.lock.release()
            return False
        except Unavailable as exc:
            if self.once:
                self._fail(job, str(exc), getattr(exc, "advice", ADVICE_DAEMON))
                return False
            _quietly(self.journal.append, "deferred", job.job_id, reason=str(exc))
            report(f"waiting: {exc}; it stays in working/ and is retried every "
                   f"{RECOVER_EVERY_SECONDS:g} s")
            shutil.rmtree(self.layout.job_tmp(job.job_id), ignore_errors=True)
            job.lock.release()
            return False
        except KeyboardInterrupt:
            _quietly(self.journal.append, "interrupted", job.job_id)
            job.lock.release()
            raise
        except JobError as exc:
            self._fail(job, str(exc), exc.advice)
        except SettingsError as exc:
            self._fail(job, f"bad settings: {exc}", ADVICE_SETTINGS)
        except OSError as exc:
            if is_disk_full(exc):
                never = self._never_fits(step, where, free_before, scratch)
                if never is None:
                    self._defer_for_disk(job, exc, where, free_before)
                    return False
                self._fail(job, never, ADVICE_TOO_BIG_FOR_DISK)
            else:
                self._fail(job, f"{type(exc).__name__}: {exc}", ADVICE_WRITE)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the watcher
            traceback.print_exc()
            self._fail(job, f"internal error {type(exc).__name__}: {exc}", ADVICE_ENGINE)
        finally:
            self._cancel = None
        return False

    def _never_fits(self, step: str, where: Path, free_before: int | None, scratch: Path | None) -> str | None:
        """A reason if this job's output cannot fit on that disk even when it is empty, else None (wait)."""
        total = _total_bytes(where)
        if total is None:
            return None
        if step == "publish" and scratch is not None:
            try:
                need = scratch.stat().st_size
            except OSError:
                return None
            if need > total:
                return (f"the finished PSD is {_mb(need)}, larger than the whole disk holding out/ "
                        f"({_mb(total)})")
        if step == "render" and free_before is not None and free_before >= NEVER_FITS_FRACTION * total:
            return (f"writing its PSD filled the disk although {_mb(free_before)} of its {_mb(total)} were free: "
                    "the result is larger than this disk can hold")
        return None

    def _defer_for_disk(self, job: Job, exc: OSError, where: Path, free_before: int | None = None) -> None:
        """Disk full: keep the job in working/ (a complete rendered PSD is kept too), retry with more space."""
        tmp_dir = self.layout.job_tmp(job.job_id)
        if tmp_dir.is_dir():
            for p in tmp_dir.iterdir():            # partial files only; a finished scratch PSD is kept
                if p.name.startswith("."):
                    try:
                        p.unlink()
                    except OSError:
                        pass
        free_now = _free_bytes(where)
        baseline = free_before if free_before is not None else free_now
        wait = self._disk_jobs.get(job.job_id)
        tries = wait.tries + 1 if wait is not None else 1
        self._disk_jobs[job.job_id] = _DiskWait(where, baseline or 0, time.monotonic(), tries)
        _quietly(self.journal.append, "deferred", job.job_id, reason=f"disk full: {exc.strerror or exc}")
        self.reporter.line(job.rel, f"waiting: the disk is full ({exc.strerror or exc}; "
                                    f"{_mb(free_now)} free in {where.name or where}); it stays in working/ and is "
                                    "retried when space is freed (free some disk space)")
        job.lock.release()

    def _wait_for_disk(self, exc: OSError) -> None:
        """Nothing can be written (not even the journal): pause all work until space comes back."""
        free_now = _free_bytes(self.layout.root) or 0
        self._disk_all = _DiskWait(self.layout.root, free_now, time.monotonic(), 1)
        self.reporter.line(str(self.layout.root), f"waiting: the disk is full ({exc.strerror or exc}); no file is "
                                                  "taken until space is freed (free some disk space)")

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

    def _finish_recovered(self, job: Job, report: Callable[..., None]) -> bool:
        """After a crash: finish what was already done instead of redoing it.  True if finished."""
        st = job.state
        assert st is not None
        # Died between linking the original into done/ or error/ and unlinking it from working/?
        for folder in (self.layout.done, self.layout.error):
            if _find_same(folder / job.subdir / job.name, job.working) is not None:
                twin = self._settle(job, folder)
                assert twin is not None
                self.journal.append("done" if folder == self.layout.done else "error", job.job_id,
                                    recovered=twin.relative_to(self.layout.root).as_posix())
                self._release(job)
                report(f"was already moved to {folder.name}/; tidied up")
                return True
        if "output-written" in st.events:
            report("output was already written; moving the original to done/")
            self._finish(job)
            return True
        # write_psd renames into place, so a visible PSD in the job's scratch folder is complete.
        scratch: Path | None = None
        wanted: Path | None = None
        if "output-intent" in st.events and st.info.get("tmp"):
            scratch = self.layout.root / st.info["tmp"]
            wanted = self.layout.root / st.info["wanted"]
        else:
            tmp_dir = self.layout.job_tmp(job.job_id)
            done = sorted(tmp_dir.glob("*.ps[db]")) if tmp_dir.is_dir() else []
            done = [p for p in done if not p.name.startswith(".")]
            scratch = done[0] if len(done) == 1 else None
        if scratch is not None and scratch.exists():
            self._publish(job, scratch, wanted=wanted)
            report("output was already rendered; published it")
            self._finish(job)
            return True
        return False

    def _publish(self, job: Job, scratch: Path, wanted: Path | None = None) -> Path:
        """Put the finished scratch PSD into out/ under a free name (no overwrite), then drop the scratch."""
        root = self.layout.root
        wanted = wanted or self.layout.out / job.subdir / (Path(job.name).stem + scratch.suffix)
        existing = _find_same(wanted, scratch)     # crashed between link and journal last time?
        if existing is None:
            self.journal.append("output-intent", job.job_id, tmp=scratch.relative_to(root).as_posix(),
                                wanted=wanted.relative_to(root).as_posix())
            final = place(scratch, wanted, keep_source=True)
        else:
            final = existing
        self.journal.append("output-written", job.job_id, output=final.relative_to(root).as_posix())
        scratch.unlink(missing_ok=True)
        resume.remove(self.layout, job.job_id)      # published: the run is not needed any more
        return final

    def _contact_sheet(self, output: Path, inputs: Any, report: Callable[..., None]) -> None:
        """``NAME-previews.png`` beside the published PSD (preset ``"contact_sheet": true``): fast previews
        of the photo under each style, to choose from before the next run. A sheet that cannot be made
        is reported; the job (its PSD) has succeeded all the same."""
        from ..imaging import encode_png
        from ..preview import PreviewModelError
        try:
            sheet, left_out = contact_sheet(inputs)
            if sheet is None:
                report(f"no contact sheet: its styles ({', '.join(left_out)}) are in the daemon's library, not here")
                return
            wanted = output.with_name(f"{Path(output.name).stem}-previews.png")
            written = write_bytes(wanted, encode_png(sheet), fit=True)
        except (PreviewModelError, ImageError, OSError, ValueError) as exc:
            report(f"no contact sheet ({type(exc).__name__}: {exc}); the PSD is written")
            return
        extra = f" (without {', '.join(left_out)}: library styles)" if left_out else ""
        report(f"wrote out/{written.relative_to(self.layout.out).as_posix()}{extra}", 100.0)

    def _finish(self, job: Job) -> None:
        self.journal.append("done-intent", job.job_id)
        final = self._settle(job, self.layout.done) or self.layout.done / job.subdir / job.name
        self.journal.append("done", job.job_id, done=final.relative_to(self.layout.root).as_posix())
        self._release(job)
        self.succeeded += 1

    def _fail(self, job: Job, reason: str, advice: str) -> None:
        """Original (and sidecar) to error/, with NAME.txt beside it; the watcher carries on.

        If the original itself cannot be moved (error/ not writable...), the OSError propagates to
        :meth:`_run_job`: the file stays in working/ and is not retried in a loop.
        """
        self.reporter.line(job.rel, f"FAILED: {reason}")
        final = self._settle(job, self.layout.error, report=lambda text: self.reporter.line(job.rel, text))
        self.failed += 1
        try:
            target = final or (self.layout.error / job.subdir / job.name)
            text = (f"stylebridge could not process {job.rel}\n\nWhy: {reason}\n\nWhat to do: {advice}\n\n"
                    f"(job {job.job_id}, {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
            write_bytes(target.with_name(target.name + ".txt"), text.encode("utf-8", "backslashreplace"), fit=True)
        except OSError as exc:
            self.reporter.line(job.rel, f"could not write the error note: {exc}")
        try:
            self.journal.append("error", job.job_id, reason=reason,
                                error_file=final.relative_to(self.layout.root).as_posix() if final else None)
        except OSError as exc:
            self.reporter.line(job.rel, f"could not journal the error: {exc}")
        self._release(job)

    def _settle(self, job: Job, folder: Path, report: Callable[[str], None] | None = None) -> Path | None:
        """Move the original, then its sidecar, from working/ to ``folder``/SUBDIR under free names (the one
        no-replace rule, :func:`bridge.outputs.publish`); returns where the original is now (None: it was
        already gone). An original linked there before a crash is only dropped from working/.

        ``report``: a sidecar that cannot be moved is reported, not raised (the original is safe).
        """
        final: Path | None = None
        if os.path.lexists(job.working):
            wanted = folder / job.subdir / job.name
            final = _find_same(wanted, job.working)
            if final is not None:
                job.working.unlink()
            else:
                final = place(job.working, wanted)
        if job.sidecar is not None and job.sidecar.exists():
            try:
                place(job.sidecar, folder / job.subdir / (job.sidecar_name or job.sidecar.name))
            except OSError as exc:
                if report is None:
                    raise
                report(f"could not move the settings file {job.sidecar_name}: {exc}")
        return final

    def _release(self, job: Job) -> None:
        """The job is settled (journalled done or error): drop its scratch folder and its lock."""
        shutil.rmtree(self.layout.job_tmp(job.job_id), ignore_errors=True)
        resume.remove(self.layout, job.job_id)
        job.lock.release(remove=True)
        self._disk_jobs.pop(job.job_id, None)


@dataclass
class _DiskWait:
    """A job (or everything) waiting for disk space: retried when the disk holding ``folder`` has
    more free space than the failed attempt started with, or after a back-off that doubles per try."""

    folder: Path
    free: int
    since: float
    tries: int
    reminded: float = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        free = _free_bytes(self.folder)
        if free is not None and free > self.free + DISK_MARGIN_BYTES:
            return True
        return now - self.since > min(DISK_RETRY_MAX_SECONDS, DISK_RETRY_SECONDS * 2 ** (self.tries - 1))

    def remind(self, watcher: "Watcher") -> None:
        now = time.monotonic()
        if now - max(self.since, self.reminded) >= REPEAT_LOG_SECONDS:
            self.reminded = now
            watcher.reporter.line(str(watcher.layout.root), f"still waiting for disk space "
                                                            f"({_mb(_free_bytes(self.folder))} free)")


def _resolve(root: Path, job: Job) -> JobSpec:
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


def _free_bytes(folder: Path) -> int | None:
    """Free bytes (for unprivileged writers) on the disk holding ``folder`` (or its nearest parent)."""
    for p in (folder, *folder.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def _total_bytes(folder: Path) -> int | None:
    for p in (folder, *folder.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_blocks * st.f_frsize
    return None


def _mb(n: int | None) -> str:
    return "? MB" if n is None else f"{n / 1e6:.1f} MB"


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


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Best-effort bookkeeping: a record that does not fit on a full disk must not stop anything."""
    try:
        fn(*args, **kwargs)
    except OSError:
        pass


def _find_same(wanted: Path, src: Path) -> Path | None:
    """A file named like ``wanted`` (or ``stem-N``) that is the very same inode as ``src``."""
    if not os.path.lexists(src) or not wanted.parent.is_dir():
        return None
    first = next(candidates(wanted, fit=True))
    stem = first.stem[:-6] if name_bytes(first.name) > 200 else first.stem   # "-N" shortens long stems
    for cand in wanted.parent.glob(f"{_glob_escape(stem)}*{_glob_escape(first.suffix)}"):
        if _same_inode(cand, src):
            return cand
    return None


def _same_inode(a: Path, b: Path) -> bool:
    """os.path.samefile without following links (a moved symbolic link is the same link)."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
