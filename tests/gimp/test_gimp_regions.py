"""Regions from GIMP (issue #22), end to end: real headless GIMP 3, real ``stylebridge serve``, the real engine.

An image whose photo layer has two channels named after the run's two styles (left half / right half) goes
through the plug-in: one fused run, the layer "Fused" at the top of the result group, masked by the union of
the regions. The same job from the CLI (``stylebridge stylize ... --region A=left.png --region B=right.png``,
the same tiny settings and seed) paints the same pixels: the plug-in sends the layer's 8-bit pixels and the
channels' bytes losslessly as PNG, so nothing is converted on the way and the comparison is exact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from PIL import Image

from .conftest import (
    REPO,
    SAMPLES,
    forget_last_values,
    load_sb_client,
    stylebridge_command,
)
from .test_gimp_plugin import batch, by_role

pytestmark = pytest.mark.gimp

W, H = 48, 36
SEED = 3
#: tiny and fixed: the same on both sides (the CLI's flags below say the same)
TINY = {"size": 32, "iterations": 3, "coarse_to_fine": False, "seed": SEED, "preview_every": 0}
CLI_TINY = ["--size", "32", "--iterations", "3", "--no-coarse-to-fine", "--seed", str(SEED), "--quiet"]

RUN = r'''
report = {}
img = Gimp.Image.new(P["w"], P["h"], Gimp.ImageBaseType.RGB)
photo = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(P["photo"]))
img.insert_layer(photo, None, 0)
photo.set_name("photo")
# two channels named after the styles (the file stems): left half, right half
for name, x in ((P["styles"][0], 0), (P["styles"][1], P["w"] // 2)):
    img.select_rectangle(Gimp.ChannelOps.REPLACE, x, 0, P["w"] // 2, P["h"])
    ch = Gimp.Selection.save(img)
    ch.set_name(name)
Gimp.Selection.none(img)
report["channels"] = [c.get_name() for c in img.get_channels()]
report["run"] = run_stylebridge(img, photo, **P["args"])
report["after"] = describe(img)
fused = []
def find(items):
    for it in items:
        if it.is_group():
            find(it.get_children())
        elif it.get_name() == "Fused":
            fused.append(it)
find(img.get_layers())
if fused:
    open(P["fused_raw"], "wb").write(bytes(pixels(fused[0])))
    m = fused[0].get_mask()
    report["fused_mask"] = sorted(set(pixels(m, "Y u8"))) if m is not None else None
    report["fused_position"] = img.get_item_position(fused[0])
img.delete()
save_report(report)
'''


def test_regions_from_channels_paint_what_the_cli_paints(gimp, gimp_workdir, gimp_profile, shared_daemon, tmp_path):
    t0 = time.monotonic()
    photo = gimp_workdir / "photo.png"
    Image.open(SAMPLES["coffee"]).convert("RGB").resize((W, H), Image.LANCZOS).save(photo)
    stems = ["starry_night", "the_scream"]
    for stem in stems:
        shutil.copy(SAMPLES[stem], gimp_workdir / f"{stem}.jpg")
    left = Image.new("L", (W, H), 0)
    left.paste(255, (0, 0, W // 2, H))
    right = Image.new("L", (W, H), 0)
    right.paste(255, (W // 2, 0, W, H))
    left.save(tmp_path / "left.png")
    right.save(tmp_path / "right.png")

    daemon = shared_daemon
    try:
        args = {"styles": "", "style-files": ";".join(gimp.inside(gimp_workdir / f"{s}.jpg") for s in stems),
                "mask-mode": "first", "daemon-url": daemon.url, "extra-settings": json.dumps(TINY),
                "preset": "normal"}      # the settings' own defaults, as the CLI's (not the daemon's --preset)
        params = {"photo": gimp.inside(photo), "w": W, "h": H, "styles": stems, "args": args,
                  "fused_raw": gimp.inside(gimp_workdir / "fused.raw")}
        report, out, _ = batch(gimp, RUN, gimp_workdir, gimp_profile, params)
    finally:
        daemon_log = daemon.log_text()
    assert sorted(report["channels"]) == stems
    assert report["run"]["status"] == "success", f"{report['run']}\n{out[-4000:]}\n--- daemon:\n{daemon_log}"

    # one fused layer on top of the result group, no per-style layers (region_style_layers not asked)
    after = report["after"]
    [fused] = by_role(after, "fused")
    assert fused["name"] == "Fused" and fused["depth"] == 1 and fused["position"] == 0, fused
    assert not by_role(after, "style"), [d["name"] for d in after]
    assert fused["size"] == [W, H] and fused["diff_vs_source"] > 4.0, fused
    assert report["fused_mask"] == [255], "the two halves cover the photo: the union mask is white"
    assert fused["parasite"]["style_files"] and fused["parasite"]["use_regions"] is True

    # the CLI, same photo, same regions, same settings and seed
    cli_out = tmp_path / "cli"
    proc = subprocess.run(stylebridge_command() + [
        "stylize", str(photo), "-s", str(gimp_workdir / "starry_night.jpg"), "-s", str(gimp_workdir / "the_scream.jpg"),
        "--region", f"starry_night={tmp_path / 'left.png'}", "--region", f"the_scream={tmp_path / 'right.png'}",
        "-o", f"{cli_out}/", *CLI_TINY], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = Image.open(cli_out / "photo_fused.png").convert("RGB")
    raw = (gimp_workdir / "fused.raw").read_bytes()
    gimp_rgb = Image.frombytes("RGBA", (W, H), raw).convert("RGB")
    assert cli.size == gimp_rgb.size
    assert gimp_rgb.tobytes() == cli.tobytes(), "GIMP's Fused layer differs from the CLI's fused result"
    assert time.monotonic() - t0 < 240


DIALOG = r'''
report = {}
img = Gimp.Image.new(P["w"], P["h"], Gimp.ImageBaseType.RGB)
photo = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(P["photo"]))
img.insert_layer(photo, None, 0)
photo.set_name("photo")
img.select_rectangle(Gimp.ChannelOps.REPLACE, 0, 0, P["w"] // 2, P["h"])
Gimp.Selection.save(img).set_name(P["styles"][0])
img.select_rectangle(Gimp.ChannelOps.REPLACE, P["w"] * 3 // 4, 0, P["w"] // 4, P["h"])   # the right quarter
proc = Gimp.get_pdb().lookup_procedure("python-fu-stylebridge")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
cfg.set_property("image", img)
cfg.set_core_object_array("drawables", [photo])
for k, v in P["args"].items():
    cfg.set_property(k, v)
res = proc.run(cfg)
report["run"] = {"status": res.index(0).value_nick}
# the layer-mask path, read as a run reads it: a layer named after a style, offset, its mask white on its right
# half (= the photo's right quarter); a uniform mask (a plain white one) says nothing and is left out
import sys
sys.path.insert(0, P["plugin_dir"])
import sb_layers, sb_logic
Gimp.Selection.none(img)
for name, x, sel in ((P["styles"][1], P["w"] // 2, True), ("plain", 0, False)):
    lay = Gimp.Layer.new(img, name, P["w"] // 2, P["h"], Gimp.ImageType.RGBA_IMAGE, 100, Gimp.LayerMode.NORMAL)
    img.insert_layer(lay, None, 0)
    lay.set_offsets(x, 0)
    if sel:
        img.select_rectangle(Gimp.ChannelOps.REPLACE, P["w"] * 3 // 4, 0, P["w"] // 4, P["h"])
    lay.add_mask(lay.create_mask(Gimp.AddMaskType.SELECTION if sel else Gimp.AddMaskType.WHITE))
    Gimp.Selection.none(img)
opts = sb_logic.read_options(dict(P["args"], **{"region-selection": ""}))
found, masks, covered = sb_layers.read_regions(img, photo, opts)
report["mask_regions"] = sb_logic.region_lines(sb_logic.style_names(opts), found, covered)
opts = sb_logic.read_options(dict(P["args"], **{"region-selection": "", "styles": "plain", "style-files": ""}))
found, masks, covered = sb_layers.read_regions(img, photo, opts)
report["uniform"] = sb_logic.region_lines(sb_logic.style_names(opts), found, covered)
img.delete()
save_report(report)
'''


def test_dialog_says_which_region_each_style_gets(gimp, xvfb, gimp_workdir, gimp_profile, shared_daemon):
    """The dialog's Regions frame: a channel named after one style, the selection chosen for the other, each
    said in words with its share of the photo and shown as a thumbnail; Cancel sends nothing."""
    photo = gimp_workdir / "photo.png"
    Image.open(SAMPLES["coffee"]).convert("RGB").resize((W, H), Image.LANCZOS).save(photo)
    stems = ["starry_night", "the_scream"]
    for stem in stems:
        shutil.copy(SAMPLES[stem], gimp_workdir / f"{stem}.jpg")
    daemon = shared_daemon
    hook = gimp_workdir / "dialog.json"
    args = {"styles": "", "style-files": ";".join(gimp.inside(gimp_workdir / f"{s}.jpg") for s in stems),
            "daemon-url": daemon.url, "region-selection": "the_scream"}
    params = {"photo": gimp.inside(photo), "w": W, "h": H, "styles": stems, "args": args,
              "plugin_dir": gimp.inside(gimp_profile / "plug-ins" / "stylebridge")}
    forget_last_values(gimp_profile)
    report, out, _ = batch(gimp, DIALOG, gimp_workdir, gimp_profile, params, timeout=240, name="dialog",
                           env={"DISPLAY": xvfb, "STYLEBRIDGE_GIMP_DIALOG_TEST": gimp.inside(hook),
                                "STYLEBRIDGE_GIMP_DIALOG_TEST_RESPONSES": "cancel"})
    jobs = load_sb_client().Client(daemon.url).jobs()
    look = json.loads(hook.read_text().splitlines()[0])
    assert look["regions"] == ["starry_night: channel 'starry_night' (50 % of the photo)",
                               "the_scream: the selection (25 % of the photo)"], look.get("regions")
    assert look["region_thumbs"] == [[48, 36], [48, 36]], look.get("region_thumbs")
    assert "Use the selection as the region of:" in look["labels"]
    assert "for 2 styles in one run (regions)" in (look["estimate"] or ""), look["estimate"]   # one fused run
    assert report["run"]["status"] == "cancel"
    assert report["mask_regions"] == ["starry_night: channel 'starry_night' (50 % of the photo)",
                                      "the_scream: layer mask of 'the_scream' (25 % of the photo)"]
    assert report["uniform"] == ["plain: whole photo: no region"]
    assert jobs == [], "Cancel must send nothing"
