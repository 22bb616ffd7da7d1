"""Issue 15, the daemon's part: bounded memory, bad settings as 4xx, limit messages that state the limit.

The real daemon app served in this process on a free loopback port (tests/inprocess.py: real HTTP, the real
engine and VGG-19 weights), generated images only. Queued uploads must wait on disk, undecoded: the daemon's
process's RSS (this one's) is measured while
several 14000 x 14000 PNG uploads (571 KB each, 196 MP: 588 MB each once decoded) wait behind a
running job. Settings parsing is also checked property-based (``hypothesis``): any JSON value is
either valid settings or a :class:`SettingsError`, and over HTTP never a 500.
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import fields
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st
from PIL import Image

from bridge.settings import LIMITS, DocumentSettings, Settings, SettingsError
from bridge.settings_parse import load_settings_json, settings_from_json, settings_from_mapping
from inprocess import daemon_in_thread

BIG = 14000                                  # 196 MP: under the 200 MP max_pixels
QUEUED = 6                                   # big uploads queued in the memory test
JOB_MEMORY_MB = 16384                        # enough for one 14000 px job's estimate (~10 GB), not for 4096 px work
UPLOAD_MB = 8
TINY = {"size": 48, "iterations": 2, "coarse_to_fine": False}
LONG = {"size": 64, "iterations": 3000, "coarse_to_fine": False}   # a job that keeps the worker busy


# ------------------------------------------------------------------------------------------------
# generated inputs
# ------------------------------------------------------------------------------------------------

def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A small photo-like RGB PNG (gradient + noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=2)
def flat_png(width: int, height: int) -> bytes:
    """A complete, valid 8-bit RGB PNG of one grey, streamed through zlib (a 196 MP one is ~0.6 MB; made once:
    compressing its 588 MB of rows costs ~2 s)."""
    row = b"\x00" + b"\x80" * (3 * width)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * 500) for _ in range(height // 500)]
    parts.append(comp.compress(row * (height % 500)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------
# the daemon
# ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, amount, _ = line.split()
            values[key] = int(amount) / 1024
    return values["VmRSS:"], values["VmHWM:"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """``serve --max-upload-mb 8 --max-job-memory-mb 16384 --max-queued-jobs 8``: the real app and engine in this
    process (tests/inprocess.py), so the daemon's memory is this process's; started on a data folder where a dead
    daemon and one whose process id now belongs to another process left uploads."""
    data = tmp_path_factory.mktemp("hardening-daemon")
    orphan = data / "jobs" / str(dead_pid()) / "uploads" / "0123abcd"   # left by a daemon killed with -9
    orphan.mkdir(parents=True)
    (orphan / "content").write_bytes(b"x" * 1000)
    reused = data / "jobs" / str(os.getppid()) / "uploads" / "4567ef"    # its pid now belongs to someone else
    reused.mkdir(parents=True)
    (reused.parent.parent / ".lock").write_bytes(b"")                   # ... but nobody holds its lock
    with daemon_in_thread(data, max_upload_bytes=UPLOAD_MB * 2 ** 20, max_job_memory=JOB_MEMORY_MB * 2 ** 20,
                          max_queued_jobs=8) as url:
        yield {"url": url, "data": data, "pid": os.getpid(), "orphans": [orphan, reused],
               "jobs": data / "jobs" / str(os.getpid())}


@pytest.fixture(scope="module")
def small() -> dict[str, bytes]:
    return {"content": png_bytes(64, 48, 1), "style": png_bytes(48, 48, 2)}


def submit(url: str, content: tuple[str, bytes], styles: list[tuple[str, bytes]], settings: str | dict,
           **data: str) -> httpx.Response:
    files = [("content", (content[0], content[1], "image/png"))]
    files += [("style_files", (name, body, "image/png")) for name, body in styles]
    text = settings if isinstance(settings, str) else json.dumps(settings)
    return httpx.post(url + "/v1/jobs", files=files, data={"settings": text, **data}, timeout=120)


def wait_for(url: str, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if status["status"] in statuses or status["phase"] in statuses:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def upload_folders(daemon) -> list[Path]:
    return sorted((daemon["jobs"] / "uploads").iterdir())


# ------------------------------------------------------------------------------------------------
# item 3: memory bounded by design
# ------------------------------------------------------------------------------------------------

def test_orphaned_uploads_are_removed_at_start_up(daemon):
    for orphan in daemon["orphans"]:
        assert not orphan.parent.parent.exists(), orphan       # the gone daemon's whole folder
    assert (daemon["jobs"] / ".lock").is_file()                  # the running daemon's, held


def test_queued_uploads_wait_on_disk_not_in_memory(daemon, small):
    """Six 196 MP PNGs queued behind a running job: each waits as its 0.6 MB file, not as 588 MB of
    pixels (before this fix the daemon's RSS grew by ~0.6 GB per queued job)."""
    url, pid = daemon["url"], daemon["pid"]
    big = flat_png(BIG, BIG)
    assert len(big) < 1_000_000
    blocker = submit(url, ("busy.png", small["content"]), [("s.png", small["style"])], LONG)
    assert blocker.status_code == 202, blocker.text
    blocker_id = blocker.json()["id"]
    wait_for(url, blocker_id, ("optimizing",))
    time.sleep(1.0)
    before, _ = rss_mb(pid)
    queued = []
    try:
        for i in range(QUEUED):
            r = submit(url, (f"big{i}.png", big), [("s.png", small["style"])], {"size": 256})
            assert r.status_code == 202, r.text
            status = r.json()
            assert status["status"] == "queued" and (status["width"], status["height"]) == (BIG, BIG)
            # estimate: photo 0.6 GB + float work 6.3 GB + layers 2.5 GB + 256 px optimisation: 9-11 GB
            assert 8 * 2 ** 30 < status["memory_estimate"] < JOB_MEMORY_MB * 2 ** 20
            queued.append(status["id"])
        after, peak = rss_mb(pid)
        folders = upload_folders(daemon)
        assert len(folders) == QUEUED + 1                  # the blocker's too, until it ends
        on_disk = sum(f.stat().st_size for folder in folders for f in folder.iterdir())
        print(f"\ndaemon RSS with the blocker running: {before:.0f} MB; after {QUEUED} queued {BIG}x{BIG} PNG "
              f"uploads: {after:.0f} MB (+{after - before:.0f} MB; peak so far {peak:.0f} MB); "
              f"uploads on disk: {on_disk / 2 ** 20:.1f} MB; decoded they would be "
              f"{QUEUED * BIG * BIG * 3 / 2 ** 30:.1f} GB")
        assert after - before < 150, (before, after)
        assert not list(daemon["jobs"].glob("uploads/*/.*.part"))
    finally:
        for job_id in queued:                               # the queued ones first: never start a big one
            httpx.post(f"{url}/v1/jobs/{job_id}/cancel", timeout=30)
        httpx.post(f"{url}/v1/jobs/{blocker_id}/cancel", timeout=30)
    for job_id in queued:
        assert httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "cancelled"
    assert httpx.get(f"{url}/v1/jobs/{blocker_id}", timeout=10).json()["status"] == "cancelled"
    assert upload_folders(daemon) == []                     # every job's uploads removed when it ended


def test_a_job_that_cannot_fit_is_refused_with_its_estimate(daemon, small):
    big = flat_png(BIG, BIG)
    # 8 styles: 8 full-size result layers and masks at 196 MP (~12 GB) beyond the photo's own work, over 16 GB
    # whatever the optimisation's plan (its tiled stages follow the free memory, so they alone do not decide)
    styles = [(f"s{i}.png", small["style"]) for i in range(8)]
    r = submit(daemon["url"], ("big.png", big), styles, {"size": 4096})
    assert r.status_code == 413, r.text
    payload = r.json()
    assert payload["limit"] == "max_job_memory" and payload["value"] > JOB_MEMORY_MB * 2 ** 20
    assert "16.0 GB" in payload["error"] and "--max-job-memory-mb" in payload["error"]
    health = httpx.get(daemon["url"] + "/v1/health").json()
    assert health["limits"]["max_job_memory"] == JOB_MEMORY_MB * 2 ** 20
    assert upload_folders(daemon) == []                     # a refused submission leaves nothing behind


def test_uploads_are_decoded_when_the_job_starts_and_removed_when_it_ends(daemon, small):
    url = daemon["url"]
    # A JPEG cut in its pixel data: the header is fine (accepted), decoding fails when the job starts.
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    cut = buf.getvalue()[: len(buf.getvalue()) * 2 // 3]
    r = submit(url, ("cut.jpg", cut), [("s.png", small["style"])], TINY)
    assert r.status_code == 202, r.text
    failed = wait_for(url, r.json()["id"], ("failed", "done"))
    assert failed["status"] == "failed" and failed["error"].startswith("content: ")
    assert "truncated" in failed["error"] and str(daemon["data"]) not in failed["error"]
    # a cut PNG is refused at once (its chunks end before IEND)
    png = small["content"]
    r = submit(url, ("cut.png", png[: len(png) // 2]), [("s.png", small["style"])], TINY)
    assert r.status_code == 422 and "truncated" in r.json()["error"]
    r = submit(url, ("notes.png", b"hello, I am text"), [("s.png", small["style"])], TINY)
    assert r.status_code == 422 and "not an image" in r.json()["error"]
    done = submit(url, ("c.png", png), [("s.png", small["style"])], TINY)
    assert done.status_code == 202
    status = wait_for(url, done.json()["id"], ("done", "failed"))
    assert status["status"] == "done", status
    assert upload_folders(daemon) == []
    r = httpx.get(f"{url}/v1/jobs/{status['id']}/layers/1/image.png?level=42")   # a range limit of a query
    assert r.status_code == 422 and r.json()["limit"] == "level.maximum" and r.json()["maximum"] == 9, r.text
    assert str(r.json()["value"]) == "42"


def test_a_library_style_is_kept_for_a_queued_job(daemon, small):
    """The job links the library file when it is submitted: removing the style meanwhile does not break it."""
    url = daemon["url"]
    added = httpx.post(url + "/v1/styles", files={"image": ("keep.png", small["style"], "image/png")},
                       data={"name": "keepme"})
    assert added.status_code == 201, added.text
    blocker = submit(url, ("busy.png", small["content"]), [("s.png", small["style"])], LONG).json()["id"]
    files = [("content", ("c.png", small["content"], "image/png"))]
    r = httpx.post(url + "/v1/jobs", files=files, data={"styles": "keepme", "settings": json.dumps(TINY)})
    assert r.status_code == 202, r.text
    assert httpx.delete(url + "/v1/styles/keepme").status_code == 204
    httpx.post(f"{url}/v1/jobs/{blocker}/cancel")
    status = wait_for(url, r.json()["id"], ("done", "failed"))
    assert status["status"] == "done" and status["styles"] == ["keepme"], status


# ------------------------------------------------------------------------------------------------
# items 9 and 10: bad settings are 4xx; limit messages state the limit that applies
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, status, limit, words", [
    ("[" * 50_000 + "]" * 50_000, 413, "max_settings_bytes", ["100,000 bytes", "65,536"]),
    ("[" * 30_000 + "]" * 30_000, 422, "max_json_depth", ["nested", "32"]),
    ('{"size": ' + "[" * 40 + "]" * 40 + "}", 422, "max_json_depth", ["nested", "32"]),
    ('{"size": ' + "9" * 5000 + "}", 422, "max_json_digits", ["5000 digits", "40"]),
    ('{"iterations": 1' + "0" * 4400 + "}", 422, "max_json_digits", ["4401 digits"]),
    ('{"size": 9000}', 422, "max_size", ["9000", "limit of 4096"]),
    ('{"size": 5000}', 422, "max_size", ["5000", "limit of 4096"]),
    ('{"min-size": "9000"}', 422, "max_size", ["limit of 4096"]),
    ('{"iterations": 1e6}', 422, "max_iterations", ["1000000", "limit of 5000"]),
    ('{"coarse_iterations": 100001}', 422, "max_iterations", ["limit of 5000"]),
    ('{"style_scale": 100}', 422, "style_scale.maximum", ["maximum 8.0"]),
    ('{"size": 2}', 422, "size.minimum", ["minimum 16"]),
])
def test_settings_limits_are_4xx_with_limit_and_value(daemon, small, settings, status, limit, words):
    r = submit(daemon["url"], ("c.png", small["content"]), [("s.png", small["style"])], settings)
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["limit"] == limit and payload["value"] is not None, payload
    for word in words:
        assert word in payload["error"], payload["error"]


def test_other_bad_settings_and_fields_are_4xx(daemon, small):
    url = daemon["url"]
    for text in ('{"preset": ["draft"]}', '{"preset": {"a": 1}}', '"just text"', "[1, 2]", "{", "NaN",
                 '{"size": NaN}', '{"tv_weight": 1e999}', '{"style_blend_weights": [1e308, 1e308]}',
                 '{"content_layers": 5}', '{"seed": -1}', '{"mask_mode": ["x"]}', '{"name": "x", "size": 1}'):
        r = submit(url, ("c.png", small["content"]), [("s.png", small["style"])], text)
        assert 400 <= r.status_code < 500, (text, r.status_code, r.text)
        assert r.json()["error"]
    r = submit(url, ("c.png", small["content"]), [("s.png", small["style"])], "x" * (2 * 2 ** 20))
    assert r.status_code == 413 and r.json()["limit"] == "max_form_field_bytes", r.text
    many = [(f"s{i}.png", small["style"]) for i in range(LIMITS.max_styles + 1)]
    r = submit(url, ("c.png", small["content"]), many, TINY)
    assert r.status_code == 422 and r.json()["limit"] == "max_styles" and r.json()["value"] == 17
    assert f"limit of {LIMITS.max_styles}" in r.json()["error"]
    flood = [(f"s{i}.png", b"x") for i in range(200)]          # the parser stops counting at 4 x max_styles
    r = submit(url, ("c.png", small["content"]), flood, TINY)
    assert r.status_code == 413 and r.json()["limit"] == "max_form_files", r.text
    assert f"at most {4 * LIMITS.max_styles}" in r.json()["error"]
    assert httpx.get(url + "/v1/health").json()["status"] == "ok"


def test_too_many_pixels_quotes_the_documented_limit(daemon, small):
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    header_only = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    r = submit(daemon["url"], ("huge.png", header_only), [("s.png", small["style"])], TINY)
    assert r.status_code == 413 and r.json()["limit"] == "max_pixels" and r.json()["value"] == 900_000_000
    assert "200,000,000" in r.json()["error"] and "400,000,000" not in r.json()["error"]
    buf = io.BytesIO()     # a JPEG header claiming 30000 x 30000 (Pillow's bomb check fires on open)
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    jpeg = bytearray(buf.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
    r = submit(daemon["url"], ("huge.jpg", bytes(jpeg)), [("s.png", small["style"])], TINY)
    assert r.status_code == 413 and r.json()["value"] == 900_000_000 and "200,000,000" in r.json()["error"]


def test_a_huge_preview_is_refused_at_once_and_the_daemon_stays_small(daemon, small):
    """Issue 20, item 6, measured on the daemon's process: style files of 14000 x 14000 px (571 KB each) used to keep
    the preview worker busy for minutes and leave the daemon ~1 GB larger. Now 413 from the headers, at once."""
    from bridge.settings import PREVIEW
    big = flat_png(BIG, BIG)
    pid = daemon["pid"]
    before, _ = rss_mb(pid)
    files = [("content", ("c.png", small["content"], "image/png"))]
    files += [("style_files", (f"s{i}.png", big, "image/png")) for i in range(12)]     # 7 MB: under UPLOAD_MB
    began = time.monotonic()
    r = httpx.post(daemon["url"] + "/v1/previews", files=files, timeout=120)
    took = time.monotonic() - began
    assert r.status_code == 413, r.text
    assert r.json()["limit"] == "max_preview_pixels" and r.json()["value"] == BIG * BIG   # JOB_MEMORY_MB holds it
    assert f"{PREVIEW.max_decode_pixels:,}" in r.json()["error"]
    after, _ = rss_mb(pid)
    assert took < 5, took
    assert after - before < 150, (before, after)


# ------------------------------------------------------------------------------------------------
# property-based: settings parsing never fails with anything but SettingsError
# ------------------------------------------------------------------------------------------------

FIELD_NAMES = [f.name for cls in (Settings, DocumentSettings) for f in fields(cls)]
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
                | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=20)
option_names = st.sampled_from(FIELD_NAMES + ["preset", "mask_mode", "name", "nope"]).flatmap(
    lambda n: st.sampled_from([n, n.replace("_", "-")]))
huge_numbers = (st.integers(min_value=10 ** 30, max_value=10 ** 6000) | st.integers(min_value=-10 ** 400, max_value=0)
                | st.integers(min_value=1, max_value=5000).map(lambda n: "9" * n) | st.floats(min_value=1e30))
settings_maps = st.dictionaries(option_names, json_values | huge_numbers | st.lists(huge_numbers, max_size=3)
                                | st.sampled_from(["draft", "best", "content", "8", "1,2"]), max_size=6)
json_maps = st.dictionaries(option_names, json_values | st.integers(min_value=10 ** 30, max_value=10 ** 4000)
                            | st.floats(min_value=1e30) | st.sampled_from(["draft", "8", "1,2"]), max_size=6)


@given(settings_maps)
@hyp_settings(max_examples=300, deadline=None, database=None)
def test_any_mapping_is_settings_or_settings_error(values):
    try:
        engine, document, extra = settings_from_mapping(values, allow_extra=("mask_mode", "name"))
    except SettingsError as exc:
        assert str(exc) and exc.option
    else:
        assert isinstance(engine, Settings) and isinstance(document, DocumentSettings)


@given(st.one_of(json_values.map(json.dumps), json_maps.map(json.dumps), st.text(max_size=200),
                 st.integers(min_value=1, max_value=80).map(lambda n: "[" * n + "]" * n),
                 st.integers(min_value=30, max_value=6000).map(lambda n: '{"size": ' + "7" * n + "}")))
@hyp_settings(max_examples=300, deadline=None, database=None)
def test_any_json_text_is_settings_or_settings_error(text):
    try:
        settings_from_json(text)
    except SettingsError as exc:
        assert str(exc)


def test_json_guard_figures():
    """The caps hold at their edges: exactly max depth / digits pass, one more is refused."""
    ok = "[" * LIMITS.max_json_depth + "]" * LIMITS.max_json_depth
    assert load_settings_json(ok) is not None
    with pytest.raises(SettingsError):
        load_settings_json("[" + ok + "]")
    assert load_settings_json("9" * LIMITS.max_json_digits) == int("9" * LIMITS.max_json_digits)
    with pytest.raises(SettingsError):
        load_settings_json("9" * (LIMITS.max_json_digits + 1))


@given(st.one_of(json_maps.map(json.dumps), json_values.map(json.dumps), st.text(max_size=100)))
@hyp_settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_settings_over_http_is_never_a_500(daemon, text):
    """Through the real daemon: with a content that is no image, a settings value that passes is then
    refused for the photo (422), so no job is queued; nothing may be a 500."""
    files = [("content", ("c.png", b"not an image at all", "image/png")),
             ("style_files", ("s.png", b"neither", "image/png"))]
    r = httpx.post(daemon["url"] + "/v1/jobs", files=files, data={"settings": text}, timeout=60)
    assert 400 <= r.status_code < 500, (text, r.status_code, r.text)
    assert r.json()["error"]


@pytest.mark.parametrize("text, words", [
    ("[" * 30_000 + "]" * 30_000, ["nested deeper", "32"]),
    ('{"size": ' + "[" * 50 + "]" * 50 + "}", ["nested deeper"]),
    ('{"size": ' + "9" * 5000 + "}", ["5000 digits", "limit of 40"]),
    ("{" + " " * 70_000 + "}", ["bytes of JSON", "65,536"]),
    ('{"preset": ["draft"]}', ["not one of"]),
])
def test_hot_folder_presets_give_a_clear_error(tmp_path, text, words):
    """The hot folder reads preset.json with the same guarded parser: a SettingsError naming the file,
    never the watcher's 'internal error ... looks like a bug'."""
    from bridge.hotfolder.presets import resolve

    (tmp_path / "in").mkdir()
    (tmp_path / "preset.json").write_text(text)
    with pytest.raises(SettingsError) as err:
        resolve(tmp_path, "photo.png")
    message = str(err.value)
    assert "preset.json" in message, message
    for word in words:
        assert word in message, message
