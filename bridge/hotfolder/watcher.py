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
from typing import Callable, TextIO

from watchdog.events import (FileClosedEvent, FileClosedNoWriteEvent, FileDeletedEvent, FileMovedEvent,
                             FileOpenedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer

from ..engine.types import CancelToken
from ..imaging import atomic_write, unique_path
from ..settings import SettingsError
from .claim import (Job, Journal, Layout, candidates, claim, clean_tmp, place, recover, remove_stale_locks,
                    same_file)
from .presets import resolve
from .process import (ADVICE_DAEMON, ADVICE_ENGINE, ADVICE_SETTINGS, ADVICE_WRITE, Cancelled, Engine, JobError,
                      Unavailable, load_inputs, output_suffix)

class _QuietStop(logging.Filter):
    """watchdog logs an ERROR when its inotify thread is stopped mid-read; it is harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStop())

DEFAULT_STABLE_SECONDS = 2.0
OPEN_GRACE_FACTOR = 15.0      # an open never seen closed stops blocking after this many stable periods
RECOVER_EVERY_SECONDS = 5.0   # look for jobs left by a dead peer watcher this often


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
                except FileNotFoundError:
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
        try:
            print("  ".join(p for p in parts if p), file=self.stream, flush=True)
        except (OSError, ValueError):
            pass   # a closed terminal must not stop the watcher


# --------------------------------------------------------------------------------------------
# The watcher


class Watcher:
    """Serves one hot folder.  ``run()`` returns 0 if every job succeeded, 1 if any went to error/."""

    def __init__(self, root: Path, engine: Engine, *, stable_seconds: float = DEFAULT_STABLE_SECONDS,
                 once: bool = False, poll_seconds: float | None = None, reporter: Reporter | None = None) -> None:
        self.layout = Layout(Path(root).resolve()).create()
        self.engine = engine
        self.once = once
        self.poll_seconds = poll_seconds if poll_seconds is not None else min(0.5, max(0.05, stable_seconds / 4))
        self.tracker = StabilityTracker(stable_seconds)
        self.reporter = reporter or Reporter()
        self.journal = Journal(self.layout.journal_path)
        self._stop = threading.Event()
        self._cancel: CancelToken | None = None
        self.succeeded = 0
        self.failed = 0

    # -- control --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop after (cancelling) the current job; callable from a signal handler or thread."""
        self._stop.set()
        if self._cancel is not None:
            self._cancel.cancel()

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> int:
        wake: queue.Queue[FileSystemEvent] = queue.Queue()
        handler = _Wakeup(self.tracker, wake)
        observer = Observer()
        observer.schedule(handler, str(self.layout.inbox), recursive=True)
        observer.start()
        try:
            self._startup()
            last_recover = time.monotonic()
            while not self._stop.is_set():
                if not all(d.is_dir() for d in (self.layout.inbox, self.layout.working, self.layout.state)):
                    # Someone deleted a folder (e.g. in the Finder): recreate it and watch it again.
                    self.layout.create()
                    observer.unschedule_all()
                    observer.schedule(handler, str(self.layout.inbox), recursive=True)
                    self.reporter.line(str(self.layout.root), "recreated missing folders")
                pending = self.layout.inputs()
                if self.once and not pending:
                    break
                for path in self.tracker.ready(pending):
                    if self._stop.is_set():
                        break
                    job = claim(self.layout, self.journal, path)
                    self.tracker.forget(path)
                    if job is not None:
                        self.handle(job)
                if time.monotonic() - last_recover > RECOVER_EVERY_SECONDS:
                    self._resume_orphans()
                    last_recover = time.monotonic()
                try:
                    wake.get(timeout=self.poll_seconds)
                    while True:             # drain a burst of events
                        wake.get_nowait()
                except queue.Empty:
                    pass
        finally:
            observer.stop()
            observer.join(timeout=5)
            self.journal.close()
        return 1 if self.failed else 0

    def _startup(self) -> None:
        names = ", ".join(f"{d.name}/" for d in (self.layout.inbox, self.layout.out, self.layout.done,
                                                   self.layout.error))
        self.reporter.line(str(self.layout.root), f"watching ({names})")
        check = getattr(self.engine, "check", None)
        problem = check() if callable(check) else None
        if problem:
            self.reporter.line(str(self.layout.root), f"warning: {problem}")
        self._resume_orphans()
        clean_tmp(self.layout)
        remove_stale_locks(self.layout)

    def _resume_orphans(self) -> None:
        if self._stop.is_set():
            return
        jobs = recover(self.layout, self.journal)
        for i, job in enumerate(jobs):
            if self._stop.is_set():
                for rest in jobs[i:]:
                    rest.lock.release()
                break
            self.journal.append("resumed", job.job_id, rel=job.rel)
            self.reporter.line(job.rel, "resuming after an interrupted run")
            self.handle(job)

    # -- one job --------------------------------------------------------------------------

    def handle(self, job: Job) -> bool:
        """Run one claimed job to done/ or error/; True on success.  Holds ``job.lock`` until settled."""
        report = lambda stage, pct=None, style="": self.reporter.line(job.rel, stage, pct, style)  # noqa: E731
        self._cancel = CancelToken()
        if self._stop.is_set():
            self._cancel.cancel()
        try:
            if job.state is not None and self._finish_recovered(job, report):
                return True
            self.journal.append("started", job.job_id, rel=job.rel)
            report("started")
            tmp_dir = self.layout.job_tmp(job.job_id)
            shutil.rmtree(tmp_dir, ignore_errors=True)   # a partial write from a crashed run
            tmp_dir.mkdir(parents=True)
            recipe = resolve(self.layout.root, job.rel, job.sidecar, job.sidecar_name)
            inputs = load_inputs(job.working, Path(job.name).stem, recipe,
                                 allow_library=self.engine.allows_library)
            scratch = tmp_dir / (Path(job.name).stem + output_suffix(inputs.content))
            self.engine.render(inputs, recipe, job.working, scratch, report, self._cancel)
            output = self._publish(job, scratch)
            report(f"wrote out/{output.relative_to(self.layout.out).as_posix()}", 100.0)
            self._finish(job)
            return True
        except Cancelled:
            self.journal.append("interrupted", job.job_id)
            report("stopped; it stays in working/ and resumes at the next start")
            job.lock.release()
            return False
        except Unavailable as exc:
            if self.once:
                self._fail(job, str(exc), ADVICE_DAEMON)
                return False
            self.journal.append("deferred", job.job_id, reason=str(exc))
            report(f"waiting: {exc}; it stays in working/ and is retried every "
                   f"{RECOVER_EVERY_SECONDS:g} s")
            shutil.rmtree(self.layout.job_tmp(job.job_id), ignore_errors=True)
            job.lock.release()
            return False
        except KeyboardInterrupt:
            self.journal.append("interrupted", job.job_id)
            job.lock.release()
            raise
        except JobError as exc:
            self._fail(job, str(exc), exc.advice)
        except SettingsError as exc:
            self._fail(job, f"bad settings: {exc}", ADVICE_SETTINGS)
        except OSError as exc:
            self._fail(job, f"{type(exc).__name__}: {exc}", ADVICE_WRITE)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the watcher
            traceback.print_exc()
            self._fail(job, f"internal error {type(exc).__name__}: {exc}", ADVICE_ENGINE)
        finally:
            self._cancel = None
        return False

    def _finish_recovered(self, job: Job, report: Callable[..., None]) -> bool:
        """After a crash: finish what was already done instead of redoing it.  True if finished."""
        st = job.state
        assert st is not None
        # Died between linking the original into done/ or error/ and unlinking it from working/?
        for folder in (self.layout.done, self.layout.error):
            twin = _find_same(folder / job.subdir / job.name, job.working)
            if twin is not None:
                job.working.unlink()
                if job.sidecar is not None and job.sidecar.exists():
                    place(job.sidecar, folder / job.subdir / (job.sidecar_name or job.sidecar.name))
                self.journal.append("done" if folder == self.layout.done else "error", job.job_id,
                                    recovered=twin.relative_to(self.layout.root).as_posix())
                shutil.rmtree(self.layout.job_tmp(job.job_id), ignore_errors=True)
                job.lock.release(remove=True)
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
        """Hard-link the finished scratch PSD into out/ under a free name, then drop the scratch."""
        root = self.layout.root
        wanted = wanted or self.layout.out / job.subdir / scratch.name
        existing = _find_same(wanted, scratch)     # crashed between link and journal last time?
        if existing is None:
            self.journal.append("output-intent", job.job_id, tmp=scratch.relative_to(root).as_posix(),
                                wanted=wanted.relative_to(root).as_posix())
            final = _link_unique(scratch, wanted)
        else:
            final = existing
        self.journal.append("output-written", job.job_id, output=final.relative_to(root).as_posix())
        scratch.unlink(missing_ok=True)
        return final

    def _finish(self, job: Job) -> None:
        wanted = self.layout.done / job.subdir / job.name
        self.journal.append("done-intent", job.job_id)
        if job.working.exists():
            final = _find_same(wanted, job.working)
            if final is not None:               # linked into done/ before a crash: just drop working/
                job.working.unlink()
            else:
                final = place(job.working, wanted)
        else:
            final = wanted
        if job.sidecar is not None and job.sidecar.exists():
            place(job.sidecar, self.layout.done / job.subdir / (job.sidecar_name or job.sidecar.name))
        self.journal.append("done", job.job_id, done=final.relative_to(self.layout.root).as_posix())
        shutil.rmtree(self.layout.job_tmp(job.job_id), ignore_errors=True)
        job.lock.release(remove=True)
        self.succeeded += 1

    def _fail(self, job: Job, reason: str, advice: str) -> None:
        """Original (and sidecar) to error/, with NAME.txt beside it; the watcher carries on."""
        self.failed += 1
        self.reporter.line(job.rel, f"FAILED: {reason}")
        final: Path | None = None
        try:
            if job.working.exists():
                final = place(job.working, self.layout.error / job.subdir / job.name)
            if job.sidecar is not None and job.sidecar.exists():
                place(job.sidecar, self.layout.error / job.subdir / (job.sidecar_name or job.sidecar.name))
            target = final or (self.layout.error / job.subdir / job.name)
            note = unique_path(target.with_name(target.name + ".txt"))
            text = (f"stylebridge could not process {job.rel}\n\nWhy: {reason}\n\nWhat to do: {advice}\n\n"
                    f"(job {job.job_id}, {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
            atomic_write(note, text.encode("utf-8"))
        except OSError as exc:
            self.reporter.line(job.rel, f"could not write the error note: {exc}")
        self.journal.append("error", job.job_id, reason=reason,
                            error_file=final.relative_to(self.layout.root).as_posix() if final else None)
        shutil.rmtree(self.layout.job_tmp(job.job_id), ignore_errors=True)
        job.lock.release(remove=True)


def _find_same(wanted: Path, src: Path) -> Path | None:
    """A file named like ``wanted`` (or ``stem-N``) that is the very same inode as ``src``."""
    if not src.exists() or not wanted.parent.is_dir():
        return None
    for cand in wanted.parent.glob(f"{_glob_escape(wanted.stem)}*{_glob_escape(wanted.suffix)}"):
        if same_file(cand, src):
            return cand
    return None


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def _link_unique(src: Path, wanted: Path) -> Path:
    """Hard-link ``src`` at ``wanted`` or ``stem-N``; the source stays (unlinked after journalling)."""
    wanted.parent.mkdir(parents=True, exist_ok=True)
    for cand in candidates(wanted):
        try:
            os.link(src, cand)
            return cand
        except FileExistsError:
            continue
        except OSError:
            # No hard links here (some network shares): copy to a hidden name, then claim the name.
            if cand.exists():
                continue
            hidden = cand.with_name(f".{cand.name}.{os.getpid()}.part")
            shutil.copyfile(src, hidden)
            if cand.exists():
                os.unlink(hidden)
                continue
            os.rename(hidden, cand)
            return cand
    raise AssertionError("unreachable")
