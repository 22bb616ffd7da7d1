"""A client for the stylebridge daemon's HTTP protocol (docs/protocol.md), standard library only.

It runs under GIMP's own Python (no pip packages there) and knows nothing of GIMP or of the
engine: only the protocol. It is imported by ``stylebridge.py`` and tested on its own.

Also a tiny command (used by the plug-in as a watchdog process)::

    python3 sb_client.py cancel-on-eof JOB_ID     # URL and token from STYLEBRIDGE_URL / STYLEBRIDGE_TOKEN

It reads standard input until end of file; unless it read ``done`` first, it cancels the job.
GIMP kills a plug-in whose progress the user cancels, so the plug-in itself cannot cancel its
job: the watchdog sees the pipe close and does it.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib

DEFAULT_URL = "http://127.0.0.1:8765"
USER_AGENT = "stylebridge-gimp/1"
TERMINAL = ("done", "failed", "cancelled")


class ClientError(Exception):
    """Anything that went wrong talking to the daemon; ``str()`` is a message for the user."""


class DaemonUnreachable(ClientError):
    def __init__(self, url: str, reason: str = "") -> None:
        self.url = url
        self.reason = reason
        super().__init__(unreachable_message(url))


class DaemonError(ClientError):
    """The daemon answered with an error status; ``message`` is its own text."""

    def __init__(self, status: int, message: str, payload: dict | None = None) -> None:
        self.status = status
        self.message = message
        self.payload = payload or {}
        super().__init__(message)


class JobFailed(ClientError):
    pass


class JobCancelled(ClientError):
    pass


def unreachable_message(url: str) -> str:
    return f"Stylebridge daemon not reachable at {url}. Start it with: stylebridge serve"


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

def encode_multipart(fields=(), files=()):
    """Encode form fields and files as multipart/form-data.

    ``fields``: iterable of (name, text); ``files``: iterable of (name, filename, bytes, content_type).
    Returns (body, content_type_header).
    """
    boundary = "sb-" + uuid.uuid4().hex
    out = []
    for name, value in fields:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_q(name)}"\r\n'
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode()
        )
        out.append(str(value).encode("utf-8"))
        out.append(b"\r\n")
    for name, filename, data, ctype in files:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_q(name)}"; '
            f'filename="{_q(filename)}"\r\nContent-Type: {ctype}\r\n\r\n'.encode()
        )
        out.append(bytes(data))
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def _q(text: str) -> str:
    # quote the characters that would break a Content-Disposition parameter
    return str(text).replace("\\", "\\\\").replace('"', "%22").replace("\r", " ").replace("\n", " ")


def _error_text(status: int, body: bytes) -> tuple[str, dict]:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        payload = None
    if isinstance(payload, dict):
        msg = payload.get("error")
        if msg is None and "detail" in payload:            # FastAPI's own errors
            detail = payload["detail"]
            if isinstance(detail, list):
                msg = "; ".join(
                    f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                    for d in detail)
            else:
                msg = str(detail)
        if msg is not None:
            return str(msg), payload
    text = body.decode("utf-8", "replace").strip()
    return (text[:500] or f"HTTP {status}"), {}


class Client:
    """One daemon. Methods raise :class:`DaemonUnreachable` or :class:`DaemonError`."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 60.0) -> None:
        url = (url or DEFAULT_URL).strip()
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        self.token = token or None
        self.timeout = timeout
        # Never send loopback traffic through a proxy named in the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- plumbing -------------------------------------------------------------------------
    def _full(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        if not path.startswith("/"):
            path = "/" + path
        if not path.startswith("/v1/") and path != "/v1":
            path = "/v1" + path
        return self.url + path

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                query: dict | None = None, timeout: float | None = None) -> tuple[int, dict, bytes]:
        url = self._full(path)
        if query:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json, image/png, */*"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            data = exc.read() if exc.fp is not None else b""
            message, payload = _error_text(exc.code, data)
            if exc.code == 401:
                message = (f"The stylebridge daemon at {self.url} refused the request: {message}. "
                           "Give the daemon's token (token argument or STYLEBRIDGE_TOKEN).")
            raise DaemonError(exc.code, message, payload) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DaemonUnreachable(self.url, str(reason)) from None

    def json(self, method: str, path: str, **kw) -> dict:
        status, _, data = self.request(method, path, **kw)
        if not data:
            return {}
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError:
            raise DaemonError(status, f"the daemon sent something that is not JSON for {path}") from None

    # -- protocol -------------------------------------------------------------------------
    def health(self, timeout: float = 5.0) -> dict:
        return self.json("GET", "/v1/health", timeout=timeout)

    def styles(self) -> list[dict]:
        return list(self.json("GET", "/v1/styles").get("styles", []))

    def add_style(self, name: str, data: bytes, filename: str = "style.png") -> dict:
        body, ctype = encode_multipart([("name", name)], [("image", filename, data, _ctype(filename))])
        return self.json("POST", "/v1/styles", body=body, content_type=ctype)

    def delete_style(self, name: str) -> None:
        self.request("DELETE", f"/v1/styles/{urllib.parse.quote(name, safe='')}")

    def fetch(self, path: str) -> bytes:
        """GET a daemon-relative URL (``/v1/jobs/ID/layers/3/image.png``) and return the bytes."""
        return self.request("GET", path)[2]

    def submit_job(self, content: bytes, *, content_name: str = "content.png", styles=(), style_files=(),
                   settings: dict | None = None, mask: bytes | None = None, mask_mode: str | None = None,
                   name: str | None = None) -> dict:
        """POST /v1/jobs. ``style_files``: iterable of (filename, bytes)."""
        fields = [("styles", s) for s in styles]
        fields.append(("settings", json.dumps(settings or {})))
        if mask_mode:
            fields.append(("mask_mode", mask_mode))
        if name:
            fields.append(("name", name))
        files = [("content", content_name, content, _ctype(content_name))]
        for filename, data in style_files:
            files.append(("style_files", filename, data, _ctype(filename)))
        if mask is not None:
            files.append(("mask", "mask.png", mask, "image/png"))
        body, ctype = encode_multipart(fields, files)
        return self.json("POST", "/v1/jobs", body=body, content_type=ctype)

    def job(self, job_id: str) -> dict:
        return self.json("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}")

    def cancel(self, job_id: str, keep_result: bool = False) -> dict:
        return self.json("POST", f"/v1/jobs/{urllib.parse.quote(job_id)}/cancel",
                         query={"keep_result": "true"} if keep_result else None, body=b"")

    def delete_job(self, job_id: str) -> None:
        """Drop a finished job and its result on the daemon (best effort)."""
        try:
            self.request("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id)}")
        except DaemonError:
            pass

    def result(self, job_id: str) -> dict:
        return self.json("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}/result")

    def preview(self, job_id: str) -> bytes | None:
        try:
            return self.fetch(f"/v1/jobs/{urllib.parse.quote(job_id)}/preview")
        except DaemonError as exc:
            if exc.status == 404:
                return None
            raise

    def wait(self, job_id: str, on_progress=None, poll: float = 0.5, timeout: float | None = None) -> dict:
        """Poll until the job ends. ``on_progress(status)`` returning False cancels the job.

        Returns the final status of a done job; raises JobFailed / JobCancelled otherwise.
        """
        start = time.monotonic()
        while True:
            status = self.job(job_id)
            if on_progress is not None and on_progress(status) is False:
                try:
                    self.cancel(job_id)
                finally:
                    raise JobCancelled("Cancelled.")
            state = status.get("status")
            if state == "done":
                return status
            if state == "failed":
                raise JobFailed(status.get("error") or "the style transfer failed")
            if state == "cancelled":
                raise JobCancelled(status.get("error") or "the job was cancelled")
            if timeout is not None and time.monotonic() - start > timeout:
                try:
                    self.cancel(job_id)
                finally:
                    raise JobFailed(f"gave up after {timeout:.0f} s")
            time.sleep(poll)


def _ctype(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "tif": "image/tiff",
            "tiff": "image/tiff", "webp": "image/webp"}.get(ext, "application/octet-stream")


def progress_fraction(status: dict) -> float:
    try:
        return max(0.0, min(1.0, float(status.get("percent") or 0.0) / 100.0))
    except (TypeError, ValueError):
        return 0.0


def progress_text(status: dict) -> str:
    state = status.get("status") or ""
    if state == "queued":
        pos = status.get("queue_position")
        return f"Stylebridge: queued{f' (position {pos})' if pos not in (None, '') else ''}"
    parts = []
    style = status.get("style_name")
    if style:
        idx, count = status.get("style_index"), status.get("style_count")
        parts.append(f"{style} ({int(idx) + 1}/{count})" if isinstance(idx, int) and count else str(style))
    stage = status.get("stage")
    stages = status.get("stages")
    if stage not in (None, ""):
        parts.append(f"stage {stage}/{stages}" if stages not in (None, "") else f"{stage}")
    it, its = status.get("iteration"), status.get("iterations")
    if it not in (None, "") and its:
        parts.append(f"iteration {it}/{its}")
    eta = status.get("eta_s")
    if isinstance(eta, (int, float)) and eta >= 0:
        parts.append(f"about {int(eta + 0.5)} s left")
    if not parts and status.get("phase"):
        parts.append(str(status["phase"]))
    return "Stylebridge: " + (", ".join(parts) if parts else (state or "starting"))


# --------------------------------------------------------------------------------------------
# PNG (enough for the plug-in: write 8/16-bit gray/RGB/RGBA, read the same for tests)
# --------------------------------------------------------------------------------------------

_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}       # channels -> PNG colour type
_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_encode(width: int, height: int, pixels: bytes, channels: int, depth: int = 8, level: int = 6) -> bytes:
    """Encode raw interleaved pixels (rows top to bottom; 16-bit samples big-endian) as PNG."""
    if channels not in _COLOR_TYPES or depth not in (8, 16):
        raise ValueError("png_encode: channels 1-4, depth 8 or 16")
    stride = width * channels * depth // 8
    if len(pixels) != stride * height:
        raise ValueError(f"png_encode: expected {stride * height} bytes, got {len(pixels)}")
    mv = memoryview(pixels)
    raw = b"".join(b"\x00" + mv[y * stride:(y + 1) * stride].tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, _COLOR_TYPES[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, level))
            + _chunk(b"IEND", b""))


def png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def png_decode(data: bytes) -> tuple[int, int, int, int, bytes]:
    """Decode a non-interlaced, non-palette PNG -> (width, height, channels, depth, raw bytes).

    Pure Python (slow for big images): for tests and small masks.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat = 8, []
    width = height = depth = ctype = interlace = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if ctype not in _CHANNELS or interlace or depth not in (8, 16):
        raise ValueError(f"png_decode: unsupported PNG (colour type {ctype}, depth {depth}, interlace {interlace})")
    channels = _CHANNELS[ctype]
    bpp = channels * depth // 8
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    out = bytearray(stride * height)
    prev = bytearray(stride)
    src = 0
    for y in range(height):
        ftype = raw[src]
        line = bytearray(raw[src + 1:src + 1 + stride])
        src += 1 + stride
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        elif ftype != 0:
            raise ValueError(f"png_decode: bad filter {ftype}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, channels, depth, bytes(out)


def swap16(data: bytes) -> bytes:
    """Native little-endian u16 samples <-> PNG big-endian."""
    import array
    arr = array.array("H")
    arr.frombytes(data)
    if sys.byteorder == "little":
        arr.byteswap()
    return arr.tobytes()


# --------------------------------------------------------------------------------------------
# watchdog
# --------------------------------------------------------------------------------------------

def cancel_on_eof(job_id: str, stream=None) -> int:
    """Block until ``stream`` closes; cancel the job unless ``done`` was written first."""
    stream = stream if stream is not None else sys.stdin.buffer
    seen = b""
    try:
        while True:
            chunk = stream.read(64)
            if not chunk:
                break
            seen += chunk
            if b"done" in seen:
                return 0
    except OSError:
        pass
    client = Client(os.environ.get("STYLEBRIDGE_URL") or DEFAULT_URL, os.environ.get("STYLEBRIDGE_TOKEN"),
                    timeout=10.0)
    for _ in range(3):
        try:
            client.cancel(job_id)
            return 0
        except DaemonError:
            return 0            # already finished or gone
        except DaemonUnreachable:
            time.sleep(1.0)
    return 1


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "cancel-on-eof":
        return cancel_on_eof(argv[1])
    if len(argv) >= 1 and argv[0] == "health":
        client = Client(argv[1] if len(argv) > 1 else DEFAULT_URL, os.environ.get("STYLEBRIDGE_TOKEN"))
        try:
            print(json.dumps(client.health()))
            return 0
        except ClientError as exc:
            print(exc, file=sys.stderr)
            return 1
    print("usage: sb_client.py cancel-on-eof JOB_ID | health [URL]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
