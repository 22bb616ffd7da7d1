"""The hot folder's disk-full policy: a full disk is not the file's fault, so the file waits.

A job that hits ENOSPC/EDQUOT stays in working/ (a complete rendered PSD is kept too) and is retried once
the disk it was writing to has more free space than the failed attempt started with, or after a back-off
that doubles per try (:class:`DiskWait`). When nothing at all can be written (not even the journal), no
file is taken until space comes back. Only an output that could never fit on that disk goes to error/
(:meth:`Attempt.never_fits`).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from .claim import Claim
from .journal import Journal
from .layout import Layout
from .report import REPEAT_LOG_SECONDS, Reporter

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_MARGIN_BYTES = 64 * 1024  # a job that hit a full disk is retried once this much more is free...
DISK_RETRY_SECONDS = 60.0     # ...or after this long (doubling per failed try, up to the maximum)
DISK_RETRY_MAX_SECONDS = 900.0
NEVER_FITS_FRACTION = 0.9     # ENOSPC although this share of the disk was free: it can never fit there
ADVICE_TOO_BIG_FOR_DISK = ("Put the hot folder (or out/) on a larger disk, or lower \"size\" in preset.json or "
                           "the file's sidecar, then move the file from error/ back into in/.")


def is_disk_full(exc: BaseException) -> TypeGuard[OSError]:
    """True for "no space left" / "quota exceeded": the file is not at fault, so it waits."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


class Attempt:
    """How far one run of a job got, and which disk it writes to now: when that disk fills up, whether
    the job waits or can never fit there depends on both."""

    def __init__(self, where: Path) -> None:
        self.step = "start"
        self.where = where                         # the folder being written (its disk is the one that filled)
        self.free_before = free_bytes(where)       # free space there when the step began
        self.scratch: Path | None = None           # the job's rendered PSD in its scratch folder

    def enter(self, step: str, where: Path) -> None:
        """The next step, writing to ``where``: its free space now is the baseline for a retry."""
        self.step, self.where, self.free_before = step, where, free_bytes(where)

    def never_fits(self) -> str | None:
        """A reason if this job's output cannot fit on that disk even when it is empty, else None (wait)."""
        total = total_bytes(self.where)
        if total is None:
            return None
        if self.step == "publish" and self.scratch is not None:
            try:
                need = self.scratch.stat().st_size
            except OSError:
                return None
            if need > total:
                return (f"the finished PSD is {mb(need)}, larger than the whole disk holding out/ "
                        f"({mb(total)})")
        free_before = self.free_before
        if self.step == "render" and free_before is not None and free_before >= NEVER_FITS_FRACTION * total:
            return (f"writing its PSD filled the disk although {mb(free_before)} of its {mb(total)} were free: "
                    "the result is larger than this disk can hold")
        return None


@dataclass
class DiskWait:
    """A job (or everything) waiting for disk space: retried when the disk holding ``folder`` has
    more free space than the failed attempt started with, or after a back-off that doubles per try."""

    folder: Path
    free: int
    since: float
    tries: int
    reminded: float = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        free = free_bytes(self.folder)
        if free is not None and free > self.free + DISK_MARGIN_BYTES:
            return True
        return now - self.since > min(DISK_RETRY_MAX_SECONDS, DISK_RETRY_SECONDS * 2 ** (self.tries - 1))

    def remind(self, reporter: Reporter, root: Path) -> None:
        now = time.monotonic()
        if now - max(self.since, self.reminded) >= REPEAT_LOG_SECONDS:
            self.reminded = now
            reporter.line(str(root), f"still waiting for disk space ({mb(free_bytes(self.folder))} free)")


class DiskWaits:
    """Who waits for disk space now: single jobs (by id, they stay in working/) and, while nothing at all
    can be written, everything (no file is taken)."""

    def __init__(self, layout: Layout, journal: Journal, reporter: Reporter) -> None:
        self.layout = layout
        self.journal = journal
        self.reporter = reporter
        self.jobs: dict[str, DiskWait] = {}
        self.everything: DiskWait | None = None

    @property
    def blocked(self) -> bool:
        """Nothing can be written: take no file, resume no job."""
        return self.everything is not None

    def still_blocked(self) -> bool:
        """Whether everything still waits (a reminder now and then); once space is back, says so once."""
        if self.everything is None:
            return False
        if not self.everything.ready():
            self.everything.remind(self.reporter, self.layout.root)
            return True
        self.reporter.line(str(self.layout.root), "disk space is back; carrying on")
        self.everything = None
        return False

    def not_ready(self) -> set[str]:
        """Ids of the waiting jobs that must not be retried yet."""
        return {job_id for job_id, wait in self.jobs.items() if not wait.ready()}

    def forget(self, job_id: str) -> None:
        """The job is settled: it waits no more."""
        self.jobs.pop(job_id, None)

    def defer(self, job: Claim, exc: OSError, where: Path, free_before: int | None = None) -> None:
        """Disk full: keep the job in working/ (a complete rendered PSD is kept too), retry with more space."""
        tmp_dir = self.layout.job_tmp(job.job_id)
        if tmp_dir.is_dir():
            for p in tmp_dir.iterdir():            # partial files only; a finished scratch PSD is kept
                if p.name.startswith("."):
                    try:
                        p.unlink()
                    except OSError:
                        pass
        free_now = free_bytes(where)
        baseline = free_before if free_before is not None else free_now
        wait = self.jobs.get(job.job_id)
        tries = wait.tries + 1 if wait is not None else 1
        self.jobs[job.job_id] = DiskWait(where, baseline or 0, time.monotonic(), tries)
        self.journal.try_append("deferred", job.job_id, reason=f"disk full: {exc.strerror or exc}")
        self.reporter.line(job.rel, f"waiting: the disk is full ({exc.strerror or exc}; "
                                    f"{mb(free_now)} free in {where.name or where}); it stays in working/ and is "
                                    "retried when space is freed (free some disk space)")
        job.lock.release()

    def block_all(self, exc: OSError) -> None:
        """Nothing can be written (not even the journal): pause all work until space comes back."""
        root = self.layout.root
        self.everything = DiskWait(root, free_bytes(root) or 0, time.monotonic(), 1)
        self.reporter.line(str(root), f"waiting: the disk is full ({exc.strerror or exc}); no file is "
                                      "taken until space is freed (free some disk space)")


def free_bytes(folder: Path) -> int | None:
    """Free bytes (for unprivileged writers) on the disk holding ``folder`` (or its nearest parent)."""
    for p in (folder, *folder.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def total_bytes(folder: Path) -> int | None:
    """The size of the disk holding ``folder`` (or its nearest parent)."""
    for p in (folder, *folder.parents):
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        return st.f_blocks * st.f_frsize
    return None


def mb(n: int | None) -> str:
    return "? MB" if n is None else f"{n / 1e6:.1f} MB"
