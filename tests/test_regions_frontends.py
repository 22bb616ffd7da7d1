"""Issue #22, the front ends: one vocabulary for regions (where each style is painted) through the job spec.

The CLI's ``--region STYLE=MASK``, the daemon's ``region_files`` with ``"regions"`` in the job JSON (kept across a
restart), the hot folder's PSD alpha channels named after styles and ``"regions"`` in preset.json all become
``LoadedJob.regions`` (float32 0..1 at the photo's size), which reach the engine on the StyleInputs; the result
``fused`` is ``PHOTO_fused.png`` or the layer "Fused" at the top of the Styles group. Fast, in-process, through
the seams: a stub engine (``bridge.engine.stylize`` monkeypatched) that records the regions it was handed and
paints each region with its own colour, ``create_app(runner=...)`` and the hot folder's ``load_inputs``.
"""

from __future__ import annotations

import io
import json
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bridge.cli import main
from bridge.engine.types import StyledImage, StylizeResult
from bridge.imaging import ImageError, Picture, load_image
from bridge.job import JobSpec, Source, check, load_region
from bridge.settings import SettingsError

W, H = 40, 24
BASE = "http://127.0.0.1:8765"
COLOURS = {"A": (230, 40, 20), "B": (20, 60, 230)}


# ------------------------------------------------------------------------------------------ inputs

def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def photo_array() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return np.dstack([x * 6, y * 10, (x + y) * 3]).astype(np.uint8)


def halves(width: int = W, height: int = H) -> tuple[np.ndarray, np.ndarray]:
    """Left half white for A, right half for B, with a soft seam (grey values must survive every front end)."""
    x = np.arange(width, dtype=np.float64)
    left = np.clip((width / 2 + 2 - x) / 4.0, 0.0, 1.0)
    a = np.repeat((left * 255).round().astype(np.uint8)[None, :], height, axis=0)
    return a, (255 - a).astype(np.uint8)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    d.mkdir()
    a, b = halves()
    out = {"photo": d / "photo.png", "A": d / "A.png", "B": d / "B.png", "left": d / "left.png",
           "right": d / "right.png"}
    out["photo"].write_bytes(png(photo_array()))
    out["A"].write_bytes(png(np.full((16, 16, 3), COLOURS["A"], np.uint8)))
    out["B"].write_bytes(png(np.full((16, 16, 3), COLOURS["B"], np.uint8)))
    out["left"].write_bytes(png(a))
    out["right"].write_bytes(png(b))
    return out


# ------------------------------------------------------------------------------------------ the stub engine

class StubEngine:
    """``bridge.engine.stylize`` as the contract says (contracts.md): with regions one result ``fused`` (after each
    style's own with ``region_style_layers``), painted here as each region's colour mixed over the photo."""

    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray | None]] = []

    def __call__(self, content: Picture, styles: list, settings: Any, progress: Any = None, cancel: Any = None,
                 **_: Any) -> StylizeResult:
        regions = {s.name: getattr(s, "region", None) for s in styles}
        self.calls.append(regions)
        photo = content.rgb.astype(np.float32)
        images = []
        if not any(r is not None for r in regions.values()) or settings.region_style_layers:
            for s in styles:
                colour = np.float32(s.picture.rgb.reshape(-1, 3).mean(axis=0))
                images.append(StyledImage(s.name, Picture(rgb=np.broadcast_to(colour, photo.shape).astype(np.uint8),
                                                          name=s.name)))
        if any(r is not None for r in regions.values()):
            out = photo.copy()
            for s in styles:
                r = regions[s.name]
                if r is not None:
                    colour = s.picture.rgb.reshape(-1, 3).mean(axis=0).astype(np.float32)
                    out = out * (1 - r[..., None]) + colour * r[..., None]
            images.append(StyledImage("fused", Picture(rgb=np.clip(out + 0.5, 0, 255).astype(np.uint8), name="fused")))
        return StylizeResult(content=content, images=images, settings=settings, working_size=(W, H))


