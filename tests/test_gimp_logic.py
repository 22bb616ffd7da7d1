"""The GIMP plug-in's logic (gimp_plugin/stylebridge/sb_logic.py) under the suite's Python, no GIMP needed.

sb_logic is loaded from its file with the plug-in folder first on the path, as GIMP's Python sees it. The
values GIMP cannot import from ``bridge`` (bounds, defaults, choices, old names) are checked against their
home here; the job it builds is parsed by the package's own ``JobSpec.from_json`` (the daemon's parse).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pytest

from bridge import job as jobmod
from bridge import settings as S

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "gimp_plugin" / "stylebridge"


@pytest.fixture(scope="module")
def L():
    """sb_logic as the plug-in imports it (its own sb_client beside it)."""
    saved = {k: sys.modules.pop(k) for k in ("sb_logic", "sb_client", "sb_desk") if k in sys.modules}
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        module = importlib.import_module("sb_logic")
        yield module
    finally:
        sys.path.remove(str(PLUGIN_DIR))
        for k in ("sb_logic", "sb_client", "sb_desk"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)


def _field(cls, name):
    return next(f for f in dataclasses.fields(cls) if f.name == name)


# ------------------------------------------------------------------------------------------------
# one home: the plug-in's copies equal the package's values
# ------------------------------------------------------------------------------------------------

def test_bounds_and_defaults_equal_bridge_settings(L):
    f = _field(S.Settings, "style_strength")
    assert (L.STRENGTH_MIN, L.STRENGTH_MAX, L.STRENGTH_DEFAULT) == (f.metadata["min"], f.metadata["max"], f.default)
    assert L.STRENGTH_KNOB == (0.0, 1.0) and L.STRENGTH_MIN <= L.STRENGTH_KNOB[1] <= L.STRENGTH_MAX
    assert L.ORIGINAL_COLORS_DEFAULT == S.DEFAULTS.original_colors
    assert L.MASK_DEFAULT == S.DOCUMENT_DEFAULTS.reveal == S.Reveal.FIRST.value
    assert [k for k, _ in L.MASK_CHOICES if k != L.SELECTION] == list(S.REVEAL_CHOICES)
    assert L.PRESET_NAMES == tuple(S.PRESETS)
    assert L.RENAMED == S.RENAMED
    for old, new in jobmod.OLD_MASK_WORDS.items():      # the package's old words mean the same here
        assert L.OLD_MASK_WORDS[old] == new
    assert set(S.BLEND_MODES) <= set(L.LAYER_MODES)


def test_plugin_names_no_literal_env_or_choices():
    """The adapter takes the token variable, defaults and choices from their homes, not literals."""
    source = (PLUGIN_DIR / "stylebridge.py").read_text()
    assert "STYLEBRIDGE_TOKEN" not in source and "STYLEBRIDGE_URL" not in source
    assert '"auto"' not in source and '"normal", flags' not in source
    assert "sb_logic.STRENGTH_MAX" in source and "sb_logic.QUALITY_DEFAULT" in source


# ------------------------------------------------------------------------------------------------
# options -> one job description
# ------------------------------------------------------------------------------------------------

def values(**kw):
    base = {"styles": "starry", "style-files": "", "preset": "daemon", "preserve-colors": False,
            "style-strength": 1.0, "mask-mode": "first", "daemon-url": "", "token": "", "extra-settings": ""}
    base.update(kw)
    return base


def test_daemon_default_quality_sends_no_preset(L):
    """The bug: the plug-in always sent a preset, so `stylebridge serve --preset draft` never applied."""
    opts = L.read_options(values(), env={})
    job, used = L.job_description(opts, has_selection=False)
    assert "preset" not in job["settings"] and used == "first"
    draft = dataclasses.replace(S.DEFAULTS, **S.PRESETS["draft"])          # a daemon started with --preset draft
    spec = jobmod.JobSpec.from_json(json.loads(json.dumps(job)), base=draft)
    assert spec.settings.size == S.PRESETS["draft"]["size"]
    chosen, _ = L.job_description(L.read_options(values(preset="best"), env={}), False)
    assert chosen["settings"]["preset"] == "best"
    assert jobmod.JobSpec.from_json(chosen, base=draft).settings.size == S.PRESETS["best"]["size"]


def test_job_is_what_the_package_parses(L, tmp_path):
    style = tmp_path / "my style.png"
    style.write_bytes(b"x")
    opts = L.read_options(values(styles="starry, scream", **{"style-files": str(style), "preserve-colors": True,
                                                             "style-strength": 0.4, "mask-mode": "none",
                                                             "extra-settings": '{"size": 96, "seed": 3}'}), env={})
    job, used = L.job_description(opts, has_selection=True)
    assert used == "none"
    assert job["protocol"] == L.sb_client.PROTOCOL_VERSION == jobmod.PROTOCOL_VERSION
    assert job["settings"] == {"original_colors": True, "style_strength": 0.4, "reveal": "none", "size": 96,
                               "seed": 3}
    assert "mask" not in job and "preserve_colors" not in json.dumps(job)
    spec = jobmod.JobSpec.from_json(job)
    jobmod.check(spec, over_http=True)
    assert spec.style_names == ["starry", "scream", "my style"]
    assert [s.upload for s in spec.styles] == [None, None, 0]
    assert spec.settings.original_colors and spec.settings.style_strength == 0.4 and spec.settings.size == 96
    assert spec.document.reveal == "none" and spec.name == "Stylebridge: starry, scream, my style"
    assert spec.notes == ()


@pytest.mark.parametrize("choice, selection, used, reveal, mask", [
    ("selection", True, "selection", None, {"upload": 0}),
    ("selection", False, "all", "all", None),          # no selection = everything selected
    ("first", True, "first", "first", None),
    ("all", True, "all", "all", None),
    ("reveal-all", False, "all", "all", None),          # old words still read
    ("hide-all", False, "none", "none", None),
    ("auto", True, "first", "first", None),             # as bridge.job.mask_word("auto")
])
def test_mask_choice(L, choice, selection, used, reveal, mask):
    job, got = L.job_description(L.read_options(values(**{"mask-mode": choice}), env={}), selection)
    assert got == used
    assert job["settings"].get("reveal") == reveal and job.get("mask") == mask
    spec = jobmod.JobSpec.from_json(job)
    assert (spec.mask is not None) == (mask is not None)


def test_old_names_in_extra_settings_are_renamed(L):
    opts = L.read_options(values(**{"extra-settings": '{"preserve-colors": true, "style-scale": 2}'}), env={})
    job, _ = L.job_description(opts, False)
    assert job["settings"]["original_colors"] is True and job["settings"]["style_scale"] == 2
    assert jobmod.JobSpec.from_json(job).notes == ()


@pytest.mark.parametrize("kw, words", [
    ({"styles": ""}, "choose at least one style"),
    ({"style-files": "/no/such/file.png"}, "style image not found: /no/such/file.png"),
    ({"extra-settings": "{size"}, "extra-settings is not valid JSON"),
    ({"extra-settings": "[1]"}, "must be a JSON object"),
    ({"style-strength": 101.0}, "outside 0..100"),
    ({"style-strength": -0.5}, "outside 0..100"),
])
def test_bad_options_say_what_to_do(L, kw, words):
    with pytest.raises(L.UserError, match=words.replace(".", r"\.").replace("[", r"\[")):
        L.read_options(values(**kw), env={})


def test_connection_token_from_the_client_variable(L):
    assert L.connection(values(), env={}) == (L.sb_client.DEFAULT_URL, None)
    assert L.connection(values(), env={L.sb_client.TOKEN_ENV: "t"}) == (L.sb_client.DEFAULT_URL, "t")
    assert L.connection(values(token=" mine ", **{"daemon-url": " http://h:1 "}), env={L.sb_client.TOKEN_ENV: "t"}) \
        == ("http://h:1", "mine")
    assert L.is_loopback("http://127.0.0.1:8765") and L.is_loopback("localhost:9")
    assert not L.is_loopback("http://10.0.0.2")


# ------------------------------------------------------------------------------------------------
# protocol
# ------------------------------------------------------------------------------------------------

def test_protocol_check(L):
    ours = L.sb_client.PROTOCOL_VERSION
    error, warning = L.protocol_check({"status": "ok", "version": "0.1.0"}, "http://x")   # no protocol: 1
    assert warning is None and error == L.sb_client.upgrade_message("http://x", 1, ours)    # the client's words
    assert "speaks protocol 1" in error and "pip install -U stylebridge" in error and "restart" in error
    assert L.protocol_check({"protocol": ours}, "http://x") == (None, None)
    error, warning = L.protocol_check({"protocol": ours + 1}, "http://x")
    assert error is None and "stylebridge gimp-install" in warning
    assert L.daemon_protocol({"protocol": True}) == 1 and L.daemon_protocol({"protocol": "2"}) == 1


# ------------------------------------------------------------------------------------------------
# result -> layer plan -> records
# ------------------------------------------------------------------------------------------------

RESULT = {"name": "Stylebridge: a, b", "settings": {"size": 64, "seed": 7}, "layers": [
    {"index": 0, "name": "Original", "kind": "pixel", "meta": {"role": "original"}, "image_url": "/v1/x/0"},
    {"index": 1, "name": "Stylebridge: a, b", "kind": "group", "mode": "pass_through", "opacity": 1.0,
     "mask_url": "/v1/x/1/mask", "meta": {"role": "group"}},
    {"index": 2, "name": "a", "kind": "pixel", "parent": 1, "mode": "normal", "opacity": 0.5, "visible": True,
     "left": 2, "top": 3, "width": 10, "height": 8, "image_url": "/v1/x/2", "mask_url": "/v1/x/2/mask",
     "meta": {"role": "style", "style": "a"}},
    {"index": 3, "name": "Colours", "kind": "pixel", "mode": "color", "opacity": 1.0, "visible": False,
     "image_url": "/v1/x/3", "meta": {"role": "colors"}},
    {"index": 4, "name": "Odd", "kind": "pixel", "mode": "weird", "opacity": "x", "meta": {"role": "refine"}},
]}


def test_layer_plan(L):
    steps, warnings = L.layer_plan(RESULT)
    assert [s.index for s in steps] == [1, 2, 3, 4]                     # the original is left out
    group, a, colours, odd = steps
    assert group.group and group.mode == "PASS_THROUGH" and group.mask_url is None and group.image_url is None
    assert (a.parent, a.mode, a.opacity, a.left, a.top, a.width, a.style) == (1, "NORMAL", 50.0, 2, 3, 10, "a")
    assert a.mask_url == "/v1/x/2/mask" and a.role == "style"
    assert colours.mode == "HSL_COLOR" and not colours.visible and colours.style is None
    assert odd.mode == "NORMAL" and odd.opacity == 100.0
    assert warnings == ["Stylebridge: a, b: masks on groups are not supported, mask left out",
                        "Odd: blend mode 'weird' not known, using Normal"]


def test_records_round_trip_and_old_records_read(L, tmp_path):
    style = tmp_path / "s.png"
    style.write_bytes(b"x")
    opts = L.read_options(values(**{"style-files": str(style), "preset": "draft", "style-strength": 0.3,
                                    "mask-mode": "selection", "extra-settings": '{"size": 64}',
                                    "daemon-url": "http://127.0.0.1:9"}), env={L.sb_client.TOKEN_ENV: "secret"})
    steps, _ = L.layer_plan(RESULT)
    record = L.layer_record(L.base_record(opts, RESULT, "job1", "selection"), steps[1])
    assert record["original_colors"] is False and "preserve_colors" not in record
    assert (record["mask"], record["mask_used"], record["preset"], record["style"]) == ("selection", "selection",
                                                                                        "draft", "a")
    assert record["settings"] == {"size": 64, "seed": 7} and "secret" not in json.dumps(record)
    back = L.read_record(L.record_bytes(record))
    assert back == record
    config = L.config_from_record(back)
    again = L.read_options(dict(values(), **config), env={})
    assert dataclasses.asdict(again) == dict(dataclasses.asdict(opts), token=None)
    # a record of the plug-in before the one vocabulary
    old = {"version": 1, "styles": ["starry"], "style_files": [], "preset": "normal", "preserve_colors": True,
           "style_strength": 2.0, "mask_mode": "reveal-all", "extra_settings": {}}
    config = L.config_from_record(old)
    assert config["preserve-colors"] is True and config["mask-mode"] == "all" and config["style-strength"] == 2.0
    assert config["preset"] == "normal" and config["extra-settings"] == ""
    assert L.config_from_record({"preset": None})["preset"] == L.DAEMON_DEFAULT
    assert L.read_record(b"not json") is None and L.read_record(b"[1]") is None and L.read_record(None) is None


def test_progress_line_uses_the_one_formatter(L):
    line = L.ProgressLine()
    queued = {"status": "queued", "queue_position": 2}
    assert line.update(queued) == ("Waiting for the stylebridge service (number 2 in line)...", None)
    assert line.update(queued) == (None, None)                         # unchanged: no redraw
    running = {"status": "running", "percent": 40, "style_name": "a", "iteration": 3, "iterations": 10}
    text, fraction = line.update(running)
    assert text == "Painting (A)" and fraction == 0.4


# ------------------------------------------------------------------------------------------------
# starting a daemon
# ------------------------------------------------------------------------------------------------

def test_serve_command_only_for_this_machine(L, tmp_path):
    from bridge import gimp_install
    assert L.INSTALL_FILE == gimp_install.INSTALL_FILE
    assert L.read_install(str(tmp_path)) == {}
    (tmp_path / L.INSTALL_FILE).write_text("not json")
    assert L.read_install(str(tmp_path)) == {}
    (tmp_path / L.INSTALL_FILE).write_text(json.dumps(gimp_install.install_record(["/opt/sb/stylebridge"])))
    install = L.read_install(str(tmp_path))
    # the daemon it starts stops itself after 20 idle minutes (serve --idle-exit)
    assert L.serve_command(install, "http://127.0.0.1:9999") == ["/opt/sb/stylebridge", "serve", "--host",
                                                                 "127.0.0.1", "--port", "9999", "--idle-exit", "1200"]
    assert L.serve_command(install, "localhost")[-6:-2] == ["--host", "127.0.0.1", "--port",
                                                          str(L.sb_client.DEFAULT_PORT)]
    assert L.serve_command(install, "http://192.168.1.5:8765") is None       # another machine: never
    assert L.serve_command({}, "http://127.0.0.1:9999") is None
    assert L.serve_command({"stylebridge": "/not/a/list"}, "http://127.0.0.1:9999") is None


def test_start_messages_say_what_to_do(L):
    base = L.sb_client.unreachable_message("http://127.0.0.1:9")
    assert L.start_failed_message("http://127.0.0.1:9", None).startswith(base)
    assert "stylebridge gimp-install" in L.start_failed_message("http://127.0.0.1:9", None)
    assert "on that machine" in L.start_failed_message("http://10.1.1.1:9", None)
    text = L.start_failed_message("http://127.0.0.1:9", ["/x/stylebridge", "serve"], "No such file or directory")
    assert text == base + " (the plug-in tried to start it with `/x/stylebridge serve`: No such file or directory)."
    assert issubclass(L.DaemonNotStarted, L.sb_client.ClientError)


def test_library_and_file_list_helpers(L):
    assert L.thumb_geometry(512, 320) == (154, 96, 0)          # equal heights: check boxes line up
    assert L.thumb_geometry(402, 512) == (75, 96, 0)
    assert L.thumb_geometry(1000, 100) == (960, 96, 400)      # a panorama is cropped around its centre
    assert L.add_files("a.png;b.png", ["b.png", "c.png", ""]) == "a.png;b.png;c.png"
    assert L.add_files("", ["x y.png"]) == "x y.png"
    assert L.remove_file("a.png;b.png", "a.png") == "b.png"
    assert L.library_add_message([("/p/a.png", None)]) is None
    assert L.library_add_message([("/p/a.png", None), ("/p/b.png", "exists")]) == \
        "Stylebridge: not added to the library: b.png: exists"


def test_file_preview_key(L, tmp_path):
    """A style file's preview is cached per daemon and file version; a missing file says why."""
    f = tmp_path / "style.png"
    f.write_bytes(b"one")
    key = L.file_preview_key("http://127.0.0.1:8765/", str(f))
    assert key == L.file_preview_key("http://127.0.0.1:8765", str(f))        # the same file again: a cache hit
    assert key != L.file_preview_key("http://127.0.0.1:8766", str(f))        # another daemon
    assert key != L.preview_key("http://127.0.0.1:8765", str(f))            # never a library style's key
    f.write_bytes(b"other")                                                  # edited: previewed anew
    assert L.file_preview_key("http://127.0.0.1:8765", str(f)) != key
    with pytest.raises(OSError) as missing:
        L.file_preview_key("http://127.0.0.1:8765", str(tmp_path / "gone.png"))
    assert L.unreadable_file_text(missing.value) == \
        "the file cannot be read (No such file or directory): remove it from the list or choose it again"
    with pytest.raises(OSError) as folder:
        L.file_preview_key("http://127.0.0.1:8765", str(tmp_path))
    assert "not a file" in L.unreadable_file_text(folder.value)


