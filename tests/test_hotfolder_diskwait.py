"""The hot folder's disk-full policy, in process (no tmpfs needed): a full disk makes the file wait in
working/ (journalled ``deferred``, said once, exit 1 with --once), any other write error sends it to error/,
and only an output that could never fit on its disk fails."""

from __future__ import annotations

import errno
import io
import json
import time
from pathlib import Path

import pytest

from bridge.hotfolder import diskwait
from bridge.hotfolder.diskwait import Attempt, DiskWait
from bridge.hotfolder.journal import Journal
from bridge.hotfolder.report import Reporter
from bridge.hotfolder.watcher import Watcher

from test_hardening_hotfolder import STABLE, make_hot, make_photo


class _FailingEngine:
    """The renderer seam: fails writing its output with ``errno``."""

    allows_library = False

    def __init__(self, code: int) -> None:
        self.code = code
        self.calls = 0

    def render(self, inputs, source, dest, report, cancel, *, checkpoint=None) -> None:  # noqa: ANN001
        self.calls += 1
        dest.with_name(".output.part").write_bytes(b"partial")        # a writer's hidden temporary file
        raise OSError(self.code, "No space left on device" if self.code == errno.ENOSPC else "Permission denied",
                      str(dest))


def _events(root: Path) -> list[dict]:
    lines = (root / ".stylebridge" / "journal.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_full_disk_while_rendering_keeps_the_file_waiting_in_working(tmp_path: Path) -> None:
    root = make_hot(tmp_path / "hot")
    make_photo(root / "in" / "a.jpg")
    lines = io.StringIO()
    rc = Watcher(root, _FailingEngine(errno.ENOSPC), stable_seconds=STABLE, once=True,
                 reporter=Reporter(lines)).run()
    out = lines.getvalue()
    assert rc == 1, out
    assert [p.name.endswith("--a.jpg") for p in (root / "working").iterdir()] == [True]
    assert not any((root / "error").iterdir()) and not any((root / "done").iterdir())
    assert "a.jpg  waiting: the disk is full (No space left on device; " in out
    assert "it stays in working/ and is retried when space is freed (free some disk space)" in out
    assert "1 file(s) wait in working/ for disk space; they resume at the next start" in out
    deferred = [r for r in _events(root) if r["event"] == "deferred"]
    assert [r["reason"] for r in deferred] == ["disk full: No space left on device"]
    scratch = root / ".stylebridge" / "tmp" / deferred[0]["job"]
    assert not (scratch / ".output.part").exists()                     # partial files are dropped
    assert (root / ".stylebridge" / "locks" / f"{deferred[0]['job']}.lock").exists()   # released, not removed


def test_another_write_error_sends_the_file_to_error_with_advice(tmp_path: Path) -> None:
    root = make_hot(tmp_path / "hot")
    make_photo(root / "in" / "a.jpg")
    rc = Watcher(root, _FailingEngine(errno.EACCES), stable_seconds=STABLE, once=True,
                 reporter=Reporter(io.StringIO())).run()
    assert rc == 1
    assert (root / "error" / "a.jpg").exists()
    note = (root / "error" / "a.jpg.txt").read_text()
    assert "Why: PermissionError: [Errno 13] Permission denied" in note
    assert [r["event"] for r in _events(root)][-1] == "error"


def test_never_fits_only_when_the_disk_could_never_hold_the_output(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(diskwait, "total_bytes", lambda folder: 1_000_000)
    monkeypatch.setattr(diskwait, "free_bytes", lambda folder: 950_000)
    attempt = Attempt(tmp_path)
    assert attempt.never_fits() is None                                # "start": always wait
    attempt.enter("render", tmp_path)
    assert attempt.never_fits() == ("writing its PSD filled the disk although 0.9 MB of its 1.0 MB were free: "
                                    "the result is larger than this disk can hold")
    monkeypatch.setattr(diskwait, "free_bytes", lambda folder: 100_000)
    attempt.enter("render", tmp_path)
    assert attempt.never_fits() is None                                # the disk was mostly full: wait
    attempt.scratch = tmp_path / "output.psd"
    attempt.scratch.write_bytes(b"x" * 2_000_000)
    attempt.enter("publish", tmp_path)
    assert attempt.never_fits() == "the finished PSD is 2.0 MB, larger than the whole disk holding out/ (1.0 MB)"


def test_a_waiting_job_is_retried_on_more_space_or_after_a_doubling_back_off(tmp_path: Path, monkeypatch) -> None:
    free = {"now": 1_000_000}
    monkeypatch.setattr(diskwait, "free_bytes", lambda folder: free["now"])
    now = time.monotonic()
    first, third = DiskWait(tmp_path, 1_000_000, now, 1), DiskWait(tmp_path, 1_000_000, now - 200, 3)
    assert not first.ready() and not third.ready()                     # 60 s, then 240 s
    free["now"] += diskwait.DISK_MARGIN_BYTES + 1
    assert first.ready() and third.ready()
    free["now"] = 0
    assert DiskWait(tmp_path, 1_000_000, now - 61, 1).ready()
    assert DiskWait(tmp_path, 1_000_000, now - 901, 20).ready()        # at most 15 minutes


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_quota_and_no_space_are_both_a_full_disk(code: int) -> None:
    assert diskwait.is_disk_full(OSError(code, "x"))
    assert not diskwait.is_disk_full(OSError(errno.EACCES, "x")) and not diskwait.is_disk_full(ValueError())


def test_a_journal_that_cannot_be_written_pauses_everything_and_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC for the claim's record: the file stays in in/, no file is taken, --once exits 1 with one line."""
    append = Journal.append

    def full(self, event: str, job_id: str, **fields) -> None:  # noqa: ANN001, ANN003
        if event == "claim":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        append(self, event, job_id, **fields)

    monkeypatch.setattr(Journal, "append", full)
    root = make_hot(tmp_path / "hot")
    make_photo(root / "in" / "a.jpg")
    lines, engine = io.StringIO(), _FailingEngine(errno.EACCES)
    rc = Watcher(root, engine, stable_seconds=STABLE, once=True, reporter=Reporter(lines)).run()
    out = lines.getvalue()
    assert rc == 1 and engine.calls == 0, out
    assert (root / "in" / "a.jpg").exists() and not any((root / "working").iterdir())
    assert out.count("waiting: the disk is full (No space left on device); no file is taken until space is "
                     "freed (free some disk space)") == 1, out
