"""How a hot-folder job ends: its result published to out/, its original moved to done/ or error/ (with a
note saying why and what to do), its scratch folder, checkpoint and lock dropped.

Every move is journalled before and after (:mod:`.journal`), and every name is placed without overwriting
anything (:func:`place`), so a restart after a crash at any point finishes what was already done instead of
redoing it (:meth:`Settler.finish_recovered`): an output linked into out/ or an original linked into done/
is recognised as the very same file (the same inode), not a second copy.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ..imaging import ImageError
from ..outputs import candidates, name_bytes, publish, write_bytes
from . import resume
from .claim import Claim
from .diskwait import DiskWaits
from .inputs import Inputs, contact_sheet
from .journal import Journal
from .layout import Layout
from .report import Reporter


class Settler:
    """Moves a job's files to where they end, and counts how the jobs ended (for the exit code)."""

    def __init__(self, layout: Layout, journal: Journal, reporter: Reporter, disk: DiskWaits) -> None:
        self.layout = layout
        self.journal = journal
        self.reporter = reporter
        self.disk = disk
        self.succeeded = 0
        self.failed = 0

    def publish(self, job: Claim, scratch: Path, wanted: Path | None = None) -> Path:
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

    def contact_sheet(self, output: Path, inputs: Inputs, report: Callable[..., None]) -> None:
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

    def finish(self, job: Claim) -> None:
        """Success: the original (and its sidecar) to done/."""
        self.journal.append("done-intent", job.job_id)
        final = self._move_original(job, self.layout.done) or self.layout.done / job.subdir / job.name
        self.journal.append("done", job.job_id, done=final.relative_to(self.layout.root).as_posix())
        self._release(job)
        self.succeeded += 1

    def fail(self, job: Claim, reason: str, advice: str) -> None:
        """Original (and sidecar) to error/, with NAME.txt beside it; the watcher carries on.

        If the original itself cannot be moved (error/ not writable...), the OSError propagates to
        the watcher: the file stays in working/ and is not retried in a loop.
        """
        self.reporter.line(job.rel, f"FAILED: {reason}")
        final = self._move_original(job, self.layout.error, report=lambda text: self.reporter.line(job.rel, text))
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

    def finish_recovered(self, job: Claim, report: Callable[..., None]) -> bool:
        """After a crash: finish what was already done instead of redoing it.  True if finished."""
        st = job.state
        assert st is not None
        # Died between linking the original into done/ or error/ and unlinking it from working/?
        for folder in (self.layout.done, self.layout.error):
            if _find_same(folder / job.subdir / job.name, job.working) is not None:
                twin = self._move_original(job, folder)
                assert twin is not None
                self.journal.append("done" if folder == self.layout.done else "error", job.job_id,
                                    recovered=twin.relative_to(self.layout.root).as_posix())
                self._release(job)
                report(f"was already moved to {folder.name}/; tidied up")
                return True
        if "output-written" in st.events:
            report("output was already written; moving the original to done/")
            self.finish(job)
            return True
        scratch, wanted = self._rendered(job)
        if scratch is not None and scratch.exists():
            self.publish(job, scratch, wanted=wanted)
            report("output was already rendered; published it")
            self.finish(job)
            return True
        return False

    def _rendered(self, job: Claim) -> tuple[Path | None, Path | None]:
        """The job's complete scratch PSD left by a crash, if any, and the out/ name it was meant for.
        write_psd renames into place, so a visible PSD in the job's scratch folder is complete."""
        st = job.state
        assert st is not None
        if "output-intent" in st.events and st.info.get("tmp"):
            return self.layout.root / st.info["tmp"], self.layout.root / st.info["wanted"]
        tmp_dir = self.layout.job_tmp(job.job_id)
        done = sorted(tmp_dir.glob("*.ps[db]")) if tmp_dir.is_dir() else []
        done = [p for p in done if not p.name.startswith(".")]
        return (done[0] if len(done) == 1 else None), None

    def _move_original(self, job: Claim, folder: Path, report: Callable[[str], None] | None = None) -> Path | None:
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

    def _release(self, job: Claim) -> None:
        """The job is settled (journalled done or error): drop its scratch folder and its lock."""
        shutil.rmtree(self.layout.job_tmp(job.job_id), ignore_errors=True)
        resume.remove(self.layout, job.job_id)
        job.lock.release(remove=True)
        self.disk.forget(job.job_id)


# --------------------------------------------------------------------------------------------
# Moving files without overwriting: bridge.outputs is the one home of the rule


def place(src: Path, wanted: Path, *, keep_source: bool = False) -> Path:
    """Put ``src`` at ``wanted`` or the first free ``stem-N`` name beside it; never overwrite.

    :func:`bridge.outputs.publish` (atomic no-replace claims, a hidden ``.NAME.PID.part`` copy across
    file systems, links moved as links), with the hot folder's two needs: the folder (``out/SUB``) is
    created, and names are shortened to NAME_MAX instead of refused (``fit``). ``keep_source`` leaves
    ``src`` in place (the caller removes it after journalling), and the published file is then the same
    inode (a hard link) wherever the disk allows, which is how a restart recognises its own output.
    """
    wanted.parent.mkdir(parents=True, exist_ok=True)
    return publish(src, wanted, keep_source=keep_source, fit=True)


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
