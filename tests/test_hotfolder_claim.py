"""Claims, per-job locks and recovery of the hot folder (no engine needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.hotfolder.claim import JobLock, claim, clean_tmp, recover, sidecar_for
from bridge.hotfolder.journal import Journal
from bridge.hotfolder.layout import Layout

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "hot").create()


def test_claim_moves_file_and_sidecar_and_journals(layout: Layout) -> None:
    journal = Journal(layout.journal_path)
    (layout.inbox / "sub").mkdir()
    src = layout.inbox / "sub" / "photo.jpg"
    src.write_bytes(b"data")
    (layout.inbox / "sub" / "photo.json").write_text('{"iterations": 3}')
    job = claim(layout, journal, src)
    assert job is not None
    assert not src.exists() and job.working.read_bytes() == b"data"
    assert job.working.parent == layout.working and job.working.name.endswith("--photo.jpg")
    assert job.rel == "sub/photo.jpg" and job.subdir == "sub" and job.name == "photo.jpg"
    assert job.sidecar is not None and job.sidecar.read_text() == '{"iterations": 3}'
    assert not (layout.inbox / "sub" / "photo.json").exists()
    st = journal.states()[job.job_id]
    assert st.events == ["claim"] and st.info["rel"] == "sub/photo.jpg" and st.info["sidecar"] == "photo.json"
    # Our lock is held: nobody else may resume this job.
    assert not JobLock(layout, job.job_id).acquire()
    job.lock.release()


def test_second_claim_of_same_file_loses(layout: Layout) -> None:
    journal = Journal(layout.journal_path)
    src = layout.inbox / "a.jpg"
    src.write_bytes(b"x")
    first = claim(layout, journal, src)
    second = claim(layout, journal, src)
    assert first is not None and second is None
    assert len(list(layout.working.iterdir())) == 1


def test_sidecar_prefers_full_name(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    img.write_bytes(b"x")
    (tmp_path / "a.json").write_text("{}")
    assert sidecar_for(img) == tmp_path / "a.json"
    (tmp_path / "a.jpg.json").write_text("{}")
    assert sidecar_for(img) == tmp_path / "a.jpg.json"


def test_two_processes_racing_claim_each_file_once(layout: Layout) -> None:
    """Two real processes claim from the same in/ at once: every file is claimed exactly once."""
    n = 60
    for i in range(n):
        (layout.inbox / f"f{i:03d}.jpg").write_bytes(b"x" * i)
    script = textwrap.dedent(f"""
        import sys, json
        from pathlib import Path
        from bridge.hotfolder.claim import claim
        from bridge.hotfolder.journal import Journal
        from bridge.hotfolder.layout import Layout
        layout = Layout(Path({str(layout.root)!r}))
        journal = Journal(layout.journal_path)
        order = layout.inputs()
        if sys.argv[1] == "rev":
            order = order[::-1]
        got = []
        for p in order:
            job = claim(layout, journal, p)
            if job:
                got.append(job.rel)
                job.lock.release()
        print(json.dumps(got))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, arg], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for arg in ("fwd", "rev")]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    claimed = results[0] + results[1]
    assert sorted(claimed) == sorted(f"f{i:03d}.jpg" for i in range(n))
    assert len(set(claimed)) == n
    assert len(list(layout.working.iterdir())) == n
    claims = [r for r in Journal(layout.journal_path).records() if r["event"] == "claim"]
    lost = [r for r in Journal(layout.journal_path).records() if r["event"] == "lost"]
    assert len(claims) - len(lost) == n


def test_recover_skips_jobs_locked_by_a_live_process(layout: Layout) -> None:
    journal = Journal(layout.journal_path)
    for name in ("a.jpg", "b.jpg"):
        (layout.inbox / name).write_bytes(b"x")
    ja = claim(layout, journal, layout.inbox / "a.jpg")
    jb = claim(layout, journal, layout.inbox / "b.jpg")
    assert ja and jb
    ja.lock.release()                      # a's owner "died"
    # b's lock is held by another live process (flock is per open file, so a child holds it).
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(jb.lock.path)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    jb.lock.release()
    try:
        assert holder.stdout.readline().strip() == "locked"
        jobs = recover(layout, journal)
        assert [j.rel for j in jobs] == ["a.jpg"]
        assert jobs[0].resumed and jobs[0].state.events[0] == "claim"
        jobs[0].lock.release()
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is dead (killed), b is recoverable too.
    assert sorted(j.rel for j in recover(layout, journal)) == ["a.jpg", "b.jpg"]


def test_recover_takes_sidecar_left_in_inbox_by_a_crash(layout: Layout) -> None:
    journal = Journal(layout.journal_path)
    src = layout.inbox / "a.jpg"
    src.write_bytes(b"x")
    side = layout.inbox / "a.json"
    side.write_text("{}")
    job_id = "20260101-000000-deadbeef"
    journal.append("claim", job_id, rel="a.jpg", working=f"{job_id}--a.jpg", sidecar="a.json")
    os.rename(src, layout.working / f"{job_id}--a.jpg")   # crash before the sidecar moved
    [job] = recover(layout, journal)
    assert job.sidecar == layout.working / f"{job_id}--a.json" and job.sidecar.exists()
    assert not side.exists()


def test_recover_adopts_foreign_file_in_working(layout: Layout) -> None:
    journal = Journal(layout.journal_path)
    (layout.working / "stray.png").write_bytes(b"x")
    [job] = recover(layout, journal)
    assert job.rel == "stray.png" and job.working.exists() and job.working.name.endswith("--stray.png")


def test_clean_tmp_keeps_live_jobs(layout: Layout) -> None:
    live = JobLock(layout, "live")
    assert live.acquire()
    for name in ("live", "dead"):
        (layout.tmp / name).mkdir()
        (layout.tmp / name / ".out.psd.x.part").write_bytes(b"partial")
    removed = clean_tmp(layout)
    assert [p.name for p in removed] == ["dead"]
    assert (layout.tmp / "live").exists() and not (layout.tmp / "dead").exists()
    live.release()