def test_temporary_preview_helpers(L):
    running = {"status": "running", "preview_url": "/v1/jobs/1/preview"}
    assert not L.preview_due({"status": "running"}, None, 5.0)              # none yet
    assert not L.preview_due(dict(running, status="queued"), None, 5.0)
    assert L.preview_due(running, None, 5.0) and L.preview_due(running, 4.0, 5.0)
    assert not L.preview_due(running, 4.5, 5.0)                             # at most every PREVIEW_EVERY_S
    record = L.read_record(L.record_bytes(L.preview_record("j1")))
    assert L.is_preview_record(record) and record["job"] == "j1"
    assert not L.is_preview_record(None) and not L.is_preview_record({"role": L.PREVIEW_ROLE})
    steps, _ = L.layer_plan(RESULT)      # the final stack never carries the temporary role
    assert not any(s.role == L.PREVIEW_ROLE for s in steps)


def test_quality_choices_are_the_presets_from_one_place(L):
    """Registered once (GIMP needs the words at registration): "Daemon default" first, then every preset of
    bridge.settings, "print" included; the dialog offers those a daemon's health lists."""
    assert [k for k, _ in L.QUALITY_CHOICES] == [L.DAEMON_DEFAULT, *S.PRESETS]
    assert "print" in L.PRESET_NAMES and L.quality_choice("print") == "print"
    assert L.quality_choices({"presets": list(S.PRESETS)}) == list(L.QUALITY_CHOICES)
    assert [k for k, _ in L.quality_choices({"presets": ["draft", "normal", "best"]})] == [
        L.DAEMON_DEFAULT, "draft", "normal", "best"]                            # an older daemon: no print
    assert L.quality_choices({}) == list(L.QUALITY_CHOICES)                    # one older than the list
    for gone in ("SCHEDULE_DEFAULTS", "PRESETS", "stage_sizes", "work_units", "SPEED_FILE", "record_speed"):
        assert not hasattr(L, gone)                                             # no copies of the schedule


