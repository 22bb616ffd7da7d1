"""The daemon's wire protocol (docs/protocol.md) and its one client, standard library only.

The protocol's one home: port, URL and token variables, version, job states, progress text, the client and its
errors. Nothing here imports the package. Standard library only because the GIMP plug-in runs this very code in
GIMP's own Python: ``stylebridge gimp-install`` writes this file's bytes as ``sb_client.py``, and
``gimp_plugin/stylebridge/sb_client.py`` is the same copy kept in the source tree (tests/test_protocol.py checks
the bytes; after an edit: ``cp bridge/protocol.py gimp_plugin/stylebridge/sb_client.py``). Inside the package,
:class:`bridge.daemon.client.DaemonClient` adds what needs the package (atomic PSD download).

Every request raises :class:`DaemonUnreachable` when nothing answers and :class:`DaemonError` (the daemon's own
words) for an HTTP error status; :meth:`Client.wait` raises :class:`JobFailed` / :class:`JobCancelled`.
"""

from __future__ import annotations

import base64
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

DEFAULT_PORT = 8765
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
#: The protocol this client speaks (docs/protocol.md); jobs carry it, ``GET /v1/health`` answers the daemon's.
PROTOCOL_VERSION = 2
URL_ENV = "STYLEBRIDGE_URL"
TOKEN_ENV = "STYLEBRIDGE_TOKEN"          # = bridge.daemon.security.TOKEN_ENV (a test checks)
USER_AGENT = "stylebridge-client/1"
TERMINAL = ("done", "failed", "cancelled")
#: Every job state: "paused" is a batch job stopped at a checkpoint while an interactive job runs (it resumes after).
STATES = ("queued", "paused", "running", *TERMINAL)

ProgressFn = Callable[[dict], Any]


# -- errors ----------------------------------------------------------------------------------------------
class ClientError(Exception):
    """Anything that went wrong talking to the daemon; ``str()`` is a message for the user."""


def unreachable_message(url: str, reason: str = "") -> str:
    """The one message for "no daemon there" (GIMP shows it as is; the hot folder adds the reason)."""
    why = f" ({reason})" if reason else ""
    return f"Stylebridge daemon not reachable at {url}{why}. Start it with: stylebridge serve"


class DaemonUnreachable(ClientError):
    """Nothing answered at ``url``; ``reason`` is the operating system's word for it."""

    def __init__(self, url: str, reason: str = "") -> None:
        self.url = url
        self.reason = reason
        super().__init__(unreachable_message(url))


class DaemonError(ClientError):
    """The daemon answered an error status: ``message`` is its own text, ``payload`` its JSON
    (``error``, maybe ``limit``/``value``); ``str()`` may add advice (a 401 names the token)."""

    def __init__(self, status: int, message: str, payload: dict | None = None, advice: str = "") -> None:
        self.status = status
        self.message = message
        self.payload = payload or {}
        super().__init__(advice or message)


def upgrade_message(url: str, daemon_protocol: int, needed: int = PROTOCOL_VERSION) -> str:
    """The one message for a daemon older than this client."""
    return (f"The stylebridge daemon at {url} speaks protocol {daemon_protocol}; this client needs {needed}. "
            "Upgrade stylebridge where the daemon runs (pip install -U stylebridge) and restart it "
            "(stylebridge serve).")


class DaemonTooOld(ClientError):
    """The daemon's health names an older protocol (or none: protocol 1) than a request needs."""

    def __init__(self, url: str, daemon_protocol: int, needed: int = PROTOCOL_VERSION) -> None:
        self.url, self.daemon_protocol, self.needed = url, daemon_protocol, needed
        super().__init__(upgrade_message(url, daemon_protocol, needed))


def not_a_daemon_message(url: str, what: str) -> str:
    """The one message for an address where something answers that is not a stylebridge daemon."""
    return (f"{url} does not look like a stylebridge daemon ({what}). Check the daemon address "
            f"(default {DEFAULT_URL}, or {URL_ENV}) and that `stylebridge serve` runs there.")


