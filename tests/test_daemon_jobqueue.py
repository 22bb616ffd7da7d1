"""bridge/daemon/jobqueue.py: the queue's worker, in-process through ``create_app(runner=...)`` (no engine).

What a job's status says when reading its uploads dropped something, and when its run fails.
"""

from __future__ import annotations

import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bridge.daemon.app import create_app
from bridge.daemon.context import DaemonConfig

BASE = "http://127.0.0.1:8765"


def _png(frames: int = 1, size: tuple[int, int] = (48, 32)) -> bytes:
    images = [Image.new("RGB", size, (40 * i, 90, 200 - 40 * i)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, format="PNG", save_all=frames > 1, append_images=images[1:], duration=80)
    return buf.getvalue()


def _run_job(tmp_path, runner, content: bytes) -> dict:
    app = create_app(DaemonConfig(data_dir=tmp_path, resolved_device="cpu"), runner=runner)
    with TestClient(app, base_url=BASE) as client:
        job = {"protocol": 2, "styles": [{"upload": 0}], "settings": {"size": 32, "iterations": 1}}
        r = client.post("/v1/jobs", data={"job": json.dumps(job)},
                        files={"content": ("photo.png", content, "image/png"),
                               "style_files": ("style.png", _png(), "image/png")})
        assert r.status_code in (200, 201, 202), r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while True:
            status = client.get(f"/v1/jobs/{job_id}").json()
            if status["status"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
                return status
            time.sleep(0.05)


def _fails_with(exc: BaseException):
    def runner(request, ctx):
        raise exc
    return runner


def test_dropped_frames_are_a_job_warning(tmp_path):
    """An animated photo: the job's status says, once, that only its first frame is used."""
    status = _run_job(tmp_path, _fails_with(RuntimeError("stop here")), _png(frames=4))
    frames = [w for w in status["warnings"] if "frames" in w]
    assert frames == ["content: animated PNG with 4 frames; only the first frame is used"], status


@pytest.mark.parametrize("exc, error", [
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "out of memory (RuntimeError): try a smaller size or fewer styles"),
    (MemoryError(), "out of memory (MemoryError): try a smaller size or fewer styles"),
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB"),
     "out of memory (RuntimeError): try a smaller size or fewer styles"),
    (KeyError("stage"), "KeyError: 'stage'"),
])
def test_a_failed_run_is_one_line_from_pipeline_classify(tmp_path, exc, error):
    status = _run_job(tmp_path, _fails_with(exc), _png())
    assert status["status"] == "failed" and status["error"] == error