@pytest.fixture
def engine(monkeypatch) -> StubEngine:
    stub = StubEngine()
    monkeypatch.setattr("bridge.engine.stylize", stub)
    return stub


def cli(args: list[Any], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


FAST = ["--size", "32", "--iterations", "2", "--no-coarse-to-fine", "--seed", "3", "--quiet"]


# ------------------------------------------------------------------------------------------ the job spec

def test_regions_travel_in_the_job_json_and_back() -> None:
    spec = JobSpec.build({}, [Source(upload=0, name="A"), Source(upload=1, name="B")],
                         regions=(("A", Source(upload=0)), ("B", Source(upload=1))))
    data = spec.to_json()
    assert data["regions"] == {"A": {"upload": 0}, "B": {"upload": 1}}
    back = JobSpec.from_json(json.loads(json.dumps(data)))
    assert back.regions == spec.regions
    check(back, over_http=True)


@pytest.mark.parametrize("job, words", [
    ({"styles": [{"upload": 0, "name": "A"}], "regions": {"C": {"upload": 0}}}, "'C': no such style (styles: A)"),
    ({"styles": [{"upload": 0, "name": "A"}], "regions": [{"upload": 0}]}, "regions: must be an object"),
    ({"styles": [{"upload": 0, "name": "A"}], "regions": {"A": 3}}, "regions: 3 is not a style"),
    ({"styles": [{"upload": 0, "name": "A"}], "regions": {"A": {"file": "/etc/passwd"}}}, "file path is not accepted"),
    ({"styles": [{"upload": 0, "name": "A"}, {"upload": 1, "name": "B"}], "regions": {"A": {"upload": 0}},
      "settings": {"style_blend_weights": [1, 1]}}, "cannot be combined"),
])
def test_bad_regions_are_one_clear_settings_error(job: dict, words: str) -> None:
    with pytest.raises(SettingsError) as info:
        check(JobSpec.from_json(job), over_http=True)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_region_given_twice_is_refused() -> None:
    spec = JobSpec.build({}, [Source(path="a.png", name="A")], regions=(("A", Source(path="x.png")),
                                                                       ("A", Source(path="y.png"))))
    with pytest.raises(SettingsError, match="'A': given twice"):
        check(spec)


def test_load_region_size_shape_grey_alpha_and_empty() -> None:
    a, _ = halves()
    exact = load_region(png(a), (W, H), style="A")
    assert exact.dtype == np.float32 and exact.shape == (H, W)
    assert np.array_equal(exact, a.astype(np.float32) / 255)            # grey values kept exactly
    half = load_region(png(a[::2, ::2]), (W, H), style="A")             # a smaller copy of the photo's shape
    assert half.shape == (H, W) and 0.0 <= half.min() and half.max() <= 1.0
    assert half[:, :10].min() > 0.9 and half[:, -10:].max() < 0.1
    alpha_only = np.zeros((H, W, 4), np.uint8)
    alpha_only[..., 3] = a                                              # a painted selection on a transparent layer
    assert np.array_equal(load_region(png(alpha_only), (W, H), style="A"), exact)
    with pytest.raises(ImageError, match=r"region of style 'A': is 24x24, not the shape of the photo \(40x24\)"):
        load_region(png(np.full((24, 24), 255, np.uint8)), (W, H), style="A")
    with pytest.raises(ImageError, match="region of style 'B': the mask is black everywhere"):
        load_region(png(np.zeros((H, W), np.uint8)), (W, H), style="B")
    with pytest.raises(ImageError, match="region of style 'A'"):
        load_region(b"not an image at all", (W, H), style="A")


# ------------------------------------------------------------------------------------------ the CLI

def test_cli_regions_write_photo_fused_png_never_overwriting(tmp_path, files, engine, capsys) -> None:
    out = tmp_path / "out"
    args = ["stylize", files["photo"], "-s", files["A"], "-s", files["B"], "--region", f"A={files['left']}",
            "--region", f"B={files['right']}", "-o", f"{out}/", *FAST]
    code, _, err = cli(args, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["photo_fused.png"]
    [call] = engine.calls
    assert np.array_equal(call["A"], load_region(files["left"], (W, H), style="A"))
    assert np.array_equal(call["B"], load_region(files["right"], (W, H), style="B"))
    code, _, err = cli(args, capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["photo_fused-2.png", "photo_fused.png"]
    pic = load_image(out / "photo_fused.png")
    assert tuple(pic.rgb[H // 2, 1]) == COLOURS["A"] and tuple(pic.rgb[H // 2, W - 2]) == COLOURS["B"]


def test_cli_region_style_layers_also_writes_each_style(tmp_path, files, engine, capsys) -> None:
    out = tmp_path / "out"
    code, _, err = cli(["stylize", files["photo"], "-s", files["A"], "-s", files["B"], "--region",
                        f"A={files['left']}", "--region-style-layers", "-o", f"{out}/", *FAST], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["photo_A.png", "photo_B.png", "photo_fused.png"]
    assert engine.calls[0]["B"] is None                # a style without a region takes part in no region


@pytest.mark.parametrize("region, words", [
    ("C={left}", "--region 'C': no such style (styles: A, B)"),
    ("A", "--region 'A': expected STYLE=MASK"),
    ("A={square}", "region of style 'A'"),
    ("A={black}", "black everywhere"),
    ("A={missing}", "no such file"),
])
def test_cli_bad_regions_exit_2_before_any_work(tmp_path, files, engine, capsys, region, words) -> None:
    (tmp_path / "square.png").write_bytes(png(np.full((30, 30), 255, np.uint8)))
    (tmp_path / "black.png").write_bytes(png(np.zeros((H, W), np.uint8)))
    region = region.format(left=files["left"], square=tmp_path / "square.png", black=tmp_path / "black.png",
                           missing=tmp_path / "missing.png")
    code, _, err = cli(["stylize", files["photo"], "-s", files["A"], "-s", files["B"], "--region", region,
                          "-o", f"{tmp_path / 'out'}/", *FAST], capsys)
    assert code == 2 and words in err and "Traceback" not in err, err
    assert err.count("\n") == 1 and engine.calls == [] and not (tmp_path / "out").exists()


def test_cli_help_explains_regions(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["stylize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--region STYLE=MASK" in text and "--region-style-layers" in text
    assert "CONTENT_fused.png" in text and '"Fused"' in text


def psd_group(path: Path):
    """The written PSD read by psd-tools (an independent reader): the Styles group's layers, bottom to top."""
    from psd_tools import PSDImage
    doc = PSDImage.open(path)
    [group] = [layer for layer in doc if layer.is_group()]
    return doc, list(group)


def test_cli_psd_has_fused_on_top_of_the_styles_group_masked_by_the_union(tmp_path, files, engine, capsys) -> None:
    out = tmp_path / "r.psd"
    code, _, err = cli(["stylize", files["photo"], "-s", files["A"], "-s", files["B"], "--region",
                        f"A={files['left']}", "-o", out, *FAST], capsys)
    assert code == 0, err
    _, layers = psd_group(out)
    assert [layer.name for layer in layers] == ["Fused"]          # per-style layers only when asked
    fused = layers[0]
    mask = fused.numpy("mask", real_mask=False)
    assert mask is not None
    full = np.zeros((H, W), np.float32)
    m = fused.mask
    full[m.top:m.bottom, m.left:m.right] = mask.reshape(m.height, m.width)
    if (m.top, m.left, m.bottom, m.right) != (0, 0, H, W):
        outside = np.ones((H, W), bool)
        outside[m.top:m.bottom, m.left:m.right] = False
        full[outside] = m.background_color / 255.0
    a, _ = halves()
    assert np.abs(full - a / 255.0).max() <= 1 / 255 + 1e-6     # only A has a region: the union is A's

    both = tmp_path / "both.psd"
    code, _, err = cli(["stylize", files["photo"], "-s", files["A"], "-s", files["B"], "--region",
                        f"A={files['left']}", "--region", f"B={files['right']}", "--region-style-layers",
                        "-o", both, *FAST], capsys)
    assert code == 0, err
    _, layers = psd_group(both)
    assert [layer.name for layer in layers] == ["A", "B", "Fused"]  # "Fused" at the top of the group


def test_cli_style_mask_of_a_style_without_a_layer_does_not_lose_the_run(tmp_path, files, engine, capsys) -> None:
    """With regions a style has no layer of its own (unless asked): its --style-mask is unused, not an error
    found after the run (which lost the result)."""
    out = tmp_path / "r.psd"
    code, _, err = cli(["stylize", files["photo"], "-s", files["A"], "-s", files["B"], "--region",
                        f"A={files['left']}", "--style-mask", f"B={files['right']}", "-o", out, *FAST], capsys)
    assert code == 0, err
    assert [layer.name for layer in psd_group(out)[1]] == ["Fused"]


# ------------------------------------------------------------------------------------------ the daemon

def _daemon_app(tmp_path: Path, seen: list):
    from bridge.daemon.app import create_app
    from bridge.daemon.context import DaemonConfig
    from bridge.daemon.runner import run_engine

    def runner(request, ctx):
        seen.append(request)
        return run_engine(request, ctx)
    return create_app(DaemonConfig(data_dir=tmp_path / "data", resolved_device="cpu"), runner=runner)


def _submit(client, files: dict[str, Path], job: dict, regions: list[bytes]):
    upload = [("content", ("photo.png", files["photo"].read_bytes(), "image/png")),
              ("style_files", ("A.png", files["A"].read_bytes(), "image/png")),
              ("style_files", ("B.png", files["B"].read_bytes(), "image/png"))]
    upload += [("region_files", (f"r{i}.png", data, "image/png")) for i, data in enumerate(regions)]
    return client.post("/v1/jobs", data={"job": json.dumps({"protocol": 2, **job})}, files=upload)


def _wait(client, job_id: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["status"] in ("done", "failed", "cancelled") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


STYLES = [{"upload": 0, "name": "A"}, {"upload": 1, "name": "B"}]


def test_daemon_region_files_reach_the_engine_and_the_results_list_fused(tmp_path, files, engine) -> None:
    seen: list = []
    with TestClient(_daemon_app(tmp_path, seen), base_url=BASE) as client:
        r = _submit(client, files, {"styles": STYLES, "regions": {"B": {"upload": 0}, "A": {"upload": 1}},
                                    "settings": {"size": 32}},
                    [files["right"].read_bytes(), files["left"].read_bytes()])
        assert r.status_code == 202, r.text
        status = _wait(client, r.json()["id"])
        assert status["status"] == "done", status
        result = client.get(f"/v1/jobs/{status['id']}/result").json()
        group = [layer for layer in result["layers"] if layer["kind"] == "group"][0]
        children = [layer for layer in result["layers"] if layer["parent"] == group["index"]]
        assert [c["name"] for c in children] == ["Fused"]
        assert children[0]["meta"]["role"] == "fused" and children[0]["mask_url"]
    [job] = seen
    assert np.array_equal(job.regions["A"], load_region(files["left"], (W, H), style="A"))
    assert np.array_equal(job.regions["B"], load_region(files["right"], (W, H), style="B"))
    assert set(engine.calls[0]) == {"A", "B"}


BAD_HTTP = [
    ({"regions": {"A": {"upload": 0}}}, [], "but 0 region_files were sent"),
    ({"regions": {"A": {"upload": 0}}}, ["left", "right"], "region_files upload 1 is named by no style"),
    ({"regions": {"C": {"upload": 0}}}, ["left"], "'C': no such style"),
    ({"regions": {"A": {"upload": 0}}}, ["square"], "not the shape of the image"),
    ({"regions": {"A": {"library": "x"}}}, ["left"], "must be an upload"),
    ({"regions": {"A": {"file": "/etc/hostname"}}}, ["left"], "a file path is not accepted"),
]


def test_daemon_refuses_bad_regions_with_422(tmp_path, files, engine) -> None:
    data = {"left": files["left"].read_bytes(), "right": files["right"].read_bytes(),
            "square": png(np.full((30, 30), 255, np.uint8))}
    with TestClient(_daemon_app(tmp_path, []), base_url=BASE) as client:
        for job, regions, words in BAD_HTTP:
            r = _submit(client, files, {"styles": STYLES, **job}, [data[k] for k in regions])
            assert r.status_code == 422 and words in r.text, (job, r.text)
        assert client.get("/v1/jobs").json()["jobs"] == [] and engine.calls == []


def test_daemon_black_region_fails_the_job_with_one_line(tmp_path, files, engine) -> None:
    with TestClient(_daemon_app(tmp_path, []), base_url=BASE) as client:
        r = _submit(client, files, {"styles": STYLES, "regions": {"A": {"upload": 0}}},
                    [png(np.zeros((H, W), np.uint8))])
        assert r.status_code == 202, r.text
        status = _wait(client, r.json()["id"])
    assert status["status"] == "failed" and "black everywhere" in status["error"] and engine.calls == []


def test_regions_are_persisted_and_resumed_by_a_new_daemon(tmp_path, files) -> None:
    from test_daemon_persist import dead_daemon, stored_job

    from bridge.daemon import persist

    jobs = tmp_path / "jobs"
    dead = dead_daemon(jobs)

    def with_region(record: dict) -> None:
        record["regions"] = [["starry", "region0.png"]]
        record["job"]["regions"] = {"starry": {"upload": 0}}

    job_id, folder = stored_job(dead, with_region)
    (folder / "region0.png").write_bytes(png(np.full((32, 48), 200, np.uint8)))      # the sample photo's size
    stored = persist.load(folder)
    assert [(n, p.name) for n, p in stored.files.regions] == [("starry", "region0.png")]
    assert persist.checkpoint_bound(stored.files).images == 2            # the style and "fused"
    persist.save(folder, job_id, stored.created, stored.files)           # written back as it was read
    assert json.loads((folder / persist.JOB_FILE).read_text())["regions"] == [["starry", "region0.png"]]
    from bridge.daemon.jobqueue import JobManager
    seen: list = []
    manager = JobManager(lambda request, ctx: seen.append(request), jobs, fixed={"device": "cpu"})
    try:
        [job] = manager.jobs()
        assert job.id == job_id and job.resumed
        manager.start()
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        manager.stop()
    [request] = seen                                   # the resumed job hands the engine its region
    assert np.array_equal(request.regions["starry"], np.full((32, 48), 200 / 255, np.float32))


@pytest.mark.parametrize("regions, words", [
    ([["starry", "../../../etc/passwd"]], "not a file of the job's folder"),
    ([["starry", "missing.png"]], "missing"),
    ([["nobody", "content.png"]], "not one of the job's styles"),
    ("region0.png", "regions"),
])
def test_a_hostile_stored_region_is_quarantined(tmp_path, regions, words, caplog) -> None:
    import logging

    from test_daemon_persist import dead_daemon, start, stored_job, warnings_of

    from bridge.daemon import persist

    jobs = tmp_path / "jobs"
    _, folder = stored_job(dead_daemon(jobs), lambda record: record.update(regions=regions))
    with caplog.at_level(logging.WARNING, logger="stylebridge"):
        manager = start(jobs)
    try:
        assert manager.jobs() == []
        [line] = warnings_of(caplog)
        assert words in line and (jobs / persist.QUARANTINE / folder.name / "content.png").is_file()
    finally:
        manager.stop()


# ------------------------------------------------------------------------------------------ the hot folder

def psd_with_channels(photo: np.ndarray, channels: dict[str, np.ndarray], layers: list = ()) -> bytes:
    """An RGB PSD (tests/psd_build.py, written from the spec) whose merged image carries named alpha channels
    (resource 1045, Unicode names, as Photoshop writes them)."""
    from psd_build import _resource, psd
    merged = np.concatenate([photo.transpose(2, 0, 1), np.stack(list(channels.values()))])
    data = psd("RGB", photo.shape[1], photo.shape[0], merged, layers=list(layers))
    names = b"".join(struct.pack(">I", len(n) + 1) + (n + "\0").encode("utf-16-be") for n in channels)
    extra = _resource(1045, names)
    # splice the resource into the image resources section (after the header and empty colour mode data)
    at = 26 + 4
    length, = struct.unpack(">I", data[at:at + 4])
    return data[:at] + struct.pack(">I", length + len(extra)) + data[at + 4:at + 4 + length] + extra + \
        data[at + 4 + length:]


@pytest.fixture
def hot(tmp_path: Path, files) -> Path:
    root = tmp_path / "hot"
    (root / "in").mkdir(parents=True)
    (root / "styles").mkdir()
    (root / "regions").mkdir()
    for key in ("A", "B"):
        (root / "styles" / f"{key}.png").write_bytes(files[key].read_bytes())
    (root / "regions" / "left.png").write_bytes(files["left"].read_bytes())
    (root / "regions" / "right.png").write_bytes(files["right"].read_bytes())
    return root


def _hot_inputs(root: Path, name: str, data: bytes):
    from bridge.hotfolder.inputs import load_inputs
    from bridge.hotfolder.presets import resolve
    path = root / "in" / name
    path.write_bytes(data)
    return load_inputs(path, resolve(root, name), allow_library=False)


def test_hot_folder_psd_channels_named_after_styles_become_regions(hot, files) -> None:
    a, b = halves()
    (hot / "preset.json").write_text(json.dumps({"styles": ["styles/A.png", "styles/B.png"]}))
    data = psd_with_channels(photo_array(), {"a": a, "Alpha 1": np.full((H, W), 255, np.uint8), "B": b})
    inputs = _hot_inputs(hot, "photo.psd", data)
    assert sorted(inputs.regions) == ["A", "B"]             # "a" is A's (case aside); "Alpha 1" names no style
    assert np.array_equal(inputs.regions["A"], load_region(files["left"], (W, H), style="A"))
    assert np.array_equal(inputs.regions["B"], load_region(files["right"], (W, H), style="B"))
    assert np.array_equal(inputs.content.rgb, photo_array())   # the channels are not the photo's alpha


def test_hot_folder_psd_region_layers_become_regions_and_stay_out_of_the_content(hot, files) -> None:
    """A layer named "region: NAME" (white painted on a transparent layer) is NAME's region, and, visible or
    not, is no part of the photo; an alpha channel of the same name wins over it."""
    from psd_build import Layer
    a, b = halves()
    photo = photo_array()
    opaque = np.dstack([photo, np.full((H, W), 255, np.uint8)])
    white_b = np.dstack([np.full((H, W, 3), 255, np.uint8), b])
    black_a = np.dstack([np.full((H, W, 3), 255, np.uint8), np.zeros((H, W), np.uint8)])
    # "A" is also a channel: it wins over the layer "Region: A", whose alpha is empty
    data = psd_with_channels(photo, {"A": a}, [Layer("Background", opaque), Layer("region: b", white_b),
                                               Layer("Region: A", black_a)])
    (hot / "preset.json").write_text(json.dumps({"styles": ["styles/A.png", "styles/B.png"]}))
    inputs = _hot_inputs(hot, "layers.psd", data)
    assert sorted(inputs.regions) == ["A", "B"]
    assert np.array_equal(inputs.regions["A"], load_region(files["left"], (W, H), style="A"))
    assert np.array_equal(inputs.regions["B"], load_region(files["right"], (W, H), style="B"))
    assert np.abs(inputs.content.rgb.astype(int) - photo).max() <= 1     # the white region layer is left out


def test_hot_folder_preset_regions_relative_to_the_preset(hot, files) -> None:
    (hot / "preset.json").write_text(json.dumps({"styles": ["styles/A.png", "styles/B.png"],
                                                 "regions": {"A": "regions/left.png", "B": "regions/right.png"}}))
    inputs = _hot_inputs(hot, "photo.png", files["photo"].read_bytes())
    assert np.array_equal(inputs.regions["A"], load_region(files["left"], (W, H), style="A"))
    assert np.array_equal(inputs.regions["B"], load_region(files["right"], (W, H), style="B"))


@pytest.mark.parametrize("regions, words", [
    ({"A": "regions/nope.png"}, "not found"),
    ({"C": "regions/left.png"}, "'C': no such style"),
    (["regions/left.png"], "must be an object"),
    ({"A": "in/left.png"}, "hot folder's own in/ folder"),
])
def test_hot_folder_bad_preset_regions_are_clear(hot, files, regions, words) -> None:
    from bridge.hotfolder.errors import JobError
    (hot / "preset.json").write_text(json.dumps({"styles": ["styles/A.png", "styles/B.png"], "regions": regions}))
    with pytest.raises((SettingsError, JobError)) as info:
        _hot_inputs(hot, "photo.png", files["photo"].read_bytes())
    assert words in str(info.value) and "\n" not in str(info.value)


def test_hot_folder_daemon_mode_uploads_the_same_region_bytes(hot, files) -> None:
    from bridge.hotfolder.inputs import wire_regions
    from bridge.hotfolder.process import wire_job
    (hot / "preset.json").write_text(json.dumps({"styles": ["styles/A.png", "styles/B.png"],
                                                 "regions": {"A": "regions/left.png", "B": "regions/right.png"}}))
    inputs = _hot_inputs(hot, "photo.png", files["photo"].read_bytes())
    job, _ = wire_job(inputs)
    assert job["regions"] == {"A": {"upload": 0}, "B": {"upload": 1}}
    assert [s for s, _ in wire_regions(inputs)] == ["A", "B"]
    assert list(inputs.region_files.values()) == [files["left"].read_bytes(), files["right"].read_bytes()]


class InProcessClient:
    """bridge.protocol.Client whose HTTP exchanges go to a TestClient (the daemon in this process)."""

    def __new__(cls, test_client):
        from bridge.protocol import Client

        class Routed(Client):
            def request(self, method, path, *, body=None, content_type=None, query=None, timeout=None):
                headers = {"content-type": content_type} if content_type else {}
                r = test_client.request(method, path, content=body, headers=headers, params=query)
                if r.status_code >= 400:
                    raise AssertionError(r.text)
                return r.status_code, dict(r.headers), r.content
        return Routed(BASE)


def test_hot_folder_daemon_mode_through_the_protocol_client(hot, files, engine, tmp_path) -> None:
    """What DaemonEngine.render sends (wire_job + Client.submit_job(region_files=...)) reaches the daemon's engine
    as the regions the hot folder decoded in-process."""
    from bridge.hotfolder.process import wire_job
    a, b = halves()
    (hot / "preset.json").write_text(json.dumps({"styles": ["styles/A.png", "styles/B.png"], "size": 32}))
    inputs = _hot_inputs(hot, "photo.psd", psd_with_channels(photo_array(), {"A": a, "B": b}))
    job, style_files = wire_job(inputs)
    seen: list = []
    with TestClient(_daemon_app(tmp_path, seen), base_url=BASE) as test_client:
        client = InProcessClient(test_client)
        queued = client.submit_job(files["photo"].read_bytes(), job, style_files=style_files,
                                   region_files=list(inputs.region_files.values()))
        assert _wait(test_client, queued["id"])["status"] == "done"
    for style in ("A", "B"):
        assert np.array_equal(seen[0].regions[style], inputs.regions[style])
        assert np.array_equal(engine.calls[-1][style], inputs.regions[style])


# ------------------------------------------------------------------------------------------ one vocabulary

def test_same_regions_from_cli_hot_folder_and_daemon_give_the_same_arrays_and_pixels(tmp_path, files, hot, engine,
                                                                                     capsys) -> None:
    """The regions handed to the engine are the same arrays whichever front end read them, so the engine (same
    seed) paints the same pixels: the CLI's PNG, the hot folder's in-process run and the daemon's."""
    from bridge.hotfolder.inputs import load_inputs  # noqa: F401 (the hot folder's reader, through _hot_inputs)
    from bridge.pipeline import LoadedJob, render

    out = tmp_path / "out"
    code, _, err = cli(["stylize", files["photo"], "-s", files["A"], "-s", files["B"], "--region",
                        f"A={files['left']}", "--region", f"B={files['right']}", "-o", f"{out}/", *FAST], capsys)
    assert code == 0, err
    cli_regions = engine.calls[-1]
    cli_pixels = load_image(out / "photo_fused.png").rgb

    a, b = halves()
    (hot / "preset.json").write_text(json.dumps({"styles": ["styles/A.png", "styles/B.png"], "size": 32}))
    inputs = _hot_inputs(hot, "photo.psd", psd_with_channels(photo_array(), {"A": a, "B": b}))
    spec = inputs.spec
    rendered = render(LoadedJob(inputs.content, inputs.styles, spec.settings, spec.document, regions=inputs.regions))
    hot_regions = engine.calls[-1]
    [hot_fused] = [layer for layer in rendered.stack.items[1].children if layer.name == "Fused"]

    seen: list = []
    with TestClient(_daemon_app(tmp_path, seen), base_url=BASE) as client:
        r = _submit(client, files, {"styles": STYLES, "regions": {"A": {"upload": 0}, "B": {"upload": 1}},
                                    "settings": {"size": 32}}, list(inputs.region_files.values()))
        assert r.status_code == 202, r.text
        assert _wait(client, r.json()["id"])["status"] == "done"
    daemon_regions = engine.calls[-1]

    for style in ("A", "B"):
        assert np.array_equal(cli_regions[style], hot_regions[style])
        assert np.array_equal(cli_regions[style], daemon_regions[style])
        assert np.array_equal(seen[0].regions[style], cli_regions[style])
    assert np.array_equal(hot_fused.pixels[..., :3], cli_pixels)


# ------------------------------------------------------------------------------------------ the real engine

def test_real_engine_cli_and_hot_folder_paint_the_same_fused_pixels(tmp_path, files, hot, capsys) -> None:
    """One tiny real run: the CLI writes PHOTO_fused.png; the hot folder's in-process run of a PSD whose channels
    are the same regions, and the daemon given them as region_files, paint the same pixels for the same seed."""
    from bridge.pipeline import LoadedJob, render

    out = tmp_path / "out"
    code, _, err = cli(["stylize", files["photo"], "-s", files["A"], "-s", files["B"], "--region",
                        f"A={files['left']}", "--region", f"B={files['right']}", "-o", f"{out}/", *FAST,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["photo_fused.png"]
    cli_pixels = load_image(out / "photo_fused.png").rgb

    a, b = halves()
    (hot / "preset.json").write_text(json.dumps({"styles": ["styles/A.png", "styles/B.png"], "size": 32,
                                                 "iterations": 2, "coarse_to_fine": False, "seed": 3,
                                                 "device": "cpu"}))
    inputs = _hot_inputs(hot, "photo.psd", psd_with_channels(photo_array(), {"A": a, "B": b}))
    spec = inputs.spec
    rendered = render(LoadedJob(inputs.content, inputs.styles, spec.settings, spec.document, regions=inputs.regions))
    [fused] = [layer for layer in rendered.stack.items[1].children if layer.name == "Fused"]
    assert np.array_equal(fused.pixels[..., :3], cli_pixels)

    with TestClient(_daemon_app(tmp_path, []), base_url=BASE) as client:      # the daemon, same regions and seed
        r = _submit(client, files, {"styles": STYLES, "regions": {"A": {"upload": 0}, "B": {"upload": 1}},
                                    "settings": {"size": 32, "iterations": 2, "coarse_to_fine": False, "seed": 3}},
                    list(inputs.region_files.values()))
        assert r.status_code == 202, r.text
        status = _wait(client, r.json()["id"])
        assert status["status"] == "done", status
        layers = client.get(f"/v1/jobs/{status['id']}/result").json()["layers"]
        [layer] = [item for item in layers if item["name"] == "Fused"]
        daemon_pixels = load_image(client.get(layer["image_url"]).content).rgb
    assert np.array_equal(daemon_pixels, cli_pixels)
