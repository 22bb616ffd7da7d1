"""``POST /v1/estimate`` over real HTTP (a real ``stylebridge serve`` that measured its speed at start), the
presets in ``GET /v1/health``, the speed meter learning from a finished job, and a tiny "print" (native, tiled)
run whose stage-weighted percent and ETA come from the tiled stages' costs."""

from __future__ import annotations

import httpx
import pytest

from bridge.daemon import speed
from bridge.daemon.client import DaemonClient
from bridge.engine.eta import cost_model
from bridge.engine.plan import TILED_COST, ladder_dims
from bridge.settings import PRESETS
from bridge.settings_parse import settings_from_mapping
from test_daemon_api import png_of
from testdata import SAMPLES

TINY = {"size": 48, "iterations": 3, "coarse_to_fine": False}


@pytest.fixture(scope="module")
def daemon(real_daemon):
    """The session's one real daemon (conftest.py): it measured its speed at start."""
    return real_daemon["url"]


@pytest.fixture(scope="module")
def client(daemon) -> DaemonClient:
    return DaemonClient(daemon, token="", timeout=60)


def test_health_lists_the_presets(client):
    health = client.health()
    assert health["presets"] == list(PRESETS) and "print" in health["presets"]
    assert health["preset"] is None                      # started without --preset: the settings' defaults


@pytest.mark.parametrize("preset", list(PRESETS))
def test_estimate_follows_the_one_schedule(client, preset):
    one = client.estimate(1024, 683, 1, {"preset": preset})
    two = client.estimate(1024, 683, 2, {"preset": preset})
    settings, _, _ = settings_from_mapping({"preset": preset})
    ladder, dims, iters = ladder_dims(settings, 1024, 683)
    assert one["stages"] == [list(s) for s in zip(ladder, iters)]
    assert one["working_size"] == [dims[-1][1], dims[-1][0]]
    assert one["measured"] is True and one["device"] == client.health()["device"]
    assert one["seconds"] > 0 and two["seconds"] == pytest.approx(2 * one["seconds"], rel=0.01)
    assert two["runs"] == 2
    if preset == "print":
        assert one["working_size"] == [1024, 683]         # the photo's own size


def test_estimates_rank_and_defaults_apply(client):
    seconds = {p: client.estimate(800, 600, 1, {"preset": p})["seconds"] for p in PRESETS}
    assert seconds["draft"] < seconds["normal"] < seconds["best"]
    assert seconds["normal"] < seconds["print"]
    assert client.estimate(800, 600, 1)["stages"] == client.estimate(800, 600, 1, {"preset": "normal"})["stages"]
    # a job's options override the preset, as in a job; a blend adds one optimisation
    own = client.estimate(800, 600, 2, {"preset": "draft", "iterations": 7, "style_blend_weights": [1, 1]})
    assert own["stages"][-1][1] == 7 and own["runs"] == 3


@pytest.mark.parametrize("body, words", [
    ({"width": 0, "height": 10}, "width"),
    ({"width": 10}, "height"),
    ({"width": 10, "height": 10, "styles": 0}, "styles"),
    ({"width": 10, "height": 10, "styles": 99}, "max_styles"),
    ({"width": 10, "height": 10, "settings": {"presett": "draft"}}, "preset"),
    ({"width": 10, "height": 10, "settings": {"preset": "poster"}}, "print"),
    ({"width": 10, "height": 10, "settings": {"iterations": 10 ** 6}}, "max_iterations"),
    ({"width": 10, "height": 10, "colour": 1}, "colour"),
])
def test_bad_input_is_422_saying_what(daemon, body, words):
    r = httpx.post(daemon + "/v1/estimate", json=body, timeout=30)
    assert r.status_code == 422, r.text
    assert words in r.text


