"""The one job description (bridge/job.py): built once, serialised once, rebuilt on the daemon's defaults."""

from __future__ import annotations

import json

import pytest

from bridge.job import PROTOCOL_VERSION, JobSpec, LimitError, Source, check, check_protocol, mask_word, unique_names
from bridge.settings import DEFAULTS, LIMITS, PRESETS, SettingsError
from bridge.settings_parse import settings_from_mapping


def test_round_trip_keeps_only_what_the_user_chose():
    spec = JobSpec.build({"style-strength": 0.4, "reveal": "all"}, [Source(library="Starry"), Source(upload=0, name="mine")],
                         name="run 1")
    wire = json.loads(json.dumps(spec.to_json()))
    assert wire["protocol"] == PROTOCOL_VERSION
    assert wire["settings"] == {"style_strength": 0.4, "reveal": "all"}    # no defaults travel
    back = JobSpec.from_json(wire)
    assert back.settings == spec.settings and back.document == spec.document
    assert back.styles == spec.styles and back.name == "run 1"
    assert back.style_names == ["Starry", "mine"]


def test_the_receiving_side_applies_its_own_default_preset():
    """The GIMP bug of issue 13: a job that names no preset gets the daemon's (serve --preset draft)."""
    daemon_base, _, _ = settings_from_mapping({"preset": "draft"})
    spec = JobSpec.build({"style_strength": 0.5}, [Source(library="a")])
    got = JobSpec.from_json(spec.to_json(), base=daemon_base)
    assert got.settings.size == PRESETS["draft"]["size"] and got.settings.style_strength == 0.5
    chosen = JobSpec.from_json(JobSpec.build({"preset": "best"}, [Source(library="a")]).to_json(), base=daemon_base)
    assert chosen.settings.size == PRESETS["best"]["size"]


def test_old_names_work_with_a_note_and_unknown_ones_get_the_closest_name():
    spec = JobSpec.build({"preserve_colors": True}, [Source(library="a")])
    assert spec.settings.original_colors is True
    assert spec.options == {"original_colors": True}
    assert any("original-colors" in n for n in spec.notes)
    with pytest.raises(SettingsError, match="did you mean 'content-weight'"):
        JobSpec.build({"content_wieght": 3}, [Source(library="a")])
    with pytest.raises(SettingsError, match="did you mean 'style-strength'"):
        JobSpec.build({"strength": 0.5}, [Source(library="a")])
    with pytest.raises(SettingsError, match="did you mean 'styles'"):
        JobSpec.from_json({"style": ["a"]})


def test_paths_are_refused_on_the_wire_unless_allowed():
    wire = {"styles": [{"file": "/etc/passwd"}]}
    with pytest.raises(SettingsError, match="upload the file instead"):
        JobSpec.from_json(wire)
    assert JobSpec.from_json(wire, allow_paths=True).styles[0].path == "/etc/passwd"
    spec = JobSpec.build({"init": "file", "init_image": "/x.png"}, [Source(library="a")])
    with pytest.raises(SettingsError, match="HTTP"):
        check(spec, over_http=True)


@pytest.mark.parametrize("bad", [[1], [{"upload": -1}], [{"upload": True}], [{"library": ""}], [{}],
                                 [{"library": "a", "upload": 0}], [{"libary": "a"}], "  ", 7])
def test_bad_styles_are_settings_errors(bad):
    with pytest.raises(SettingsError):
        spec = JobSpec.from_json({"styles": bad})
        check(spec)


def test_check_applies_the_limits_with_name_and_value():
    many = [Source(library=f"s{i}") for i in range(LIMITS.max_styles + 1)]
    with pytest.raises(LimitError) as err:
        check(JobSpec.build({}, many))
    assert err.value.limit == "max_styles" and err.value.value == LIMITS.max_styles + 1
    with pytest.raises(LimitError) as err:
        check(JobSpec.build({"iterations": LIMITS.max_iterations + 1}, [Source(library="a")]))
    assert err.value.limit == "max_iterations"
    with pytest.raises(LimitError) as err:
        check(JobSpec.build({"min_size": LIMITS.max_size + 1, "size": LIMITS.max_size + 2}, [Source(library="a")]))
    assert err.value.limit == "max_size"
    with pytest.raises(SettingsError, match="2 weights given for 1 styles"):
        check(JobSpec.build({"style_blend_weights": [1, 2]}, [Source(library="a")]))
    with pytest.raises(SettingsError, match="no such style"):
        check(JobSpec.build({}, [Source(library="a")], style_masks=(("b", Source(upload=0)),)))
    with pytest.raises(SettingsError, match="no style"):
        check(JobSpec.build({}, []))
    check(JobSpec.build({}, [Source(library="a")]))


def test_protocol_versions():
    check_protocol(None)
    check_protocol(1)
    check_protocol(PROTOCOL_VERSION)
    with pytest.raises(LimitError, match="upgrade stylebridge where the daemon runs") as err:
        check_protocol(PROTOCOL_VERSION + 1)
    assert err.value.status == 409
    with pytest.raises(SettingsError):
        check_protocol("2")


def test_one_mask_vocabulary_and_one_naming_rule():
    assert [mask_word(w) for w in ("first", "all", "none", "reveal-all", "hide-all", "auto")] == \
        ["first", "all", "none", "all", "none", "first"]
    with pytest.raises(SettingsError):
        mask_word("selection")
    assert unique_names(["a", "a", "blend", "a-2"]) == ["a", "a-2", "blend-2", "a-2-2"]
    assert DEFAULTS.style_strength == 1.0   # the knob every front end shows starts at "fully painted"


def test_the_service_defaults_match_the_protocol_clients():
    """The plug-in's client (stdlib only, runs inside GIMP) is the home of the URL; the package agrees with it."""
    from bridge import protocol as protocol_client
    from bridge.settings import SERVICE
    assert SERVICE.url == protocol_client.DEFAULT_URL


def test_priority_travels_and_defaults_to_interactive():
    from bridge.job import Priority
    spec = JobSpec.build({}, [Source(library="a")], priority=Priority.BATCH)
    assert spec.to_json()["priority"] == "batch"
    assert JobSpec.from_json(spec.to_json()).priority is Priority.BATCH
    assert "priority" not in JobSpec.build({}, [Source(library="a")]).to_json()
    assert JobSpec.from_json({"styles": ["a"]}).priority is Priority.INTERACTIVE
    with pytest.raises(SettingsError, match="priority"):
        JobSpec.from_json({"styles": ["a"], "priority": "urgent"})


def test_native_size_is_bounded_by_pixels_not_by_the_working_size_limit():
    spec = JobSpec.build({"preset": "print"}, [Source(library="a")])
    assert spec.settings.native
    check(spec, content_size=(6000, 4000))                      # 24 MP: allowed at native size
    with pytest.raises(LimitError) as err:
        check(spec, content_size=(10000, 8000))
    assert err.value.limit == "max_native_pixels" and err.value.status == 413 and "working size" in str(err.value)
    with pytest.raises(LimitError) as err:
        check(JobSpec.build({"large_iterations": [10, LIMITS.max_iterations + 1]}, [Source(library="a")]))
    assert err.value.limit == "max_iterations"
    with pytest.raises(LimitError):
        check(JobSpec.build({"size": LIMITS.max_size + 16}, [Source(library="a")]))   # a number over the cap still is
