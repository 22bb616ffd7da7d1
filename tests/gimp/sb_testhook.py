"""The GIMP dialog's test hook: describes the dialog as shown and answers it, for tests/gimp only.

Not part of the plug-in (gimp-install does not ship it): tests/gimp/conftest.py copies it beside the installed
plug-in, and sb_dialog imports it only when ``STYLEBRIDGE_GIMP_DIALOG_TEST`` is set. It runs inside GIMP's own
Python, so it imports only the standard library, ``gi`` and the plug-in's modules.
"""

import json
import os
import time

from gi.repository import GLib, GObject

import sb_logic


def look(dialog, config, panel, files, path, slider=None):
    """For the automated tests only (STYLEBRIDGE_GIMP_DIALOG_TEST=PATH): append a description of the dialog as
    shown (one JSON line per look) to PATH, with a screenshot PATH.N.png, then act: the N-th word of
    STYLEBRIDGE_GIMP_DIALOG_TEST_RESPONSES (default "ok"): "ok" ticks every library style and presses OK,
    "cancel" cancels, "tick" ticks every library style and looks again once their previews are in, "seturl"
    types $STYLEBRIDGE_GIMP_DIALOG_TEST_URL as the daemon URL, "addlib" adds the
    files in $STYLEBRIDGE_GIMP_DIALOG_TEST_FILES (';'-separated) to the library, "remove" removes the first library
    style, "addfiles" adds those files and those in $STYLEBRIDGE_GIMP_DIALOG_TEST_BAD_FILES to the job's style
    files (looking again once their previews are in), "dropfiles" takes the bad files off the list and the last
    file off and on again (looking again at once: a cached preview shows without a request); after each of these
    it looks again once the library has reloaded (the next word answers that look)."""
    from gi.repository import Gdk, Gtk

    if panel.state in ("loading", "starting"):
        return True                         # look again when the daemon has answered (or not)
    try:
        with open(path) as fh:
            n = sum(1 for _ in fh)
    except OSError:
        n = 0
    responses = (os.environ.get("STYLEBRIDGE_GIMP_DIALOG_TEST_RESPONSES") or "ok").split(",")
    response = responses[min(n, len(responses) - 1)].strip()
    labels = []

    def walk(widget):
        if isinstance(widget, (Gtk.Label, Gtk.Button, Gtk.Frame, Gtk.Expander)):
            text = widget.get_label()
            if text and widget.get_visible():
                labels.append(text)
        elif widget.find_property("label") is not None:          # GimpSpinScale draws its own label
            text = widget.get_property("label")
            if isinstance(text, str) and text:
                labels.append(text)
        if isinstance(widget, Gtk.Container):
            for child in widget.get_children():
                walk(child)

    walk(dialog)
    props = [p for p in sb_logic.PROPS if p != "token"]
    ok_button = dialog.get_widget_for_response(Gtk.ResponseType.OK)
    info = {"title": dialog.get_title(), "library": [name for name, _ in panel.checks],
            "checked": [name for name, check in panel.checks if check.get_active()],
            "library_error": panel.error, "state": panel.state, "labels": labels, "response": response,
            "ok_sensitive": bool(ok_button and ok_button.get_sensitive()), "retry_visible": panel.retry.get_visible(),
            "connection_expanded": bool(panel.expander and panel.expander.get_expanded()),
            "thumbs": panel.thumbs, "files": files.paths(),
            "previews": dict(panel.previewer.info) if panel.previewer else {},
            "estimate": panel.estimate.get_text() if panel.estimate is not None else None,
            "previews_shown": sorted(n for n, im in panel.preview_images.items() if im.get_visible()),
            "check_y": [(check.translate_coordinates(panel.grid, 0, 0) or [None])[-1] for _, check in panel.checks],
            "config": {p: config.get_property(p) for p in props},
            "file_previews": file_previews_shown(files, Gtk),
            "file_preview_x": [(im.translate_coordinates(files.list, 0, 0) or [None])[0]
                               for im in files.preview_images.values()],
            "preview_requests": panel.previewer.sent if panel.previewer else None}
    try:
        scale = dialog.get_widget("style-strength", GObject.TYPE_NONE)
        adj = scale.get_adjustment()
        info["strength_widget"] = {"range": [adj.get_lower(), adj.get_upper()], "slider": slider,
                                   "value": adj.get_value()}
    except Exception as exc:  # noqa: BLE001
        info["strength_widget"] = str(exc)
    regions = getattr(panel, "regions", None)           # issue #22: what each style gets, with its thumbnail
    if regions is not None:
        info["regions"] = list(regions.words)
        info["region_thumbs"] = [[c.get_pixbuf().get_width(), c.get_pixbuf().get_height()]
                                 for row in regions.lines.get_children() for c in row.get_children()
                                 if isinstance(c, Gtk.Image) and c.get_pixbuf() is not None]
    info.update(geometry(dialog, ok_button, Gdk))
    info["heading"] = panel.heading.get_text() if panel.heading is not None else None
    if panel.previewer is not None:
        info["faithful"] = {"sent": panel.previewer.faithful_sent, "ok": panel.previewer.faithful_ok,
                            "info": dict(panel.previewer.faithful_info)}
    info["shown_kind"] = dict(panel.shown_kind)
    try:
        win = dialog.get_window()
        shot = Gdk.pixbuf_get_from_window(win, 0, 0, win.get_width(), win.get_height())
        shot.savev(f"{path}.{n}.png", "png", [], [])
        info["screenshot"] = f"{path}.{n}.png"
    except Exception as exc:  # noqa: BLE001
        info["screenshot_error"] = str(exc)
    with open(path, "a") as fh:
        fh.write(json.dumps(info) + "\n")
    test_files = sb_logic.split_list(os.environ.get("STYLEBRIDGE_GIMP_DIALOG_TEST_FILES"), ";")
    if response == "tick":                  # tick every library style, look again once their previews are in
        for _, check in panel.checks:
            check.set_active(True)
        names = [name for name, _ in panel.checks]
        started = time.monotonic()

        def previews_in():
            if panel.previewer is None:
                return False
            url = sb_logic.connection(sb_logic.config_values(config))[0]
            pending = any(sb_logic.preview_key(url, n) not in panel.previewer.cache for n in names) \
                or any(key[0] == "faithful" for key in panel.previewer.waiting)     # and the faithful ones
            if pending and time.monotonic() - started < 120:
                return True
            GLib.timeout_add(300, look, dialog, config, panel, files, path, slider)
            return False

        GLib.timeout_add(200, previews_in)
    elif response in ("seturl", "addlib", "remove", "addfiles", "dropfiles"):
        loads, started = panel.loads, time.monotonic()
        bad_files = sb_logic.split_list(os.environ.get("STYLEBRIDGE_GIMP_DIALOG_TEST_BAD_FILES"), ";")
        if response == "seturl":
            config.set_property("daemon-url", os.environ.get("STYLEBRIDGE_GIMP_DIALOG_TEST_URL", ""))
        elif response == "addlib":
            panel.add_to_library(test_files)
        elif response == "remove":
            panel.remove_style(panel.checks[0][0], confirm=False)
        elif response == "addfiles":
            files.add(test_files + bad_files)
            panel.loads += 1                 # nothing to reload: look again once the previews are in
        else:
            for bad in bad_files:
                files.remove(bad)
            last = files.paths()[-1]
            files.remove(last)
            files.add([last])
            panel.loads += 1

        def again():
            if panel.loads == loads or (response == "addfiles" and files.waiting()
                                        and time.monotonic() - started < 120):
                return True
            GLib.timeout_add(300, look, dialog, config, panel, files, path, slider)
            return False

        GLib.timeout_add(100, again)
    elif response == "ok":
        for _, check in panel.checks:
            check.set_active(True)
        dialog.response(Gtk.ResponseType.OK)
    elif response == "ok1":                 # the first library style only, then OK
        for k, (_, check) in enumerate(panel.checks):
            check.set_active(k == 0)
        dialog.response(Gtk.ResponseType.OK)
    else:
        dialog.response(Gtk.ResponseType.CANCEL)
    return False


