"""Who may talk to the daemon, and how much they may send.

The daemon runs a GPU/CPU-heavy engine on the artist's machine and is reached over plain HTTP on
loopback, so it must not be drivable by a web page (browser requests carry ``Origin``, or at least
Fetch Metadata: ``<img src>`` and ``no-cors`` fetches send no ``Origin`` but do send
``Sec-Fetch-Site``), by a DNS rebinding attack (a ``Host`` that names some other site), or by anyone
on the network unless a token was set. This module is the ASGI guard that enforces that before FastAPI sees a request,
plus the helpers that decide what counts as loopback.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
from typing import Any, Awaitable, Callable, Iterable, Sequence

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_ENV = "STYLEBRIDGE_TOKEN"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "ip6-localhost", "ip6-loopback")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
#: Sec-Fetch-Site values let through: a page of this very origin (we serve none, and a rebinding page fails
#: the Host check), and "none" (the user typed the URL or opened a bookmark: no page is involved) for GET/HEAD
#: navigations only. Everything else, "cross-site", "same-site" and any unknown value, is refused.
FETCH_SITES_ALLOWED = frozenset({"same-origin"})
FETCH_SITE_USER = "none"
#: Characters a token may have: it travels in an HTTP header (RFC 9110 field values are ASCII), so printable
#: ASCII without spaces; anything else would only match as latin-1 bytes.
TOKEN_CHARS = "printable ASCII without spaces: letters, digits and the punctuation ! to ~ (e.g. - _ . ~ + /)"


class StartupError(RuntimeError):
    """The daemon cannot start with these options; the message says what to change."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]").lower()
    if host in ("localhost", "ip6-localhost", "ip6-loopback") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: the engine would be open to the network."""
    if not is_loopback(host) and not token:
        raise StartupError(
            f"refusing to listen on {host!r} without a token: anyone on the network could use this machine. "
            f"Set one with --token TOKEN or {TOKEN_ENV}=TOKEN (e.g. {secrets.token_urlsafe(18)}), "
            "or bind to 127.0.0.1")


def allowed_host_names(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """Host header names accepted for this bind address; ``None`` means any (wildcard bind + token)."""
    host = bind_host.strip().strip("[]").lower()
    if host in WILDCARD_HOSTS:
        return None
    names = set(LOOPBACK_NAMES) | {host} | {e.strip().strip("[]").lower() for e in extra if e.strip()}
    return frozenset(names)


def host_header_name(value: str) -> str:
    """``example.com:8765`` -> ``example.com``; ``[::1]:8765`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def token_matches(header: str | None, token: str) -> bool:
    """Constant-time check of ``Authorization: Bearer TOKEN``."""
    if not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


def check_token(token: str | None) -> None:
    """Refuse a token that cannot travel in an HTTP header as itself (non-ASCII, spaces, controls)."""
    if token is None:
        return
    bad = sorted({c for c in token if not "!" <= c <= "~"})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise StartupError(f"the token has characters an HTTP header cannot carry ({shown}): use {TOKEN_CHARS}, "
                           f"e.g. {secrets.token_urlsafe(18)}")


def fetch_metadata_refusal(values: list[str], others: bool, method: str, modes: Sequence[str] = ()) -> str | None:
    """Why a request's Fetch Metadata marks it as coming from another site's page, or None to let it through.

    ``values``: every ``Sec-Fetch-Site`` header (repeats and comma-joined lists are all checked, trimmed and
    case-folded); ``others``: whether any other ``Sec-Fetch-*`` header came; ``modes``: the ``Sec-Fetch-Mode``
    values. No Fetch Metadata at all (curl, the plug-in, the hot folder) passes. Fail closed: an empty or
    unknown value, ``Sec-Fetch-Mode``/``-Dest`` without ``Sec-Fetch-Site``, or ``none`` on anything but a
    GET/HEAD navigation is refused."""
    if not values:
        return "a browser request without Sec-Fetch-Site is refused" if others else None
    sites = [part.strip().lower() for value in values for part in value.split(",")]
    for site in sites:
        if site in FETCH_SITES_ALLOWED:
            continue
        if (site == FETCH_SITE_USER and method in ("GET", "HEAD")
                and all(m.strip().lower() == "navigate" for v in modes for m in v.split(","))):
            continue
        return f"requests from web pages (Sec-Fetch-Site: {site[:40]!r}) are refused"
    return None


def token_from_env(value: str | None) -> str | None:
    """The token from the command line, else from ``STYLEBRIDGE_TOKEN``; empty means none."""
    token = value if value is not None else os.environ.get(TOKEN_ENV)
    return token.strip() if token and token.strip() else None


async def send_json(send: Send, status: int, payload: dict[str, Any],
                    headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI wrapper: Origin or a cross-site Fetch Metadata -> 403, foreign Host -> 403, missing/wrong token
    -> 401, a declared body over the limit -> 413, all before the application reads or looks up anything
    (so an existing and a missing style name answer alike to a web page).

    Bodies without a Content-Length (chunked) are counted while they stream and stopped with 413.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, allowed_hosts: frozenset[str] | None,
                 max_body: int) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        sites: list[str] = []
        modes: list[str] = []
        fetch_others = False
        for key, value in scope.get("headers", ()):
            key = key.lower()
            headers.setdefault(key, value)
            if key == b"sec-fetch-site":
                sites.append(value.decode("latin-1"))
            elif key.startswith(b"sec-fetch-"):
                fetch_others = True
                if key == b"sec-fetch-mode":
                    modes.append(value.decode("latin-1"))
        if b"origin" in headers:
            await send_json(send, 403, {"error": "requests from web browsers (with an Origin header) are refused: "
                                                 "the stylebridge daemon is for local editors only"})
            return
        why = fetch_metadata_refusal(sites, fetch_others, str(scope.get("method", "GET")).upper(), modes)
        if why is not None:
            await send_json(send, 403, {"error": f"{why}: the stylebridge daemon is for local editors only"})
            return
        host = host_header_name(headers.get(b"host", b"").decode("latin-1"))
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            await send_json(send, 403, {"error": f"Host {host!r} is not an address of this daemon "
                                                 "(DNS rebinding protection); use 127.0.0.1 or localhost"})
            return
        if self.token is not None:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not token_matches(auth, self.token):
                why = "a wrong token" if auth else "no token"
                await send_json(send, 401, {"error": f"this stylebridge daemon needs a token and the request had {why}: "
                                                     "send 'Authorization: Bearer TOKEN'"},
                                headers=[(b"www-authenticate", b"Bearer")])
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_json(send, 400, {"error": "bad Content-Length header"})
                return
            if declared > self.max_body:
                await send_json(send, 413, {"error": f"the request body ({declared:,} bytes) is over the limit of "
                                                     f"{self.max_body:,} bytes",
                                            "limit": "max_upload_bytes", "value": declared})
                return
        await self._limited(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count streamed body bytes; past the limit, answer 413 whatever the app was about to say."""
        total = 0
        over = False
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal total, over
            message = await receive()
            if message.get("type") == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body:
                    over = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if over:
                if message.get("type") == "http.response.start" and not started:
                    started = True
                    await self._too_large(send, total)
                return              # the app's own answer (a parse error) is replaced
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
            if not started:
                await self._too_large(send, total)

    async def _too_large(self, send: Send, total: int) -> None:
        await send_json(send, 413, {"error": f"the request body is over the limit of {self.max_body:,} bytes "
                                             f"(stopped reading at {total:,})",
                                    "limit": "max_upload_bytes", "value": total})


class BodyTooLarge(Exception):
    """Raised inside the app's body reading once the streamed body passes the limit."""