class EstimatingClient:
    """Stands in for sb_client.Client.estimate: records the call, answers like the daemon (or fails)."""

    def __init__(self, answer=None, error=None):
        self.answer, self.error, self.calls = answer, error, []

    def estimate(self, width, height, styles=1, settings=None, timeout=None):
        self.calls.append({"width": width, "height": height, "styles": styles, "settings": settings})
        if self.error is not None:
            raise self.error
        return self.answer


def test_time_estimate_is_the_daemons(L):
    opts = L.read_options(values(preset="print", **{"extra-settings": '{"iterations": 90}'}), env={})
    client = EstimatingClient({"seconds": 185.0, "working_size": [800, 600], "stages": [[128, 25]],
                               "device": "cpu", "measured": True})
    text = L.ask_estimate(client, opts, (800, 600), 2)
    assert text == "Time: about 3 min for 2 styles on cpu\nQuality: Print (800 px, 25 iterations)"
    call = client.calls[0]
    assert (call["width"], call["height"], call["styles"]) == (800, 600, 2)
    # the settings are the job's (preset and extra settings), parsed as the daemon parses a job's
    assert call["settings"] == L.job_description(opts, False)[0]["settings"]
    spec = jobmod.JobSpec.from_json({"styles": ["a", "b"], "settings": call["settings"]})
    assert spec.settings.native and spec.settings.iterations == 90
    guess = L.ask_estimate(EstimatingClient({"seconds": 20.4, "device": "cuda", "measured": False}), opts, (8, 8), 1)
    assert guess.startswith("Time: about 20 s for 1 style on cuda") and "not measured" in guess
    assert "about 2.5 h" in L.estimate_text({"seconds": 9000, "device": "cpu"}, 1)
    assert L.ask_estimate(EstimatingClient(), opts, (8, 8), 0) == "Time: choose a style"
    old = EstimatingClient(error=L.sb_client.DaemonError(404, "no such route: POST /v1/estimate"))
    assert "older version" in L.ask_estimate(old, opts, (8, 8), 1)
    bad = EstimatingClient(error=L.sb_client.DaemonError(422, "iterations: 90000 is over the limit of 5000"))
    assert L.ask_estimate(bad, opts, (8, 8), 1) == "Time: no estimate: iterations: 90000 is over the limit of 5000"
    down = EstimatingClient(error=L.sb_client.DaemonUnreachable("http://127.0.0.1:9", "refused"))
    assert L.ask_estimate(down, opts, (8, 8), 1) == ""