class NotADaemon(DaemonError):
    """Something answered at ``url``, but not as a stylebridge daemon; ``what`` says what it answered."""

    def __init__(self, url: str, status: int, what: str) -> None:
        self.url, self.what = url, what
        super().__init__(status, not_a_daemon_message(url, what))


#: What every stylebridge daemon's health has held beside its status, protocol 1 (which named no protocol) included.
PROTOCOL_1_HEALTH = ("version",)


def looks_like_stylebridge(health: Any) -> bool:
    """True for the /v1/health answer of a stylebridge daemon of any version: ``status`` "ok" with the
    protocol number (protocol 2 on), or with the fields protocol 1 sent (it named no protocol)."""
    if not isinstance(health, dict) or health.get("status") != "ok":
        return False
    protocol = health.get("protocol")
    if isinstance(protocol, int) and not isinstance(protocol, bool):
        return True
    return "protocol" not in health and all(key in health for key in PROTOCOL_1_HEALTH)


class JobFailed(ClientError):
    """A job ended without a result; ``status`` is its last status JSON."""

    def __init__(self, status: dict, message: str | None = None) -> None:
        self.status = status
        super().__init__(message or status.get("error") or f"job {status.get('id')} {status.get('status')}")


class JobCancelled(JobFailed):
    """The job was cancelled (by this client or someone else)."""

# -- encoding --------------------------------------------------------------------------------------------

def content_type(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "tif": "image/tiff",
            "tiff": "image/tiff", "webp": "image/webp"}.get(ext, "application/octet-stream")


def _q(text: str) -> str:
    """Quote what would break a Content-Disposition parameter."""
    return str(text).replace("\\", "\\\\").replace('"', "%22").replace("\r", " ").replace("\n", " ")


