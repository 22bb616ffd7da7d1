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
    assert r.settings == DEFAULTS and r.styles == [] and r.sources == []


def test_root_preset_relative_styles_and_hyphen_keys(root: Path) -> None:
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"], "content-weight": 7, "size": 64,
                                  "reveal": "all", "comment": "for the shop"})
    r = resolve(root, "a.jpg")
    assert [s.name for s in r.styles] == ["starry"]
    assert r.styles[0].path == (root / "styles" / "starry.jpg").resolve()
    assert r.settings.content_weight == 7.0 and r.settings.size == 64
    assert r.document.reveal == "all"


def test_subfolder_preset_overrides_root_and_inherits(root: Path) -> None:
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"], "size": 64, "iterations": 5})
    _write(root / "in" / "scream" / "preset.json", {"styles": ["../../styles/scream.jpg"], "iterations": 9})
    top = resolve(root, "a.jpg")
    sub = resolve(root, "scream/a.jpg")
    assert [s.name for s in top.styles] == ["starry"] and top.settings.iterations == 5
    assert [s.name for s in sub.styles] == ["scream"] and sub.settings.iterations == 9
    assert sub.settings.size == 64            # inherited from the root preset
    # A deeper folder without its own preset uses its parent's.
    assert [s.name for s in resolve(root, "scream/deeper/a.jpg").styles] == ["scream"]


def test_sidecar_overrides_for_one_file_with_paths_from_its_original_folder(root: Path, tmp_path: Path) -> None:
    _write(root / "preset.json", {"styles": ["styles/starry.jpg"], "size": 64, "preset": "draft"})
    # The sidecar now lies in working/, but it was written next to in/sub/a.jpg.
    side = _write(tmp_path / "elsewhere" / "ID--a.json",
                  {"styles": ["../../styles/scream.jpg", {"library": "monet", "name": "Monet"}],
                   "original_colors": True})
    r = resolve(root, "sub/a.jpg", side, "a.json")
    assert [(s.name, s.library) for s in r.styles] == [("scream", None), ("Monet", "monet")]
    assert r.settings.original_colors and r.settings.size == 64
    assert r.settings.coarse_iterations == PRESETS["draft"]["coarse_iterations"]
    assert r.sources[-1] == str(root / "in" / "sub" / "a.json")     # named where the user wrote it


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