def test_daemon_starter_says_what_went_wrong(L, tmp_path, monkeypatch):
    """The plug-in's DaemonStarter (standard library only) with stand-ins for the recorded stylebridge: one
    that does not exist, one that fails at once (its log's last line is quoted), none recorded."""
    import tempfile
    from bridge import gimp_install
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))          # the daemon's log goes there
    url = "http://127.0.0.1:9"      # nothing answers there
    gimp_install.install(tmp_path / "p1", command=[str(tmp_path / "missing")])
    starter = L.DaemonStarter(url, None, str(tmp_path / "p1" / "plug-ins" / "stylebridge"))
    assert starter.command == [str(tmp_path / "missing"), "serve", "--host", "127.0.0.1", "--port", "9",
                               "--idle-exit", "1200"]
    assert starter.start().endswith(f"`{' '.join(starter.command)}`: No such file or directory).")
    fails = tmp_path / "fails"
    fails.write_text("#!/bin/sh\necho \"port 9 is in use\"\nexit 3\n")
    fails.chmod(0o755)
    gimp_install.install(tmp_path / "p2", command=[str(fails)])
    starter = L.DaemonStarter(url, "tok", str(tmp_path / "p2" / "plug-ins" / "stylebridge"))
    assert starter.start() is None
    starter.proc.wait(timeout=30)
    message = starter.poll()
    assert message.startswith(L.sb_client.unreachable_message(url)) and "exited with status 3" in message
    assert message.endswith("ends: port 9 is in use).") and (tmp_path / "stylebridge-serve-9.log").exists()
    assert L.DaemonStarter(url, None, str(tmp_path)).start() == L.start_failed_message(url, None)


