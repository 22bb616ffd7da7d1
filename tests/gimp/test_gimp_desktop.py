"""Issue #23, the artist's real desktop, in real GIMP 3 (headless; dialogs on Xvfb at 1280x1024):

- the dialog with 12 library styles fits a 1024 px tall screen with OK reachable, and opened on a layer MASK
  (the normal state after painting masks) it names and paints the mask's layer;
- a re-run's live preview and its result land on top of the earlier result, the helper layers reused, and
  "replace this result" on an earlier group puts the new one in its place.

(Cancel leaving the image unmodified is checked in test_gimp_plugin.py::test_progress_window_cancel.)
"""

from __future__ import annotations

import json
import shutil

import pytest

from .conftest import SAMPLES, forget_last_values
from .test_gimp_plugin import batch, by_role

pytestmark = pytest.mark.gimp

RUN_ON_MASK = r'''
report = {}
img, src = photo_image(96, 72)
src.add_alpha()
src.add_mask(src.create_mask(Gimp.AddMaskType.WHITE))
img.clean_all()
proc = Gimp.get_pdb().lookup_procedure("python-fu-stylebridge")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
cfg.set_property("image", img)
cfg.set_core_object_array("drawables", [src.get_mask()])
for k, v in P["args"].items():
    cfg.set_property(k, v)
res = proc.run(cfg)
report["run"] = {"status": res.index(0).value_nick, "error": str(res.index(1)) if res.length() > 1 else None}
report["after"] = describe(img)
img.delete()
save_report(report)
'''


def test_dialog_fits_with_12_styles_and_works_on_a_mask(gimp, xvfb, gimp_workdir, gimp_profile, shared_daemon,
                                                         sb_client):
    shutil.copy(SAMPLES["coffee"], gimp_workdir / "photo.jpg")
    daemon = shared_daemon
    paintings = ["starry_night", "the_scream", "shipwreck"]
    client = sb_client.Client(daemon.url)
    for i in range(12):
        client.add_style(SAMPLES[paintings[i % 3]], f"{paintings[i % 3]}_{i:02d}")
    hook = gimp_workdir / "dialog.json"
    params = {"photo": gimp.inside(gimp_workdir / "photo.jpg"),
              "args": {"daemon-url": daemon.url,
                       "extra-settings": json.dumps({"size": 32, "iterations": 2, "coarse_to_fine": False})}}
    forget_last_values(gimp_profile)
    report, out, _ = batch(gimp, RUN_ON_MASK, gimp_workdir, gimp_profile, params, timeout=240, name="mask",
                           env={"DISPLAY": xvfb, "STYLEBRIDGE_GIMP_DIALOG_TEST": gimp.inside(hook),
                                "STYLEBRIDGE_GIMP_DIALOG_TEST_RESPONSES": "ok1"})
    look = json.loads(hook.read_text().splitlines()[0])
    assert len(look["library"]) == 12 and look["library_error"] is None, look
    geo = look["geometry"]
    x, y, width, height = geo["dialog"]
    assert geo["screen"][1] == 1024, geo
    assert height <= 1024 and y >= 0 and y + height <= 1024, geo            # the whole dialog on the screen
    ox, oy, ow, oh = geo["ok"]
    assert geo["ok_visible"] and 0 <= oy and oy + oh <= height and ox + ow <= width, geo   # OK inside it
    assert look["ok_sensitive"]
    # the dialog names its layer: the mask's layer, not a "Calling error"
    assert look["heading"] == "Painting the layer \u201cphoto\u201d (the layer of the selected mask)", look["heading"]
    labels = " ".join(look["labels"])
    assert "Your style library" in labels and "daemon" not in labels.lower(), look["labels"]
    assert report["run"]["status"] == "success", (report["run"], out[-3000:])
    styles = by_role(report["after"], "style")
    assert [d["parasite"]["style"] for d in styles] == [look["library"][0]]      # "ok1": the first one only
    top = [d["name"] for d in report["after"] if d["depth"] == 0]
    assert top[-1] == "photo" and top.index("photo") > top.index(styles[0]["parent"]), top