def geometry(dialog, ok_button, Gdk):
    """Where the dialog sits on the screen and where OK sits in it (the test: a 1024 px tall screen)."""
    try:
        win = dialog.get_window()
        _, x, y = win.get_origin()
        alloc = dialog.get_allocation()
        screen = Gdk.Screen.get_default()
        out = {"dialog": [x, y, alloc.width, alloc.height], "screen": [screen.get_width(), screen.get_height()]}
        if ok_button is not None:
            ox, oy = ok_button.translate_coordinates(dialog, 0, 0)
            ok = ok_button.get_allocation()
            out["ok"] = [ox, oy, ok.width, ok.height]
            out["ok_visible"] = ok_button.get_visible() and ok_button.get_mapped()
        return {"geometry": out}
    except Exception as exc:  # noqa: BLE001
        return {"geometry": {"error": str(exc)}}


def file_previews_shown(files, Gtk):
    """{file name: what its row's preview shows} (the test hook): the picture's size with the preview's info, or
    the warning icon's reason; the tooltip either way."""
    shown = {}
    for path, image in files.preview_images.items():
        look = {"tooltip": image.get_tooltip_text(), "visible": image.get_visible()}
        if image.get_storage_type() == Gtk.ImageType.PIXBUF:
            pix = image.get_pixbuf()
            look.update({k: v for k, v in files.previews.get(path, {}).items() if k in ("method", "width", "height")},
                        shown=[pix.get_width(), pix.get_height()])
        elif image.get_storage_type() == Gtk.ImageType.ICON_NAME:
            look.update(icon=image.get_icon_name()[0], error=files.previews.get(path, {}).get("error"))
        shown[os.path.basename(path)] = look
    return shown