def test_unreadable_files_message(L, tmp_path):
    """OK with a style file that cannot be read keeps the dialog and names the file and what to do."""
    good = tmp_path / "good.png"
    good.write_bytes(b"png")
    assert L.unreadable_files_message([str(good)]) is None
    assert L.unreadable_files_message([]) is None
    msg = L.unreadable_files_message([str(good), str(tmp_path / "gone.jpg"), str(tmp_path)])
    assert msg.startswith("Stylebridge: gone.jpg: the file cannot be read (No such file or directory)"), msg
    assert f"{tmp_path.name}: the file cannot be read" in msg and "remove it from the list" in msg
    assert "good.png" not in msg


def test_preview_answer(L):
    """A rendered preview is shown and kept; a style the daemon skipped (its time budget ran out) shows the
    daemon's reason and is asked again later; no answer says so."""
    png = b"\x89PNG..."
    got = [{"style": "a", "png": png, "width": 2, "height": 1, "method": "fast", "seconds": 0.1, "skipped": False}]
    assert L.preview_answer(got) == (png, None, {"width": 2, "height": 1, "method": "fast", "seconds": 0.1}, True)
    skipped = [{"style": "a", "png": b"", "skipped": True, "reason": "timeout",
                "error": "not rendered: the request's 20 s budget ran out; ask again"}]
    assert L.preview_answer(skipped) == (None, "not rendered: the request's 20 s budget ran out; ask again", {}, False)
    assert L.preview_answer([]) == (None, "the daemon sent none", {}, True)


