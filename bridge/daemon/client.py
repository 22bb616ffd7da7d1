"""A small Python client for the daemon (docs/protocol.md), standard library only.

Used by ``stylebridge status``, the hot folder's ``--daemon URL`` mode and the daemon's tests.
(The GIMP plug-in has its own stdlib client in ``gimp_plugin/``, since GIMP's Python cannot
import this package.) Every method raises :class:`DaemonUnreachable` when nothing answers and
:class:`DaemonError` (with the daemon's own message) for an HTTP error status.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from ..imaging import atomic_write
from .security import TOKEN_ENV

DEFAULT_URL = "http://127.0.0.1:8765"
URL_ENV = "STYLEBRIDGE_URL"
TERMINAL = ("done", "failed", "cancelled")



class ClientError(Exception):
    """Talking to the daemon went wrong; ``str()`` is a message for the user."""


class DaemonUnreachable(ClientError):
    def __init__(self, url: str, reason: str = "") -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"no stylebridge daemon at {url} ({reason}); start one with: stylebridge serve")


class DaemonError(ClientError):
    """The daemon answered an error status; ``payload`` is its JSON (``error``, maybe ``limit``/``value``)."""

    def __init__(self, status: int, message: str, payload: dict[str, Any] | None = None) -> None:
        self.status = status
        self.message = message
        self.payload = payload or {}
        super().__init__(f"HTTP {status}: {message}")


class JobFailed(ClientError):
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        super().__init__(status.get("error") or f"job {status.get('id')} {status.get('status')}")


def default_url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_URL


def _file(value: Any, default_name: str) -> tuple[str, bytes]:
    """A path, raw bytes or (filename, bytes) -> (filename, bytes)."""
    if isinstance(value, tuple):
        return str(value[0]), bytes(value[1])
    if isinstance(value, (bytes, bytearray, memoryview)):
        return default_name, bytes(value)
    path = Path(value)
    return path.name, path.read_bytes()


def _ctype(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "tif": "image/tiff",
            "tiff": "image/tiff", "webp": "image/webp"}.get(ext, "application/octet-stream")


def encode_multipart(fields: Iterable[tuple[str, str]] = (),
                     files: Iterable[tuple[str, str, bytes]] = ()) -> tuple[bytes, str]:
    """multipart/form-data body and its Content-Type for text ``fields`` and (field, filename, bytes) ``files``."""
    boundary = "sb-" + uuid.uuid4().hex

    def q(text: str) -> str:
        return str(text).replace("\\", "\\\\").replace('"', "%22").replace("\r", " ").replace("\n", " ")

    out: list[bytes] = []
    for name, value in fields:
        out += [f'--{boundary}\r\nContent-Disposition: form-data; name="{q(name)}"\r\n\r\n'.encode(),
                str(value).encode("utf-8"), b"\r\n"]
    for name, filename, data in files:
        out += [f'--{boundary}\r\nContent-Disposition: form-data; name="{q(name)}"; filename="{q(filename)}"\r\n'
                f"Content-Type: {_ctype(filename)}\r\n\r\n".encode(), data, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class DaemonClient:
    """One daemon at ``url``; ``token`` defaults to ``$STYLEBRIDGE_TOKEN``."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 120.0) -> None:
        url = (url or default_url()).strip()
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy

    # -- plumbing --------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
                query: dict[str, Any] | None = None, timeout: float | None = None) -> tuple[int, dict[str, str], bytes]:
        url = path if path.startswith(("http://", "https://")) else self.url + "/" + path.lstrip("/")
        if query:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json, image/png, */*", "User-Agent": "stylebridge-client/1"}
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
            try:
                payload = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                payload = None
            if isinstance(payload, dict) and "error" in payload:
                raise DaemonError(exc.code, str(payload["error"]), payload) from None
            raise DaemonError(exc.code, data.decode("utf-8", "replace")[:300] or exc.reason) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as exc:
            raise DaemonUnreachable(self.url, str(getattr(exc, "reason", exc))) from None

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        status, _, data = self.request(method, path, **kwargs)
        if not data:
            return {}
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError:
            raise DaemonError(status, f"the daemon sent something that is not JSON for {path}") from None

    def get_bytes(self, path: str, **query: Any) -> bytes:
        """GET a daemon-relative URL from a result (``/v1/jobs/ID/layers/3/image.png``)."""
        return self.request("GET", path, query={k: v for k, v in query.items() if v is not None} or None)[2]

    # -- health and styles ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.json("GET", "/v1/health")

    def is_running(self) -> bool:
        try:
            return self.health().get("status") == "ok"
        except ClientError:
            return False

    def styles(self) -> list[dict[str, Any]]:
        return list(self.json("GET", "/v1/styles").get("styles", []))

    def add_style(self, image: Any, name: str | None = None, *, replace: bool = False) -> dict[str, Any]:
        filename, data = _file(image, f"{name or 'style'}.png")
        fields = [("replace", "true" if replace else "false")]
        if name is not None:
            fields.append(("name", name))
        body, ctype = encode_multipart(fields, [("image", filename, data)])
        return self.json("POST", "/v1/styles", body=body, content_type=ctype)

    def remove_style(self, name: str) -> None:
        self.request("DELETE", f"/v1/styles/{urllib.parse.quote(name, safe='')}")

    def style_thumbnail(self, name: str) -> bytes:
        return self.get_bytes(f"/v1/styles/{urllib.parse.quote(name, safe='')}/thumbnail.png")

    # -- jobs -------------------------------------------------------------------------------------
    def submit(self, content: Any, *, styles: Iterable[str] = (), style_files: Iterable[Any] = (),
               settings: dict[str, Any] | None = None, mask: Any = None, mask_mode: str | None = None,
               name: str | None = None) -> dict[str, Any]:
        """POST /v1/jobs. Files are paths, bytes or (filename, bytes). Returns the job status (queued)."""
        fields: list[tuple[str, str]] = [("styles", s) for s in styles]
        fields.append(("settings", json.dumps(settings or {})))
        if mask_mode is not None:
            fields.append(("mask_mode", mask_mode))
        if name is not None:
            fields.append(("name", name))
        files = [("content", *_file(content, "content.png"))]
        files += [("style_files", *_file(f, f"style{i + 1}.png")) for i, f in enumerate(style_files)]
        if mask is not None:
            files.append(("mask", *_file(mask, "mask.png")))
        body, ctype = encode_multipart(fields, files)
        return self.json("POST", "/v1/jobs", body=body, content_type=ctype)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}")

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.json("GET", "/v1/jobs").get("jobs", []))

    def cancel(self, job_id: str, keep_result: bool = False) -> dict[str, Any]:
        return self.json("POST", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/cancel",
                         query={"keep_result": "true"} if keep_result else None, body=b"")

    def delete(self, job_id: str) -> None:
        self.request("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}")

    def preview(self, job_id: str) -> bytes | None:
        try:
            return self.get_bytes(f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/preview")
        except DaemonError as exc:
            if exc.status == 404:
                return None
            raise

    def wait(self, job_id: str, *, on_progress: Callable[[dict[str, Any]], Any] | None = None,
             poll: float = 0.25, timeout: float | None = None) -> dict[str, Any]:
        """Poll until the job ends; return its final status ``done``, else raise :class:`JobFailed`.

        ``on_progress(status)`` is called on every poll; returning False cancels the job.
        """
        start = time.monotonic()
        while True:
            status = self.job(job_id)
            if on_progress is not None and on_progress(status) is False:
                self.cancel(job_id)
                status = self.job(job_id)
            if status.get("status") in TERMINAL:
                if status["status"] != "done":
                    raise JobFailed(status)
                return status
            if timeout is not None and time.monotonic() - start > timeout:
                raise JobFailed({**status, "error": f"no result after {timeout:.0f} s"})
            time.sleep(poll)

    def result(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/result")

    def layer_image(self, job_id: str, index: int, level: int | None = None) -> bytes:
        return self.get_bytes(f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/layers/{int(index)}/image.png",
                              level=level)

    def layer_mask(self, job_id: str, index: int, level: int | None = None) -> bytes:
        return self.get_bytes(f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/layers/{int(index)}/mask.png",
                              level=level)

    def download_psd(self, job_id: str, path: str | os.PathLike) -> Path:
        """Fetch the PSD and write it atomically to ``path`` (pass a free name: it is replaced)."""
        data = self.get_bytes(f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/result.psd")
        atomic_write(path, data)
        return Path(path)

    def run(self, content: Any, *, timeout: float | None = None,
            on_progress: Callable[[dict[str, Any]], Any] | None = None, **submit_kwargs: Any) -> dict[str, Any]:
        """Submit, wait, and return the result JSON (with ``id``)."""
        job = self.submit(content, **submit_kwargs)
        self.wait(job["id"], on_progress=on_progress, timeout=timeout)
        return self.result(job["id"])