def test_hostile_json_is_422_naming_the_cap(daemon):
    for body, limit in (('{"width": 9, "height": 9, "settings": ' + "[" * 500 + "]" * 500 + "}", "max_json_depth"),
                        ('{"width": 9, "height": 9, "settings": {"iterations": ' + "9" * 5000 + "}}", "max_json_digits")):
        r = httpx.post(daemon + "/v1/estimate", content=body, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 422 and r.json()["limit"] == limit, r.text
    r = httpx.post(daemon + "/v1/estimate", content="nope", headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]


def test_estimate_is_in_the_openapi_schema(daemon):
    schema = httpx.get(daemon + "/openapi.json", timeout=30).json()
    assert "post" in schema["paths"]["/v1/estimate"]
    assert "seconds" in schema["components"]["schemas"]["EstimateAnswer"]["properties"]
    asked = schema["paths"]["/v1/estimate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"width", "height", "styles", "settings"} <= set(asked["properties"])


def test_a_finished_job_corrects_the_speed(tmp_path):
    """A daemon of its own: the session's shared one has learnt from other tests' jobs already, so its estimate
    may be as close to the truth before this job as after it."""
    from test_daemon_api import start_daemon, stop_daemon
    proc, url = start_daemon(tmp_path)
    try:
        client = DaemonClient(url, token="", timeout=60)
        content, style = png_of(SAMPLES["coffee"], 64), png_of(SAMPLES["starry_night"], 64)
        before = client.estimate(64, 43, 1, TINY)["seconds"]
        job = client.submit_job(content, {"styles": [{"upload": 0, "name": "s"}], "settings": TINY,
                                          "name": "speed"}, style_files=[("s.png", style)])
        client.wait(job["id"], poll=0.2)
        engine_s = client.result(job["id"])["timings"]["engine_s"]
        after = client.estimate(64, 43, 1, TINY)["seconds"]
    finally:
        stop_daemon(proc)
    # one job taught the speed: the same job is now estimated at what it took (the answer is in 0.1 s steps)
    assert abs(after - engine_s) <= 0.06, (before, after, engine_s)
    assert abs(after - engine_s) <= abs(before - engine_s)


def test_print_run_percent_and_eta_weight_the_tiled_stages(monkeypatch):
    """A tiny "print" run (the photo's own size) with a memory budget that makes its larger stages tiled:
    percent never goes back, every event has an ETA, and the percent at the end of the first (whole) stage
    is that stage's share of the run with tiled stages costing TILED_COST more per pixel, the same stages
    and weights the daemon's estimate uses. At 64 px a stage fits any budget that holds one block, so the
    whole-image factor is raised (as the switch a large stage makes by itself; plan.WHOLE_FACTOR, read by the
    engine and the estimate alike) to keep the 32 px stage whole and tile the 64 px one."""
    from bridge.engine import StyleInput, plan, stylize
    from bridge.imaging import load_image

    monkeypatch.setattr(plan, "WHOLE_FACTOR", 8.0)
    photo = load_image(png_of(SAMPLES["coffee"], 64))
    style = StyleInput("s", load_image(png_of(SAMPLES["starry_night"], 80)))
    settings, _, _ = settings_from_mapping({"preset": "print", "iterations": 3, "min_size": 32, "base_size": 32,
                                            "large_iterations": [2], "block_memory": 200, "seed": 1,
                                            "preview_every": 0})
    est = speed.estimate(settings, photo.width, photo.height, 1, speed.SpeedMeter("cpu"))
    assert est.working_size == (photo.width, photo.height) and est.stages == [(32, 3), (64, 2)]
    assert est.tiled == [False, True]       # 32 px whole, the photo's own 64 px in blocks
    events = []
    stylize(photo, [style], settings, progress=events.append)
    percents = [e.percent for e in events]
    assert all(b >= a for a, b in zip(percents, percents[1:])) and percents[-1] == pytest.approx(100.0)
    assert all(e.eta_seconds is not None and e.eta_seconds >= 0 for e in events)
    model = cost_model("cpu")
    _, dims, iters = ladder_dims(settings, photo.width, photo.height)
    units = [n * model.units(int(h * w * (TILED_COST if t else 1.0))) for (h, w), n, t in zip(dims, iters, est.tiled)]
    first_done = next(e for e in events if e.stage == 1 and e.iteration == iters[0])
    assert first_done.percent == pytest.approx(100.0 * units[0] / sum(units), rel=1e-3)