# ------------------------------------------------------------------------------------------------
# issue #23: the artist's desktop (sb_desk.py)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def D(L):
    """sb_desk as the plug-in imports it (loaded beside sb_logic)."""
    return L.sb_desk


def test_daemon_default_says_what_it_is(L):
    opts = L.read_options(values(), env={})
    assert opts.quality == "daemon"
    answer = {"seconds": 95.0, "working_size": [512, 384], "stages": [[256, 100], [512, 200]], "device": "cpu"}
    assert L.estimate_text(answer, 1, opts.quality) == ("Time: about 2 min for 1 style on cpu\n"
                                                        "Quality: Daemon default (512 px, 300 iterations)")


def test_style_scale_and_strength_knob(L, D):
    assert (D.STYLE_SCALE_DEFAULT, D.STYLE_SCALE_MIN, D.STYLE_SCALE_MAX) == (
        S.Settings.style_scale, _field(S.Settings, "style_scale").metadata["min"],
        _field(S.Settings, "style_scale").metadata["max"])
    opts = L.read_options(values(**{"style-scale": 2.5}), env={})
    job, _ = L.job_description(opts, False)
    assert jobmod.JobSpec.from_json(dict(job, styles=["a"])).settings.style_scale == 2.5
    assert "style_scale" not in L.job_description(L.read_options(values(), env={}), False)[0]["settings"]
    with pytest.raises(L.UserError, match="style-scale 9 is outside 0.05..8"):
        L.read_options(values(**{"style-scale": 9.0}), env={})
    assert L.config_from_record(L.base_record(opts, {}, "j", "first"))["style-scale"] == 2.5
    # the knob steps by 0.05 within 0..1; the old meaning (>1) moves into Extra settings, explicit there
    assert D.STRENGTH_STEP == 0.05
    assert D.legacy_strength(0.35, "") == (0.35, "")
    knob, extra = D.legacy_strength(3.0, '{"size": 64}')
    assert knob == 1.0 and json.loads(extra) == {"size": 64, "style_strength": 3.0}
    merged = L.read_options(values(**{"style-strength": knob, "extra-settings": extra}), env={})
    assert L.job_description(merged, False)[0]["settings"]["style_strength"] == 3.0


