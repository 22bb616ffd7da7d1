"""preset.json, sub-folder presets and sidecars: merging, style paths, errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.hotfolder.presets import resolve
from bridge.settings import DEFAULTS, PRESETS, SettingsError
from testdata import SAMPLES


def _write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "hot"
    (root / "in").mkdir(parents=True)
    (root / "styles").mkdir()
    (root / "styles" / "starry.jpg").write_bytes(SAMPLES["starry_night"].read_bytes())
    (root / "styles" / "scream.jpg").write_bytes(SAMPLES["the_scream"].read_bytes())
    return root


def test_no_preset_gives_defaults_and_no_styles(root: Path) -> None:
    r = resolve(root, "a.jpg")
    assert r.settings == DEFAULTS and r.styles == () and r.options == {} and r.name == "a"


def test_root_preset_relative_styles_and_hyphen_keys(root: Path) -> None:
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"], "content-weight": 7, "size": 64,
                                  "reveal": "all", "comment": "for the shop"})
    r = resolve(root, "a.jpg")
    assert r.style_names == ["starry"]
    assert r.styles[0].path == str((root / "styles" / "starry.jpg").resolve())
    assert r.settings.content_weight == 7.0 and r.settings.size == 64
    assert r.document.reveal == "all"


def test_subfolder_preset_overrides_root_and_inherits(root: Path) -> None:
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"], "size": 64, "iterations": 5})
    _write(root / "in" / "scream" / "preset.json", {"styles": ["../../styles/scream.jpg"], "iterations": 9})
    top = resolve(root, "a.jpg")
    sub = resolve(root, "scream/a.jpg")
    assert top.style_names == ["starry"] and top.settings.iterations == 5
    assert sub.style_names == ["scream"] and sub.settings.iterations == 9
    assert sub.settings.size == 64            # inherited from the root preset
    # A deeper folder without its own preset uses its parent's.
    assert resolve(root, "scream/deeper/a.jpg").style_names == ["scream"]


def test_sidecar_overrides_for_one_file_with_paths_from_its_original_folder(root: Path, tmp_path: Path) -> None:
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"], "size": 64, "preset": "draft"})
    # The sidecar now lies in working/, but it was written next to in/sub/a.jpg.
    side = _write(tmp_path / "elsewhere" / "ID--a.json",
                  {"styles": ["../../styles/scream.jpg", {"library": "monet", "name": "Monet"}],
                   "original_colors": True})
    r = resolve(root, "sub/a.jpg", side, "a.json")
    assert [(s.label, s.library) for s in r.styles] == [("scream", None), ("Monet", "monet")]
    assert r.settings.original_colors and r.settings.size == 64
    assert r.settings.coarse_iterations == PRESETS["draft"]["coarse_iterations"]


def test_bare_name_is_a_library_style(root: Path) -> None:
    _write(root / "preset.json", {"styles": ["monet"]})
    [ref] = resolve(root, "a.jpg").styles
    assert ref.library == "monet" and ref.path is None


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"iterations": -3}', "iterations"),
    ('{"sise": 64}', "sise: unknown option"),
    ('{"styles": ["styles/missing.jpg"]}', "missing.jpg"),
    ('{"styles": [{"file": "nope"}]}', "not found"),
    ('{"styles": 3}', "styles"),
    ('{"optimizer": "sgd"}', "optimizer"),
    ('{"content_layer": 5}', "content-layer"),
    ('{"style": "styles/starry.jpg"}', "did you mean 'styles'?"),
    ('{"content_layr": "x"}', "did you mean 'content-layer'?"),
    ('{"reveal": "show-some"}', "reveal"),
])
def test_bad_presets_raise_settings_error_naming_the_problem(root: Path, content: str, fragment: str) -> None:
    (root / "preset.json").write_text(content)
    with pytest.raises(SettingsError) as info:
        resolve(root, "a.jpg")
    assert fragment in str(info.value)


def test_sidecar_errors_name_the_file_where_the_user_wrote_it(root: Path, tmp_path: Path) -> None:
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"]})
    side = _write(tmp_path / "working" / "ID--a.json", {"iterations": "lots"})
    with pytest.raises(SettingsError) as info:
        resolve(root, "a.jpg", side, "a.json")
    assert "iterations" in str(info.value) and "in/a.json" in str(info.value)
    side.write_text("{oops")
    with pytest.raises(SettingsError) as info:
        resolve(root, "a.jpg", side, "a.json")
    assert str(root / "in" / "a.json") in str(info.value) and "ID--" not in str(info.value)


def test_the_preset_is_one_job_spec_with_what_the_user_gave(root: Path) -> None:
    """resolve builds the JobSpec every front end builds: options as given (what a daemon receives),
    styles as Sources, the content layer and the file's stem as the job's name."""
    _write(root / "preset.json", {"styles": ["styles/starry.jpg", "monet"], "preset": "draft", "size": 64,
                                  "content_layer": "Photo"})
    spec = resolve(root, "sub/shot.psd")
    assert spec.options == {"preset": "draft", "size": 64}
    assert [s.to_json() for s in spec.styles] == [{"file": str((root / "styles" / "starry.jpg").resolve())},
                                                  {"library": "monet"}]
    assert spec.content_layer == "Photo" and spec.name == "shot" and spec.notes == ()


@pytest.mark.parametrize("given, reveal, note", [
    ({"mask_mode": "all"}, "all", "'mask-mode' is now called 'reveal'"),
    ({"mask-mode": "reveal-all"}, "all", "'reveal-all' is now 'all'"),
    ({"reveal": "hide-all"}, "none", "'hide-all' is now 'none'"),
    ({"reveal": "auto"}, "first", "'auto' is now 'first'"),
    ({"preserve_colors": True}, "first", "'preserve-colors' is now called 'original-colors'"),
])
def test_old_mask_words_and_names_map_with_a_note(root: Path, given: dict, reveal: str, note: str) -> None:
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"], **given})
    spec = resolve(root, "a.jpg")
    assert spec.document.reveal == reveal
    assert any(note in n for n in spec.notes), spec.notes
    assert "mask_mode" not in spec.options and "preserve_colors" not in spec.options


def _inputs(root: Path, rel: str = "a.jpg"):
    """load_inputs on a real photo dropped as in/REL (no engine)."""
    from bridge.hotfolder.inputs import load_inputs
    photo = root / "in" / rel
    photo.parent.mkdir(parents=True, exist_ok=True)
    photo.write_bytes(SAMPLES["coffee"].read_bytes())
    return load_inputs(photo, resolve(root, rel), allow_library=True)


@pytest.mark.parametrize("settings, fragment", [
    ({"size": 5000}, "size: 5000 is over the limit of 4096 px (max_size)"),
    ({"iterations": 6000}, "iterations: 6000 is over the limit of 5000 (max_iterations)"),
    ({"min_size": 4500, "size": 4600}, "over the limit of 4096 px (max_size)"),
])
def test_both_modes_apply_the_limits_every_front_end_applies(root: Path, settings: dict, fragment: str) -> None:
    """The in-process hot folder once applied no size or iteration limit; now bridge.job.check runs for
    every job, before any work (a LimitError is a SettingsError: the watcher's "bad settings", error/)."""
    from bridge.job import LimitError
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"], **settings})
    with pytest.raises(LimitError) as info:
        _inputs(root)
    assert fragment in str(info.value)
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"] * 17})
    with pytest.raises(LimitError, match="17 styles is over the limit of 16"):
        _inputs(root)


def test_daemon_mode_sends_the_same_job_with_uploads_for_files(root: Path) -> None:
    """wire_job: the validated JobSpec as the daemon's `job` field (protocol 2): file styles become
    {"upload": i} with their PNGs, library names stay names, the settings the daemon fixes (and the hot
    folder's own contact sheet) do not travel."""
    from bridge.hotfolder.process import wire_job
    from bridge.imaging import load_image
    from bridge.job import PROTOCOL_VERSION, JobSpec
    _write(root / "preset.json", {"styles": ["styles/starry.jpg", "monet", {"file": "styles/scream.jpg",
                                                                               "name": "Munch"}],
                                  "size": 64, "device": "cpu", "preserve_colors": True, "reveal": "all",
                                  "contact_sheet": True})
    inputs = _inputs(root)
    assert inputs.spec.document.contact_sheet is True             # made here, in both modes: not sent
    job, files = wire_job(inputs)
    assert job == {"protocol": PROTOCOL_VERSION, "name": "a", "priority": "batch",     # a hot folder is a batch
                   "styles": [{"upload": 0, "name": "starry"}, {"library": "monet"}, {"upload": 1, "name": "Munch"}],
                   "settings": {"size": 64, "original_colors": True, "reveal": "all"}}
    assert [name for name, _ in files] == ["starry.png", "Munch.png"]
    assert load_image(files[1][1]).width == inputs.styles[1].picture.width
    back = JobSpec.from_json(job)                      # what the daemon rebuilds: the same job
    assert back.style_names == inputs.spec.style_names and back.settings.size == 64


# ------------------------------------------------- issue 20, item 7: styles inside the hot folder's own folders

@pytest.mark.parametrize("folder", ["out", "in", "working", "done", "error", ".stylebridge"])
def test_a_style_inside_a_folder_the_watcher_manages_is_refused_by_name(root: Path, folder: str) -> None:
    """A style in out/ (or in/, where it would be taken as a photo...) is not "a missing library style" nor
    "not found": the message names the folder and says where styles belong."""
    style = root / folder / "starry.jpg"
    style.parent.mkdir(parents=True, exist_ok=True)
    style.write_bytes(SAMPLES["starry_night"].read_bytes())
    preset = _write(root / "preset.json", {"styles": [f"{folder}/starry.jpg"]})
    with pytest.raises(SettingsError) as info:
        resolve(root, "a.jpg")
    assert str(info.value) == (
        f"styles: {preset}: style '{folder}/starry.jpg' points into the hot folder's own {folder}/ folder "
        f"({style}), where the watcher takes, moves and writes files: keep style images outside in/, working/, "
        f"out/, done/, error/ (e.g. in {root / 'styles'}) and name them from there")


def test_a_style_naming_out_itself_or_a_gone_file_in_out_is_refused_too(root: Path) -> None:
    (root / "out").mkdir()
    _write(root / "preset.json", {"styles": ["out"]})            # a folder: it was taken for a library name
    with pytest.raises(SettingsError, match=r"'out' points into the hot folder's own out/ folder"):
        resolve(root, "a.jpg")
    _write(root / "preset.json", {"styles": ["out/gone.png"]})
    with pytest.raises(SettingsError, match=r"'out/gone.png' points into the hot folder's own out/ folder"):
        resolve(root, "a.jpg")
    # a sidecar beside the photo naming a style beside it: that style lies in in/ (and would be taken as a photo)
    sidecar = _write(root / "in" / "a.json", {"styles": [{"file": "starry.jpg"}]})
    (root / "in" / "starry.jpg").write_bytes(SAMPLES["starry_night"].read_bytes())
    (root / "preset.json").unlink()
    with pytest.raises(SettingsError, match=r"'starry.jpg' points into the hot folder's own in/ folder"):
        resolve(root, "a.jpg", sidecar)


def test_library_names_and_styles_beside_the_hot_folder_still_work(root: Path) -> None:
    _write(root / "in" / "sub" / "preset.json", {"styles": ["Starry", "../../styles/scream.jpg"]})
    spec = resolve(root, "sub/a.jpg")
    assert spec.styles[0].library == "Starry" and spec.styles[1].path == str((root / "styles" / "scream.jpg").resolve())


def test_a_library_name_whose_image_sits_in_out_says_where_it_belongs(tmp_path):
    """``"styles": ["mine"]`` while the only mine.png is in out/: the refusal says so and where it belongs
    (a library name stays one: the daemon's library may hold "mine")."""
    import io

    from PIL import Image

    from bridge.hotfolder.presets import misplaced_style_hint
    from bridge.hotfolder.process import InProcessEngine
    from bridge.hotfolder.watcher import Reporter, Watcher
    root = tmp_path / "hot"
    for folder in ("in", "out"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (40, 30), (10, 90, 200)).save(root / "out" / "mine.png")
    assert "out/mine.png" in misplaced_style_hint(root, "mine") and misplaced_style_hint(root, "other") == ""
    (root / "preset.json").write_text('{"styles": ["mine"], "size": 32, "iterations": 1}')
    Image.new("RGB", (40, 30), (200, 90, 10)).save(root / "in" / "photo.png")
    rc = Watcher(root, InProcessEngine(), stable_seconds=0.2, once=True, reporter=Reporter(io.StringIO())).run()
    note = (root / "error" / "photo.png.txt").read_text()
    assert rc == 1 and "there is out/mine.png" in note and "styles/mine.png" in note, note