RUN_RERUN = r'''
report = {}
img, src = photo_image(64, 48)
report["first"] = run_stylebridge(img, src, **P["args"])
report["after_first"] = describe(img)
open(P["mark"], "w").write("second run\n")
report["second"] = run_stylebridge(img, src, **P["args2"])
report["after_second"] = describe(img)
groups = [l for l in img.get_layers() if l.is_group()]
oldest = groups[-1]
report["replace"] = run_stylebridge(img, oldest, **dict(P["args"], rerun="replace"))
report["after_replace"] = describe(img)
top_group = [l for l in img.get_layers() if l.is_group()][0]
report["add"] = run_stylebridge(img, top_group.get_children()[0], **dict(P["args"], rerun="add"))
report["after_add"] = describe(img)
img.delete()
save_report(report)
'''


def _top(tree):
    return [(d["name"], (d["parasite"] or {}).get("job")) for d in tree if d["depth"] == 0]


def test_rerun_lands_on_top(gimp, gimp_workdir, gimp_profile, shared_daemon):
    shutil.copy(SAMPLES["coffee"], gimp_workdir / "photo.jpg")
    shutil.copy(SAMPLES["starry_night"], gimp_workdir / "style.jpg")
    daemon = shared_daemon
    hook = gimp_workdir / "previews.jsonl"
    tiny = {"size": 32, "iterations": 2, "coarse_to_fine": False}
    params = {"photo": gimp.inside(gimp_workdir / "photo.jpg"), "mark": gimp.inside(gimp_workdir / "mark"),
              "args": {"style-files": gimp.inside(gimp_workdir / "style.jpg"), "daemon-url": daemon.url,
                       "extra-settings": json.dumps(tiny)},
              "args2": {"style-files": gimp.inside(gimp_workdir / "style.jpg"), "daemon-url": daemon.url,
                        "extra-settings": json.dumps({"size": 48, "iterations": 30, "coarse_to_fine": False,
                                                      "preview_every": 2})}}
    report, out, _ = batch(gimp, RUN_RERUN, gimp_workdir, gimp_profile, params, timeout=300, name="rerun",
                           env={"STYLEBRIDGE_GIMP_PREVIEW_TEST": gimp.inside(hook)})
    for run in ("first", "second", "replace", "add"):
        assert report[run]["status"] == "success", (run, report[run], out[-3000:])
    first_job = by_role(report["after_first"], "group")[0]["parasite"]["job"]
    second_job = next(d["parasite"]["job"] for d in by_role(report["after_second"], "group")
                      if d["parasite"]["job"] != first_job)
    # the second run's live preview was at the top of the image, above the earlier result
    looks = [json.loads(line) for line in hook.read_text().splitlines()]
    during_second = [look for look in looks if "Refine" in look["layers"]]
    assert during_second, looks
    for look in during_second:
        assert look["position"] == 0 and look["layers"][0] == "Stylebridge preview (temporary)", look
    # the new group above the earlier one, the helper layers reused (no "Refine #1"), kept above the groups
    top = _top(report["after_second"])
    names = [n for n, _ in top]
    assert names[:3] == ["Refine", "Original colours", "Detail"] and names[-1] == "photo", top
    assert len(names) == 6 and not any(n.startswith(("Refine #", "Original colours #", "Detail #")) for n in names), \
        names
    groups = [job for (n, job), d in zip(top, [d for d in report["after_second"] if d["depth"] == 0])
              if d["group"]]
    assert groups == [second_job, first_job], top
    # Original colours comes visible (its mask black: one white stroke shows the photo's colours there)
    colours = by_role(report["after_second"], "colors")
    assert len(colours) == 1 and colours[0]["visible"] and colours[0]["mask_full"] == 0, colours
    # "replace this result" on the earlier group: the new result takes its place, one group each
    top = _top(report["after_replace"])
    groups = [job for (n, job), d in zip(top, [d for d in report["after_replace"] if d["depth"] == 0])
              if d["group"]]
    assert len(groups) == 2 and groups[0] == second_job and first_job not in groups, top
    assert [n for n, _ in top][:3] == ["Refine", "Original colours", "Detail"], top
    # "add to this result group", chosen on a style layer of the top group: one more style layer in it
    tree = report["after_add"]
    assert len([d for d in tree if d["group"]]) == 2, _top(tree)
    top_group = next(d for d in tree if d["group"])
    members = [d for d in tree if d["parent"] == top_group["name"] and d["depth"] == 1]
    assert len(members) == 2 and members[0]["parasite"]["job"] != second_job, members
    assert [n for n, _ in _top(tree)][:3] == ["Refine", "Original colours", "Detail"], _top(tree)