def test_preview_mix_is_the_engines(D):
    """The dialog's instant previews mixed with the photo as the engine does: strength in CIELAB
    (bridge.engine.strength.mix_lab), Original colours as bridge.engine.color.original_colors."""
    import numpy as np
    import torch

    from bridge.engine import color, strength

    rng = np.random.default_rng(3)
    styled = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    photo = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)

    def t(a):
        return torch.from_numpy(a[..., :3].astype(np.float32) / 255).permute(2, 0, 1)[None]

    for s, keep in ((0.5, False), (0.25, True), (1.0, True), (0.0, False)):
        want_t = color.original_colors(t(styled), t(photo)) if keep else t(styled)
        want_t = strength.mix_lab(want_t, t(photo), s)
        want = (want_t[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        got = np.frombuffer(D.mix_pixels(styled.tobytes(), photo.tobytes(), 4, s, keep), np.uint8).reshape(16, 16, 4)
        assert np.abs(got[..., :3].astype(int) - want.astype(int)).max() <= 2, (s, keep)
        assert (got[..., 3] == styled[..., 3]).all()
    assert D.mix_pixels(styled.tobytes(), photo.tobytes(), 4, 1.0, False) == styled.tobytes()


def test_progress_speaks_plain_words(D):
    words = D.progress_words({"status": "running", "style_index": 1, "style_count": 3, "style_name": "starry_night",
                              "stage": 3, "stages": 3, "iteration": 90, "iterations": 420, "eta_s": 170})
    assert words == "Painting style 2 of 3 (Starry Night), about 3 min left"
    assert "stage" not in words and "iteration" not in words
    assert D.progress_words({"status": "queued", "queue_position": 2}) == \
        "Waiting for the stylebridge service (number 2 in line)..."
    assert D.progress_words({"status": "running", "eta_s": 20}) == "Painting, about 20 s left"
    assert D.progress_words({"status": "paused"}).startswith("Paused")


def test_rerun_lands_on_top_and_reuses_helpers(D):
    # the source at 3, an earlier result's group at 2 and its helpers at 0, 1: the new group goes to the top
    assert D.top_position(3, [0, 1, 2]) == 0
    assert D.top_position(3, []) == 3                  # a first run: directly above the photo
    assert D.helpers_to_skip(["detail", "colors", "refine", "group"],
                             ["group", "style", "detail", "colors", "refine"]) == {"detail", "colors", "refine"}
    assert D.helpers_to_skip(["group"], ["detail", "refine"]) == set()
    assert D.rerun_choice("replace") == "replace" and D.rerun_choice("bogus") == "new"
    assert D.is_result_record({"plugin": "python-fu-stylebridge", "role": "refine"}, "python-fu-stylebridge")
    assert not D.is_result_record({"plugin": "python-fu-stylebridge", "role": "temporary-preview"},
                                  "python-fu-stylebridge")


class PreviewClient:
    """Stands in for sb_client.Client: an old one (previews() without method) sends the form by hand."""

    def __init__(self, new_style):
        self.calls = []
        if new_style:
            self.previews = self._previews_new

    def previews(self, content, *, styles=(), style_files=(), size=None, timeout=None):
        self.calls.append(("previews", styles, size))
        return [{"png": b"x", "method": "onnx"}]

    def _previews_new(self, content, *, styles=(), style_files=(), size=None, timeout=None, method="instant",
                      settings=None):
        self.calls.append(("previews", styles, size, method, settings))
        return [{"png": b"x", "method": "gatys"}]

    def json(self, method, path, body=None, content_type=None, timeout=None):
        self.calls.append((method, path, body))
        return {"previews": [{"png_base64": "eA==", "method": "gatys"}]}


def test_faithful_preview_request(L, D):
    opts = L.read_options(values(**{"style-strength": 0.5, "preserve-colors": True, "style-scale": 2.0,
                                    "preset": "draft"}), env={})
    settings = D.faithful_settings(L.job_settings(opts, "first"))
    assert settings == {"original_colors": True, "style_strength": 0.5, "style_scale": 2.0}
    new = PreviewClient(True)
    assert D.ask_previews(new, b"png", styles=["a"], size=176, method="faithful", settings=settings)[0]["method"] \
        == "gatys"
    assert new.calls == [("previews", ["a"], 176, "faithful", settings)]
    old = PreviewClient(False)
    got = D.ask_previews(old, b"png", styles=["a"], size=176, method="faithful", settings=settings)
    method, path, body = old.calls[0]
    assert (method, path, got[0]["png"]) == ("POST", "/v1/previews", b"x")
    assert b'name="method"' in body and b'\r\n\r\nfaithful\r\n' in body and b'"style_scale": 2.0' in body
    assert D.ask_previews(old, b"png", styles=["a"]) == [{"png": b"x", "method": "onnx"}]
    assert D.faithful_refused(L.sb_client.DaemonError(422, "method: unknown"))
    assert not D.faithful_refused(L.sb_client.DaemonError(429, "busy"))
    assert not D.faithful_refused(L.sb_client.DaemonError(500, "boom"))


# ------------------------------------------------------------------------------------------------
# regions (issue #22): channels / layer masks named after styles, the selection for one style
# ------------------------------------------------------------------------------------------------

def test_regions_match_channels_masks_and_the_selection(L, tmp_path):
    style = tmp_path / "The Scream.png"
    style.write_bytes(b"x")
    opts = L.read_options(values(styles="Starry Night, wave", **{"style-files": str(style)}), env={})
    styles = L.style_names(opts)
    assert styles == ["Starry Night", "wave", "The Scream"]          # library names, then file stems
    found = L.match_regions(styles, channels=["Sky", "starry  night", "Starry Night"],
                            masked_layers=["the scream", "wave", "photo"])
    # a channel (case and repeated spaces ignored, the topmost first) wins over a layer mask of the same name
    assert found == {"Starry Night": L.RegionSource("channel", "starry  night"),
                     "wave": L.RegionSource("layer-mask", "wave"),
                     "The Scream": L.RegionSource("layer-mask", "the scream")}
    # the selection chosen for a style wins, but only when there is one
    chosen = L.match_regions(styles, channels=["wave"], selection_style="WAVE", has_selection=True)
    assert chosen["wave"] == L.RegionSource("selection")
    assert L.match_regions(styles, channels=["wave"], selection_style="wave", has_selection=False)["wave"] \
        == L.RegionSource("channel", "wave")
    assert L.match_regions(styles) == {}


def test_region_words_say_what_each_style_gets(L):
    styles = ["Starry Night", "wave", "mosaic"]
    found = {"Starry Night": L.RegionSource("channel", "Starry Night"), "wave": L.RegionSource("selection"),
             "mosaic": L.RegionSource("layer-mask", "mosaic")}
    covered = {"Starry Night": 0.383, "wave": 0.004, "mosaic": 0.0}
    lines = L.region_lines(styles, found, covered)
    assert lines == ["Starry Night: channel 'Starry Night' (38 % of the photo)",
                     "wave: the selection (0.4 % of the photo)",
                     "mosaic: layer mask of 'mosaic' is empty (black everywhere): not used"]
    assert L.usable_regions(styles, found, covered) == ["Starry Night", "wave"]
    assert L.region_lines(["a", "b"], {}, {}) == ["a: whole photo: no region", "b: whole photo: no region"]
    words = L.region_lines(["a", "b"], {"a": L.RegionSource("channel", "a")}, {"a": 0.5})
    assert words[0] == "a: channel 'a' (50 % of the photo)"
    assert words[1].startswith("b: no region: not painted")
    assert L.coverage(bytes([255, 0, 0, 255])) == 0.5 and L.coverage(b"") == 0.0


def test_job_with_regions_is_what_the_package_parses(L, tmp_path):
    style = tmp_path / "B.png"
    style.write_bytes(b"x")
    opts = L.read_options(values(styles="A", **{"style-files": str(style), "mask-mode": "selection",
                                                "region-selection": "b"}), env={})
    job, used = L.job_description(opts, has_selection=True, regions=["B", "A"])
    # the selection is B's region here, so it is not also every layer's mask
    assert used == "all" and "mask" not in job
    assert job["regions"] == {"B": {"upload": 0}, "A": {"upload": 1}}
    spec = jobmod.JobSpec.from_json(json.loads(json.dumps(job)))
    jobmod.check(spec, over_http=True)
    assert [name for name, _ in spec.regions] == ["B", "A"]
    assert [src.upload for _, src in spec.regions] == [0, 1]
    plain, _ = L.job_description(opts, has_selection=True)
    assert "regions" not in plain
    # the record keeps the region choices, and the dialog reopens with them
    record = L.base_record(opts, {}, "j", used)
    config = L.config_from_record(record)
    assert config["use-regions"] is True and config["region-selection"] == "b"
    off = L.read_options(values(styles="A", **{"use-regions": False}), env={})
    assert off.use_regions is False and L.config_from_record(L.base_record(off, {}, "j", "first"))["use-regions"] \
        is False


def test_region_selection_must_name_a_style_of_the_run(L):
    with pytest.raises(L.UserError, match="region-selection names the style 'sky', which is not in this run"):
        L.read_options(values(styles="A,B", **{"region-selection": "sky"}), env={})


def test_region_thumbnail_is_small_and_white_where_the_style_goes(D):
    w, h = 400, 100
    mask = bytes(255 if x < w // 2 else 0 for _ in range(h) for x in range(w))    # left half
    tw, th, rgb = D.region_thumb(mask, w, h)
    assert (tw, th) == (D.REGION_THUMB_SIDE, 12) and len(rgb) == tw * th * 3
    first_row = rgb[:tw * 3]
    assert set(first_row[:tw // 2 * 3]) == {255} and set(first_row[tw // 2 * 3:]) == {0}
    assert D.region_thumb(bytes([7, 9]), 2, 1) == (2, 1, bytes([7, 7, 7, 9, 9, 9]))      # small masks as they are
    assert D.region_thumb(b"", 0, 0) == (1, 1, b"\0\0\0")


def test_estimate_with_regions_counts_one_fused_run(L):
    """Two styles with regions cost ONE optimisation (the fused run), not two; with region_style_layers each style's
    own run comes on top."""
    opts = L.read_options(values(styles="a,b"), env={})
    client = EstimatingClient({"seconds": 60.0, "device": "cpu"})
    assert L.ask_estimate(client, opts, (64, 48), 2, regions=2) == "Time: about 60 s for 2 styles in one run " \
        "(regions) on cpu"
    assert client.calls[-1]["styles"] == 1
    L.ask_estimate(client, opts, (64, 48), 2)
    assert client.calls[-1]["styles"] == 2                    # no regions: a run per style, as before
    both = L.read_options(values(styles="a,b", **{"extra-settings": '{"region_style_layers": true}'}), env={})
    L.ask_estimate(client, both, (64, 48), 2, regions=1)
    assert client.calls[-1]["styles"] == 3


def test_fused_layer_is_a_result_and_its_progress_is_said_in_words(D):
    """The Fused layer (role "fused") belongs to its run: choosing it re-runs its photo, not the layer itself."""
    assert D.FUSED_NAME == jobmod.FUSED
    assert D.is_result_record({"plugin": "p", "role": "fused"}, "p")
    assert D.progress_words({"status": "running", "style_index": 0, "style_count": 1, "style_name": "fused",
                             "eta_s": 30}) == "Painting every style in its region, about 30 s left"
    assert D.progress_words({"status": "running", "style_index": 2, "style_count": 3, "style_name": "fused"}) \
        == "Painting every style in its region (run 3 of 3)"