def encode_multipart(fields: Iterable[tuple[str, Any]] = (), files: Iterable[tuple] = ()) -> tuple[bytes, str]:
    """multipart/form-data body and its Content-Type header. ``fields``: (name, text); ``files``: (name,
    filename, bytes[, content_type]) (the type defaults to one guessed from the file name)."""
    boundary = "sb-" + uuid.uuid4().hex
    out: list[bytes] = []
    for name, value in fields:
        out += [f'--{boundary}\r\nContent-Disposition: form-data; name="{_q(name)}"\r\n'
                f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode(), str(value).encode("utf-8"), b"\r\n"]
    for name, filename, data, *ctype in files:
        out += [f'--{boundary}\r\nContent-Disposition: form-data; name="{_q(name)}"; filename="{_q(filename)}"\r\n'
                f"Content-Type: {ctype[0] if ctype else content_type(filename)}\r\n\r\n".encode(), bytes(data),
                b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def as_file(value: Any, default_name: str) -> tuple[str, bytes]:
    """A path, raw bytes or (filename, bytes) -> (filename, bytes)."""
    if isinstance(value, tuple):
        return str(value[0]), bytes(value[1])
    if isinstance(value, (bytes, bytearray, memoryview)):
        return default_name, bytes(value)
    path = Path(value)
    return path.name, path.read_bytes()


def uploads(content: Any, style_files: Iterable[Any] = (), mask: Any = None,
            **numbered: tuple[Iterable[Any], str]) -> list[tuple[str, str, bytes]]:
    """A job's or preview's files for :func:`encode_multipart`: ``content``, the ``style_files``, the ``mask``,
    then each ``field=(files, stem)`` as numbered uploads (``stem1.png``...) in the order given."""
    files = [("content", *as_file(content, "content.png"))]
    numbered = {"style_files": (style_files, "style"), **numbered}
    for field, (items, stem) in numbered.items():
        files += [(field, *as_file(f, f"{stem}{i + 1}.png")) for i, f in enumerate(items)]
        if field == "style_files" and mask is not None:
            files.append(("mask", *as_file(mask, "mask.png")))
    return files


def error_text(status: int, body: bytes) -> tuple[str, dict]:
    """(message, payload) of an error answer: the daemon's ``error``, FastAPI's ``detail``, else the text."""
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


def default_url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_URL


def _quote(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


# -- the client ------------------------------------------------------------------------------------------
class Client:
    """One daemon at ``url`` (default ``$STYLEBRIDGE_URL``, else the default port on loopback);
    ``token`` defaults to ``$STYLEBRIDGE_TOKEN`` (``""``: none)."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 120.0,
                 user_agent: str = USER_AGENT) -> None:
        url = (url or default_url()).strip()
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        self.token = (token if token is not None else os.environ.get(TOKEN_ENV)) or None
        self.timeout = timeout
        self.user_agent = user_agent
        # Never send loopback traffic through a proxy named in the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._protocol: int | None = None        # the daemon's, from its health (asked once)

    # -- plumbing --------------------------------------------------------------------------------
    def _full(self, path: str) -> str:
        """Absolute URLs as they are; ``/v1/...`` paths (as in results) and ``jobs/...`` (under /v1)."""
        if path.startswith(("http://", "https://")):
            return path
        if not path.startswith("/"):
            path = "/" + path
        if not path.startswith("/v1/") and path != "/v1":
            path = "/v1" + path
        return self.url + path

    def request(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
                query: dict | None = None, timeout: float | None = None) -> tuple[int, dict, bytes]:
        """One HTTP exchange -> (status, headers, body); errors as :class:`DaemonError`/:class:`DaemonUnreachable`."""
        url = self._full(path)
        if query:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": self.user_agent, "Accept": "application/json, image/png, */*"}
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
            message, payload = error_text(exc.code, data)
            advice = ""
            if exc.code == 401:
                advice = (f"The stylebridge daemon at {self.url} refused the request: {message}. "
                          f"Give the daemon's token (token argument or {TOKEN_ENV}).")
            raise DaemonError(exc.code, message, payload, advice) from None
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
        """GET a daemon-relative URL from a result (``/v1/jobs/ID/layers/3/image.png``); None values are left out."""
        return self.request("GET", path, query={k: v for k, v in query.items() if v is not None} or None)[2]

    # -- health and styles ------------------------------------------------------------------------
    def health(self, timeout: float | None = None) -> dict:
        """The daemon's health; :class:`NotADaemon` when what answers is not one (not taken for an old one)."""
        try:
            status, headers, data = self.request("GET", "/v1/health", timeout=timeout)
        except DaemonError as exc:
            if "error" in exc.payload and exc.status != 404:
                raise                  # a stylebridge daemon refusing (token, Host) or busy: its own words
            raise NotADaemon(self.url, exc.status, f"it answered HTTP {exc.status} to GET /v1/health") from None
        try:
            answer = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            kind = {k.lower(): v for k, v in headers.items()}.get("content-type", "").split(";")[0].strip()
            raise NotADaemon(self.url, status, f"it answered GET /v1/health with {kind or 'something'} that is "
                                               "not JSON") from None
        if not looks_like_stylebridge(answer):
            raise NotADaemon(self.url, status, "it answered GET /v1/health with JSON that is not a stylebridge "
                                               "health (no \"status\": \"ok\" with a protocol)")
        return answer

    def daemon_protocol(self) -> int:
        """The protocol the daemon speaks (its health's ``protocol``; none there = 1), asked once."""
        if self._protocol is None:
            value = self.health().get("protocol")
            self._protocol = value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
        return self._protocol

    def require_protocol(self, needed: int = PROTOCOL_VERSION) -> None:
        """Raise :class:`DaemonTooOld` (saying to upgrade the daemon) when it speaks an older protocol."""
        have = self.daemon_protocol()
        if have < needed:
            raise DaemonTooOld(self.url, have, needed)

    def is_running(self) -> bool:
        try:
            return self.health().get("status") == "ok"
        except ClientError:
            return False

    def styles(self) -> list[dict]:
        return list(self.json("GET", "/v1/styles").get("styles", []))

    def add_style(self, image: Any, name: str | None = None, *, replace: bool = False) -> dict:
        """Add ``image`` (path, bytes or (filename, bytes)) to the library as ``name`` (default: from the file name)."""
        filename, data = as_file(image, f"{name or 'style'}.png")
        fields = [("replace", "true" if replace else "false")]
        if name is not None:
            fields.append(("name", name))
        body, ctype = encode_multipart(fields, [("image", filename, data)])
        return self.json("POST", "/v1/styles", body=body, content_type=ctype)

    def remove_style(self, name: str) -> None:
        self.request("DELETE", f"/v1/styles/{_quote(name)}")

    def style_thumbnail(self, name: str) -> bytes:
        return self.get_bytes(f"/v1/styles/{_quote(name)}/thumbnail.png")

    def estimate(self, width: int, height: int, styles: int = 1, settings: dict | None = None,
                 timeout: float | None = None) -> dict:
        """POST /v1/estimate: how long a job with these ``settings`` (``preset`` included) would take here for
        a ``width`` x ``height`` photo: ``{"seconds", "working_size", "stages", "device", "measured", ...}``."""
        body = json.dumps({"width": int(width), "height": int(height), "styles": int(styles),
                           "settings": dict(settings or {})}).encode("utf-8")
        return self.json("POST", "/v1/estimate", body=body, content_type="application/json", timeout=timeout)

    # -- jobs -------------------------------------------------------------------------------------
    def submit(self, content: Any, *, styles: Iterable[str] = (), style_files: Iterable[Any] = (),
               settings: dict | None = None, mask: Any = None, mask_mode: str | None = None,
               name: str | None = None) -> dict:
        """POST /v1/jobs. Files are paths, bytes or (filename, bytes). Returns the job status (queued)."""
        fields: list[tuple[str, str]] = [("styles", s) for s in styles]
        fields.append(("settings", json.dumps(settings or {})))
        if mask_mode is not None:
            fields.append(("mask_mode", mask_mode))
        if name is not None:
            fields.append(("name", name))
        body, ctype = encode_multipart(fields, uploads(content, style_files, mask))
        return self.json("POST", "/v1/jobs", body=body, content_type=ctype)

    def submit_job(self, content: Any, job: dict, *, style_files: Iterable[Any] = (), mask: Any = None,
                   style_mask_files: Iterable[Any] = (), region_files: Iterable[Any] = ()) -> dict:
        """POST /v1/jobs with a job description (``JobSpec.to_json()``, protocol 2); returns its status.
        ``{"upload": i}`` in styles / mask / style_masks / regions names the i-th of ``style_files`` / ``mask``
        (0) / ``style_mask_files`` / ``region_files``. Files are paths, bytes or (filename, bytes)."""
        self.require_protocol(2)
        job = dict(job)
        job.setdefault("protocol", PROTOCOL_VERSION)
        files = uploads(content, style_files, mask, style_mask_files=(style_mask_files, "mask"),
                        region_files=(region_files, "region"))
        body, ctype = encode_multipart([("job", json.dumps(job))], files)
        return self.json("POST", "/v1/jobs", body=body, content_type=ctype)

    def previews(self, content: Any, *, styles: Iterable[str] = (), style_files: Iterable[Any] = (),
                 size: int | None = None, timeout: float | None = None, method: str = "instant",
                 settings: dict | None = None) -> list[dict]:
        """POST /v1/previews (never waits behind jobs): one item per style (library names, then files) with
        ``style``, ``label``, ``width``, ``height``, ``method``, ``seconds``, ``png`` bytes, or ``skipped``,
        ``reason``, ``error``. ``size``: long side (16..1024, default 512). ``method`` "instant": a fast
        impression from another network; "faithful": a small real Gatys run with the job's ``settings``."""
        self.require_protocol(2)
        fields: list[tuple[str, Any]] = [("styles", s) for s in styles]
        if size is not None:
            fields.append(("size", int(size)))
        if method != "instant":
            fields.append(("method", method))
        if settings:
            fields.append(("settings", json.dumps(settings)))
        body, ctype = encode_multipart(fields, uploads(content, style_files))
        answer = self.json("POST", "/v1/previews", body=body, content_type=ctype, timeout=timeout)
        out = []
        for item in answer.get("previews", []):
            item = dict(item)
            item["png"] = base64.b64decode(item.pop("png_base64", "") or b"")
            out.append(item)
        return out

    def job(self, job_id: str) -> dict:
        return self.json("GET", f"/v1/jobs/{_quote(job_id)}")

    def jobs(self) -> list[dict]:
        return list(self.json("GET", "/v1/jobs").get("jobs", []))

    def cancel(self, job_id: str, keep_result: bool = False) -> dict:
        return self.json("POST", f"/v1/jobs/{_quote(job_id)}/cancel",
                         query={"keep_result": "true"} if keep_result else None, body=b"")

    def delete(self, job_id: str) -> None:
        """Drop a job and its result on the daemon."""
        self.request("DELETE", f"/v1/jobs/{_quote(job_id)}")

    def result(self, job_id: str) -> dict:
        return self.json("GET", f"/v1/jobs/{_quote(job_id)}/result")

    def preview(self, job_id: str) -> bytes | None:
        """The latest preview PNG, or None while there is none yet."""
        try:
            return self.get_bytes(f"/v1/jobs/{_quote(job_id)}/preview")
        except DaemonError as exc:
            if exc.status == 404:
                return None
            raise

    def layer_image(self, job_id: str, index: int, level: int | None = None) -> bytes:
        return self.get_bytes(f"/v1/jobs/{_quote(job_id)}/layers/{int(index)}/image.png", level=level)

    def layer_mask(self, job_id: str, index: int, level: int | None = None) -> bytes:
        return self.get_bytes(f"/v1/jobs/{_quote(job_id)}/layers/{int(index)}/mask.png", level=level)

    def wait(self, job_id: str, *, on_progress: ProgressFn | None = None, poll: float = 0.25,
             timeout: float | None = None, sleep: Callable[[float], None] = time.sleep) -> dict:
        """Poll until the job ends; its final status if ``done``, else :class:`JobFailed` / :class:`JobCancelled`.
        ``on_progress(status)`` on every poll: False cancels the job (once) and follows it to its end. After
        ``timeout`` s the job is cancelled (JobFailed). ``sleep``: between polls (a GUI keeps its window live)."""
        start = time.monotonic()
        cancelling = False
        while True:
            status = self.job(job_id)
            if not cancelling and on_progress is not None and on_progress(status) is False:
                cancelling = True
                self._cancel_quietly(job_id)
                status = self.job(job_id)
            state = status.get("status")
            if state == "done":
                return status
            if state == "cancelled":
                raise JobCancelled(status, status.get("error") or "the job was cancelled")
            if state in TERMINAL:
                raise JobFailed(status, status.get("error") or "the style transfer failed")
            if timeout is not None and time.monotonic() - start > timeout:
                self._cancel_quietly(job_id)
                raise JobFailed({**status, "error": f"no result after {timeout:.0f} s"})
            sleep(poll)

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self.cancel(job_id)
        except DaemonError:
            pass                # already finished or gone: the next poll tells

    def run(self, content: Any, *, timeout: float | None = None, on_progress: ProgressFn | None = None,
            **submit_kwargs: Any) -> dict:
        """Submit, wait, and return the result JSON (with ``id``)."""
        job = self.submit(content, **submit_kwargs)
        self.wait(job["id"], on_progress=on_progress, timeout=timeout)
        return self.result(job["id"])


# -- status in words -------------------------------------------------------------------------------------
def progress_fraction(status: dict) -> float:
    """A job status's ``percent`` as 0..1 (0 when missing)."""
    try:
        return max(0.0, min(1.0, float(status.get("percent") or 0.0) / 100.0))
    except (TypeError, ValueError):
        return 0.0


def progress_text(status: dict) -> str:
    """One line for a progress bar: queue position, or style, stage, iteration and time left."""
    state = status.get("status") or ""
    if state == "queued":
        pos = status.get("queue_position")
        return f"Stylebridge: queued{f' (position {pos})' if pos not in (None, '') else ''}"
    if state == "paused":
        return "Stylebridge: paused for an interactive job; resumes after it"
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
