"""The Guard against web pages (issue 20, item 1) and tokens that cannot travel in a header (item 7d).

In process: ``create_app`` with a stub runner behind Starlette's TestClient (real ASGI, no sockets). A browser
sends no ``Origin`` for ``<img src>`` or ``fetch(..., {mode: "no-cors"})`` but does send Fetch Metadata, so
``Sec-Fetch-Site: cross-site``/``same-site`` (and any value we do not know) are refused on every route, before
any lookup: an existing and a missing style answer alike.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bridge.cli import main as cli_main
from bridge.daemon.app import DaemonConfig, create_app
from bridge.daemon.security import StartupError, check_token

TOKEN = "sec-token"
BASE = "http://127.0.0.1:8765"


def _png(width: int = 24, height: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _runner(request, ctx):      # never reached: jobs are refused before they queue
    raise AssertionError("no job should run")


@pytest.fixture()
def app_client(tmp_path):
    """(client, data folder) for a daemon without a token (the default), one style 'exists' in its library."""
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / "exists.png").write_bytes(_png())
    app = create_app(DaemonConfig(data_dir=tmp_path, resolved_device="cpu"), runner=_runner)
    with TestClient(app, base_url=BASE) as client:
        yield client, tmp_path


ROUTES = [
    ("GET", "/v1/health"), ("GET", "/openapi.json"), ("GET", "/v1/styles"),
    ("GET", "/v1/styles/exists/image"), ("GET", "/v1/styles/missing/image"),
    ("GET", "/v1/styles/exists/thumbnail.png"), ("GET", "/v1/styles/missing/thumbnail.png"),
    ("DELETE", "/v1/styles/exists"), ("POST", "/v1/styles"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/abc"), ("POST", "/v1/previews"), ("POST", "/v1/estimate"), ("GET", "/v1/nowhere"),
]


@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site", "  SAME-SITE\t", "", "bogus",
                                  "same-origin, cross-site", "none, cross-site", "cross-site,same-origin"])
def test_cross_site_fetch_metadata_is_refused_on_every_route_before_any_lookup(app_client, site):
    client, data = app_client
    bodies = set()
    for method, path in ROUTES:
        r = client.request(method, path, headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors",
                                                  "Sec-Fetch-Dest": "image"})
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        bodies.add(r.text)
    assert len(bodies) == 1               # existing and missing names answer alike: nothing to tell them apart
    assert "Sec-Fetch-Site" in bodies.pop()
    assert (data / "styles" / "exists.png").is_file()      # the DELETE did nothing


def test_repeated_sec_fetch_site_headers_are_all_checked(app_client):
    client, _ = app_client
    for pair in (("same-origin", "cross-site"), ("cross-site", "same-origin"), ("same-origin", "")):
        headers = [(b"sec-fetch-site", pair[0].encode()), (b"sec-fetch-site", pair[1].encode())]
        r = client.get("/v1/styles/exists/image", headers=headers)
        assert r.status_code == 403, pair
    ok = [(b"sec-fetch-site", b"same-origin"), (b"sec-fetch-site", b"Same-Origin")]
    assert client.get("/v1/styles/exists/image", headers=ok).status_code == 200


def test_browser_like_headers_without_sec_fetch_site_fail_closed(app_client):
    client, _ = app_client
    for headers in ({"Sec-Fetch-Mode": "no-cors"}, {"Sec-Fetch-Dest": "image"}, {"Sec-Fetch-User": "?1"}):
        assert client.get("/v1/styles/exists/image", headers=headers).status_code == 403, headers


def test_same_origin_and_typed_urls_and_plain_clients_pass(app_client):
    client, _ = app_client
    assert client.get("/v1/styles/exists/image").status_code == 200           # curl, the plug-in, the hot folder
    assert client.get("/v1/styles/missing/image").status_code == 404
    assert client.get("/v1/styles/exists/image", headers={"Sec-Fetch-Site": "same-origin",
                                                          "Sec-Fetch-Mode": "cors"}).status_code == 200
    # "none": the user typed the URL or opened a bookmark (a navigation: GET, mode navigate) -> allowed
    navigate = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert client.get("/v1/styles", headers=navigate).status_code == 200
    assert client.get("/v1/styles", headers={"Sec-Fetch-Site": " None "}).status_code == 200
    # ... but "none" on anything that is not a GET navigation is no typed URL: refused
    assert client.get("/v1/styles", headers={**navigate, "Sec-Fetch-Mode": "no-cors"}).status_code == 403
    assert client.delete("/v1/styles/exists", headers={"Sec-Fetch-Site": "none"}).status_code == 403


def test_the_origin_check_stays(app_client):
    client, _ = app_client
    for origin in ("http://evil.example", "null", BASE):
        assert client.get("/v1/health", headers={"Origin": origin}).status_code == 403


def test_fetch_metadata_is_checked_before_the_token(tmp_path):
    app = create_app(DaemonConfig(data_dir=tmp_path, resolved_device="cpu", token=TOKEN), runner=_runner)
    with TestClient(app, base_url=BASE) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/styles", headers=auth).status_code == 200
        assert client.get("/v1/styles", headers={**auth, "Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert client.get("/v1/styles", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403


# ------------------------------------------------------------------------------------------------
# item 7d: the token travels in an HTTP header
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["café", "tök€n", "with space", "tab\there", "nul\x00", "\u2603"])
def test_a_token_a_header_cannot_carry_is_refused(token):
    with pytest.raises(StartupError) as err:
        check_token(token)
    assert "printable ASCII" in str(err.value)


def test_ascii_tokens_are_fine():
    for token in (None, "abc", "A-z_0.9~+/=", "!#$%&'()*,:;<>?@[]^`{|}\\\""):
        check_token(token)


def test_create_app_refuses_a_non_ascii_token(tmp_path):
    with pytest.raises(StartupError):
        create_app(DaemonConfig(data_dir=tmp_path, resolved_device="cpu", token="café"), runner=_runner)


def test_serve_and_status_refuse_a_non_ascii_token_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STYLEBRIDGE_TOKEN", raising=False)
    code = cli_main(["serve", "--token", "café", "--port", "0", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "'é'" in err and "printable ASCII" in err and "Traceback" not in err
    monkeypatch.setenv("STYLEBRIDGE_TOKEN", "naïve")
    code = cli_main(["status", "--url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "'ï'" in err and "printable ASCII" in err
