"""Issue 20 items 4 and 8: a daemon that starts takes over the unfinished jobs of a dead one from their
``job.json``. A damaged description (a field of the wrong type, 100,000 levels of nesting, a file named out of
its folder, a link) never stops the start: that job's folder is set aside in ``jobs/quarantine/`` with its
uploads and one warning line, the good ones are resumed, and the next start does not trip on it. The start
is :class:`JobManager`'s constructor, what ``serve`` runs (over a real data folder, a stub renderer)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.daemon import persist
from bridge.daemon.jobfiles import JobFiles
from bridge.daemon.jobqueue import JobManager
from bridge.daemon.memory import ImageShape
from bridge.job import JobSpec, Source
from bridge.settings_parse import settings_from_mapping

from test_daemon_api import SAMPLES, png_of

PNG = png_of(SAMPLES["coffee"], 48)
STYLE = png_of(SAMPLES["starry_night"], 48)
FIXED = {"device": "cpu"}


def dead_daemon(jobs: Path) -> Path:
    """``jobs/<pid>`` of a daemon that is gone (its lock file free)."""
    dead = jobs / "99999999"
    (dead / "uploads").mkdir(parents=True, exist_ok=True)
    (dead / ".lock").touch()
    return dead


def stored_job(dead: Path, edit: Callable[[dict[str, Any]], Any] | None = None, *, raw: bytes | None = None,
               job_id: str | None = None) -> tuple[str, Path]:
    """A job folder as ``submit`` leaves it (uploads, job.json by :func:`persist.save`), its description then
    edited (``edit`` changes the record) or replaced by ``raw`` bytes. Returns (id, folder)."""
    folder = dead / "uploads" / uuid.uuid4().hex
    folder.mkdir()
    (folder / "content.png").write_bytes(PNG)
    (folder / "style0.png").write_bytes(STYLE)
    options = {"size": 48, "iterations": 5, "coarse_to_fine": False}
    spec = JobSpec.build(options, [Source(upload=0, name="starry")], name="photo")
    engine, document, _ = settings_from_mapping(options)
    files = JobFiles(folder=folder, content=folder / "content.png", content_name="photo.png",
                     content_shape=ImageShape(48, 36, file_bytes=len(PNG)), styles=[("starry", folder / "style0.png")],
                     settings=engine, document=document, name="photo", estimate=1000, spec=spec.to_json())
    job_id = job_id or uuid.uuid4().hex
    persist.save(folder, job_id, time.time(), files)
    if edit is not None:
        record = json.loads((folder / persist.JOB_FILE).read_text())
        edit(record)
        (folder / persist.JOB_FILE).write_text(json.dumps(record))
    if raw is not None:
        (folder / persist.JOB_FILE).write_bytes(raw)
    return job_id, folder


def start(jobs: Path) -> JobManager:
    return JobManager(lambda request, ctx: None, jobs, fixed=FIXED)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = record
        for key in parents:
            target = target[key]
        target[last] = value
    return edit


BAD = {
    "width-as-text": (_set("content_shape.width", "96"), "content_shape.width"),
    "deep-nesting": (None, "nested"),
    "content-escapes": (_set("content", "../../../../etc/passwd"), "not a file of the job's folder"),
    "absolute-style": (_set("styles", [["starry", "/etc/passwd"]]), "not a file of the job's folder"),
    "id-escapes": (_set("id", "../../../somewhere"), "not a job id"),
    "settings-wrong-type": (_set("settings.iterations", [1, 2]), "iterations"),
    "styles-not-pairs": (_set("styles", "style0.png"), "styles"),
    "priority-list": (_set("priority", ["batch"]), "priority"),
}


@pytest.mark.parametrize("bad", list(BAD))
def test_a_bad_orphan_is_quarantined_and_a_good_one_resumed(tmp_path: Path, bad: str, caplog) -> None:
    jobs = tmp_path / "jobs"
    dead = dead_daemon(jobs)
    good_id, _ = stored_job(dead)
    edit, words = BAD[bad]
    raw = (b'{"format": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}") if bad == "deep-nesting" else None
    _, bad_folder = stored_job(dead, edit, raw=raw)
    with caplog.at_level(logging.WARNING, logger="stylebridge"):
        manager = start(jobs)                          # today's main: TypeError / RecursionError out of the start
    try:
        [job] = manager.jobs()
        assert job.id == good_id and job.resumed and job.status == "queued"
        aside = jobs / persist.QUARANTINE / bad_folder.name
        assert sorted(p.name for p in aside.iterdir()) == ["content.png", "job.json", "style0.png"]
        assert (aside / "content.png").read_bytes() == PNG           # the user's files are kept
        [line] = warnings_of(caplog)
        assert words in line and str(aside) in line and "\n" not in line
    finally:
        manager.stop()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stylebridge"):
        again = start(jobs)                            # the next start: the quarantine is left alone
    try:
        assert [j.id for j in again.jobs()] == [good_id]
        assert warnings_of(caplog) == [] and (aside / "content.png").read_bytes() == PNG
    finally:
        again.stop()


def test_links_are_never_followed(tmp_path: Path, caplog) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    jobs = tmp_path / "jobs"
    dead = dead_daemon(jobs)
    _, linked_upload = stored_job(dead)
    (linked_upload / "content.png").unlink()
    (linked_upload / "content.png").symlink_to(secret)
    _, linked_description = stored_job(dead)
    real = linked_description / persist.JOB_FILE
    (tmp_path / "elsewhere.json").write_bytes(real.read_bytes())
    real.unlink()
    real.symlink_to(tmp_path / "elsewhere.json")
    with caplog.at_level(logging.WARNING, logger="stylebridge"):
        manager = start(jobs)
    try:
        assert manager.jobs() == []
        assert sorted(p.name for p in (jobs / persist.QUARANTINE).iterdir()) == sorted(
            [linked_upload.name, linked_description.name])
        assert len(warnings_of(caplog)) == 2
        assert secret.read_bytes() == PNG
    finally:
        manager.stop()


def test_an_oversized_description_is_not_read(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    dead = dead_daemon(jobs)
    _, folder = stored_job(dead, raw=b" " * (persist.MAX_JOB_FILE_BYTES + 1) + b"{}")
    manager = start(jobs)
    try:
        assert manager.jobs() == [] and (jobs / persist.QUARANTINE / folder.name / "content.png").is_file()
    finally:
        manager.stop()


def test_two_orphans_with_one_id_resume_once(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    dead = dead_daemon(jobs)
    stored_job(dead, job_id="a" * 32)
    stored_job(dead, job_id="a" * 32)
    manager = start(jobs)
    try:
        assert [j.id for j in manager.jobs()] == ["a" * 32]
        assert len(list((jobs / persist.QUARANTINE).iterdir())) == 1
    finally:
        manager.stop()


# --- any description: resumed or quarantined with its uploads, never an exception --------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=10)
FIELDS = ["format", "id", "created", "priority", "job", "settings", "document", "content", "content_name",
          "content_shape", "styles", "mask", "style_masks", "name", "estimate", "max_pixels",
          "content_shape.width", "content_shape.alpha", "settings.size", "document.depth"]


def check_start(jobs: Path, folder: Path) -> None:
    manager = start(jobs)                              # must not raise
    try:
        queued = [j for j in manager.jobs()]
        aside = jobs / persist.QUARANTINE / folder.name
        if queued:
            assert len(queued) == 1 and queued[0].files is not None
            assert (queued[0].files.folder / "content.png").read_bytes() == PNG
        else:
            assert (aside / "content.png").read_bytes() == PNG and (aside / "style0.png").read_bytes() == STYLE
    finally:
        manager.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), value=JSON)
def test_any_field_value_is_resumed_or_quarantined(tmp_path_factory, field, value) -> None:
    jobs = tmp_path_factory.mktemp("f") / "jobs"
    dead = dead_daemon(jobs)

    def edit(record: dict[str, Any]) -> None:
        try:
            _set(field, value)(record)
        except TypeError:
            record[field.split(".")[0]] = value
    _, folder = stored_job(dead, edit)
    check_start(jobs, folder)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.one_of(st.binary(max_size=300), JSON.map(lambda v: json.dumps(v).encode())))
def test_any_description_bytes_are_resumed_or_quarantined(tmp_path_factory, raw) -> None:
    jobs = tmp_path_factory.mktemp("b") / "jobs"
    _, folder = stored_job(dead_daemon(jobs), raw=raw)
    check_start(jobs, folder)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_damage_to_a_real_description_is_resumed_or_quarantined(tmp_path_factory, data) -> None:
    jobs = tmp_path_factory.mktemp("d") / "jobs"
    dead = dead_daemon(jobs)
    _, folder = stored_job(dead)
    text = bytearray((folder / persist.JOB_FILE).read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        text[data.draw(st.integers(0, 10 ** 6)) % len(text)] = data.draw(st.integers(0, 255))
    (folder / persist.JOB_FILE).write_bytes(bytes(text))
    check_start(jobs, folder)
