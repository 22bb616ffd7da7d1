"""Issue 20 items 5 and 8: the hot folder's journal is replayed at every start. A line that is not a valid
record (a job id that is a list, deep nesting, random bytes, invalid UTF-8, a path out of the hot folder)
is skipped and reported once, in one line; crash recovery goes on for the others, and a photo interrupted
in working/ is resumed."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.hotfolder.claim import claim, recover
from bridge.hotfolder.journal import Journal, parse_record
from bridge.hotfolder.layout import Layout
from bridge.hotfolder.process import InProcessEngine
from bridge.hotfolder.report import Reporter
from bridge.hotfolder.watcher import Watcher

from test_hotfolder_watch import STABLE, files, make_hot, make_photo

BAD_LINES = [
    b'{"t": 1, "event": "claim", "job": ["a", "b"], "rel": "x.jpg"}',         # a job id that is a list
    b'{"t": 1, "event": "claim", "job": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",   # deep nesting
    b"\x00\xff\xfe random \x80\x81 bytes",                                        # random bytes
    b'{"t": 1, "event": "claim", "job": "caf\xe9", "rel": "x.jpg"}',           # invalid UTF-8
    b'{"t": 1, "event": "started", "job": {"id": 1}}',
    b'{"t": 1, "event": 7, "job": "j9"}',
    b'{"t": "x", "event": "claim", "job": "j9"}',
    b'{"t": 1, "event": "output-intent", "job": "j9", "tmp": "../../etc", "wanted": "out/a.psd"}',
    b'{"t": 1, "event": "output-intent", "job": "j9", "tmp": "/etc/passwd", "wanted": "out/a.psd"}',
    b'{"t": 1, "event": "claim", "job": "j9", "rel": "a/../../b.jpg"}',
    b'{"t": 1, "event": "claim", "job": "../j9", "rel": "b.jpg"}',
    b"[1, 2, 3]",
    b'"just text"',
]


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "hot").create()


@pytest.mark.parametrize("line", BAD_LINES, ids=range(len(BAD_LINES)))
def test_a_bad_line_is_skipped_and_the_others_are_replayed(layout: Layout, line: bytes, caplog) -> None:
    j = Journal(layout.journal_path)
    j.append("claim", "j1", rel="a.jpg", working="j1--a.jpg", sidecar=None)
    with open(layout.journal_path, "ab") as fh:
        fh.write(line + b"\n")
    j.append("started", "j1", rel="a.jpg")
    with caplog.at_level(logging.WARNING, logger="stylebridge.hotfolder"):
        states = j.states()
        j.states()                                      # replayed again: not said again
    assert list(states) == ["j1"] and states["j1"].events == ["claim", "started"]
    assert states["j1"].info["rel"] == "a.jpg"
    [report] = [r.getMessage() for r in caplog.records]
    assert "1 line that is not a valid record skipped" in report and "line 2" in report
    assert "recovery goes on" in report


def test_many_bad_lines_are_one_report_and_a_torn_last_line_is_silent(layout: Layout, caplog) -> None:
    j = Journal(layout.journal_path)
    j.append("claim", "j1", rel="a.jpg")
    with open(layout.journal_path, "ab") as fh:
        for line in BAD_LINES:
            fh.write(line + b"\n")
        fh.write(b'{"t": 1, "event": "sta')                 # kill -9 mid-append: the last line, unterminated
    with caplog.at_level(logging.WARNING, logger="stylebridge.hotfolder"):
        assert list(j.states()) == ["j1"]
    [report] = [r.getMessage() for r in caplog.records]
    assert f"{len(BAD_LINES)} lines that are not a valid record skipped" in report and "line 2" in report


def test_an_overlong_line_is_skipped_without_reading_it_whole(layout: Layout) -> None:
    j = Journal(layout.journal_path)
    with open(layout.journal_path, "ab") as fh:
        fh.write(b'{"t": 1, "event": "claim", "job": "j0", "rel": "' + b"a" * 3_000_000 + b'"}\n')
    j.append("claim", "j1", rel="a.jpg")
    assert list(j.states()) == ["j1"]


def test_valid_records_of_every_kind_are_kept() -> None:
    for record in [{"t": 1.5, "event": "claim", "job": "20240101-120000.123456-abcdef", "pid": 4, "rel": "sub/a b.jpg",
                    "working": "x--a b.jpg", "sidecar": None},
                   {"t": 1, "event": "output-intent", "job": "j1", "tmp": ".stylebridge/tmp/j1/a.psd",
                    "wanted": "out/sub/a.psd"},
                   {"t": 1, "event": "error", "job": "j1", "reason": "bad", "error_file": None},
                   {"t": 1, "event": "done", "job": "j1", "recovered": "error/a.jpg"},
                   {"t": 1, "event": "claim", "job": "j1", "rel": "caf\udce9.jpg", "future_field": 3}]:
        raw = json.dumps(record, ensure_ascii=True).encode()
        assert parse_record(raw) == (record, ""), record


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"event": st.sampled_from(["claim", "started", "output-intent", "done", "x"]),
                           "job": st.one_of(st.text(max_size=12), st.integers(), st.lists(st.text(), max_size=2)),
                           "rel": st.one_of(st.text(max_size=20), st.none(), st.integers())},
                          optional={"tmp": st.text(max_size=20), "wanted": st.text(max_size=20),
                                    "t": st.one_of(st.floats(), st.text(max_size=3))}).map(
        lambda d: json.dumps(d).encode())), max_size=12))
def test_any_journal_replays_without_an_exception(tmp_path_factory, lines) -> None:
    """Any bytes: replay gives typed states (text ids, text events, safe relative paths), never raises,
    and recover() on it never raises either."""
    layout = Layout(tmp_path_factory.mktemp("j") / "hot").create()
    layout.journal_path.write_bytes(b"\n".join(lines) + b"\n")
    j = Journal(layout.journal_path)
    for job_id, state in j.states().items():
        assert isinstance(job_id, str) and all(isinstance(e, str) for e in state.events)
        for key in ("rel", "tmp", "wanted"):
            value = state.info.get(key)
            assert value is None or (isinstance(value, str) and not value.startswith("/")
                                     and ".." not in value.split("/"))
    make_photo(layout.working / "20240101-000000.000000-abcdef--p.jpg", 32)
    [job] = recover(layout, j)
    assert isinstance(job.rel, str)
    job.lock.release()
    j.close()


# --- recovery of a real interrupted photo with a damaged journal ------------------------------------------

def interrupted_job(root: Path) -> str:
    """A photo claimed into working/ by a watcher that then died (its lock free, its journal as it left it)."""
    layout = Layout(root).create()
    journal = Journal(layout.journal_path)
    photo = make_photo(root / "in" / "photo.jpg", 64)
    job = claim(layout, journal, photo)
    assert job is not None
    journal.append("started", job.job_id, rel=job.rel)
    job.lock.release()                                   # the kernel does this when the watcher is killed
    journal.close()
    return job.job_id


@pytest.mark.parametrize("line", [BAD_LINES[0], BAD_LINES[1], BAD_LINES[2], BAD_LINES[3]],
                         ids=["list-id", "deep", "random", "invalid-utf8"])
def test_recovery_resumes_an_interrupted_photo_despite_a_malformed_line(tmp_path: Path, line: bytes) -> None:
    root = make_hot(tmp_path, iterations=4, size=40)
    job_id = interrupted_job(root)
    with open(root / ".stylebridge" / "journal.jsonl", "ab") as fh:
        fh.write(line + b"\n")
    assert files(root / "working") == [f"{job_id}--photo.jpg"]
    stream = io.StringIO()
    watcher = Watcher(root, InProcessEngine(), stable_seconds=STABLE, once=True, reporter=Reporter(stream))
    assert watcher.run() == 0, stream.getvalue()        # today's main: "resume failed", photo left in working/
    text = stream.getvalue()
    assert "resuming after an interrupted run" in text and "resume failed" not in text, text
    assert files(root / "out") == ["photo.psd"] and files(root / "done") == ["photo.jpg"], text
    assert files(root / "working") == [] and files(root / "error") == []


@pytest.mark.parametrize("kind", ["fifo", "link", "folder"])
def test_a_journal_that_is_not_a_file_is_set_aside_not_opened(tmp_path: Path, kind: str, caplog) -> None:
    """A FIFO would block the watcher at start, a link may lead anywhere: moved aside, a fresh journal begins."""
    import os
    path = tmp_path / ".stylebridge" / "journal.jsonl"
    path.parent.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me\n")
    {"fifo": lambda: os.mkfifo(path), "link": lambda: path.symlink_to(outside), "folder": path.mkdir}[kind]()
    with caplog.at_level(logging.WARNING, logger="stylebridge.hotfolder"):
        journal = Journal(path)           # returns at once (a FIFO opened for writing would wait for a reader)
    try:
        journal.append("claim", "a" * 12, rel="x.jpg", working="w", sidecar=None)
        assert [r["event"] for r in journal.records()] == ["claim"]
    finally:
        journal.close()
    assert path.is_file() and not path.is_symlink() and (tmp_path / ".stylebridge" / "journal.jsonl.corrupt").exists()
    assert outside.read_bytes() == b"keep me\n"
    assert any("not a file" in r.getMessage() for r in caplog.records)


def test_journal_survives_a_torn_line(layout: Layout) -> None:
    j = Journal(layout.journal_path)
    j.append("claim", "j1", rel="a.jpg")
    j.close()
    with open(layout.journal_path, "ab") as fh:
        fh.write(b'{"t": 1, "event": "sta')          # power cut mid-record
    j2 = Journal(layout.journal_path)
    j2.append("started", "j1")
    states = j2.states()
    assert states["j1"].events == ["claim", "started"]
    lines = layout.journal_path.read_bytes().splitlines()
    assert json.loads(lines[-1])["event"] == "started"
