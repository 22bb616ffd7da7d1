"""The Stylebridge plug-in's dialog (GimpUi/Gtk): the daemon's library with previews, style files, the form,
the connection, the time estimate. Imported by ``stylebridge.py`` only for an interactive run.

Decisions that need no GIMP are in ``sb_logic.py``; this module is widgets and their wiring. With
``STYLEBRIDGE_GIMP_DIALOG_TEST`` set, the tests' own hook (tests/gimp/sb_testhook.py, which they copy beside the
installed plug-in) drives and records the dialog on a virtual display.
"""

import os
import time

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib, GObject  # noqa: E402

import sb_client  # noqa: E402
import sb_logic  # noqa: E402

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))


def settings_from_layer(layer):
    """A previous run's record if ``layer`` came out of Stylebridge (to repeat it), else None."""
    try:
        parasite = layer.get_parasite(sb_logic.PARASITE_NAME)
    except Exception:  # noqa: BLE001
        return None
    return sb_logic.read_record(bytes(parasite.get_data())) if parasite is not None else None


def prefill_config(config, record):
    for prop, value in sb_logic.config_from_record(record).items():
        config.set_property(prop, value)


def _offer_daemon_presets(config, health):
    """Grey out the registered Quality words this daemon's health does not list (an older daemon)."""
    try:
        choice = Gimp.param_spec_choice_get_choice(config.find_property("preset"))
        offered = {key for key, _ in sb_logic.quality_choices(health)}
        for key, _ in sb_logic.QUALITY_CHOICES:
            choice.set_sensitive(key, key in offered)
    except Exception:  # noqa: BLE001 - cosmetic: the daemon refuses an unknown preset with a clear message
        pass


def show_dialog(procedure, config, layer):
    """The GimpUi dialog: the daemon's library as check boxes, style files, quality, colours, strength, mask;
    the connection (URL, token) in its own expander. Returns True on OK."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk

    GimpUi.init(sb_logic.PROC_NAME)
    record = settings_from_layer(layer)
    if record:
        prefill_config(config, record)

    dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title="Stylebridge")
    panel = LibraryPanel(dialog, config, set(sb_logic.split_list(config.get_property("styles"), ",")), layer)

    files = FileList(dialog, config, panel)
    panel.on_ready = files.load_previews

    slider = None
    try:    # the slider spans the 0..1 knob; a typed value above 1 (the old meaning) is still accepted
        dialog.get_spin_scale("style-strength", 1.0).set_scale_limits(*sb_logic.STRENGTH_KNOB)
        slider = list(sb_logic.STRENGTH_KNOB)
    except Exception:  # noqa: BLE001 - cosmetic
        pass
    dialog.fill(["preset", "preserve-colors", "style-strength", "mask-mode"])

    expander = _connection_expander(dialog, GimpUi, Gtk)
    panel.expander = expander

    content = dialog.get_content_area()
    content.pack_start(panel.frame, False, False, 0)
    content.reorder_child(panel.frame, 0)
    content.pack_start(files.frame, False, False, 0)
    content.reorder_child(files.frame, 1)
    estimate = Gtk.Label(label="")
    estimate.set_xalign(0.0)
    estimate.set_line_wrap(True)
    content.pack_start(estimate, False, False, 0)
    content.pack_start(expander, False, False, 0)

    def update_estimate(*_args):
        """The time the chosen quality and styles take, as the daemon estimates it (POST /v1/estimate)."""
        if panel.health is None:
            estimate.set_text("")
            return
        _offer_daemon_presets(config, panel.health)
        try:
            extra = sb_logic.parse_extra(config.get_property("extra-settings"))
        except sb_logic.UserError:
            extra = {}
        chosen = panel.chosen()
        files_ = files.paths()
        opts = sb_logic.Options(styles=chosen, style_files=files_,
                                quality=sb_logic.quality_choice(config.get_property("preset")), extra_settings=extra)
        url, token = sb_logic.connection(sb_logic.config_values(config))
        client = sb_logic.daemon_client(url, token, timeout=5)
        estimate.set_text(sb_logic.ask_estimate(client, opts, (layer.get_width(), layer.get_height()),
                                                len(chosen) + len(files_)))

    panel.on_change = update_estimate
    files.on_change = update_estimate
    for prop in ("preset", "extra-settings"):
        config.connect(f"notify::{prop}", update_estimate)
    panel.frame.show_all()
    estimate.show()
    files.frame.show_all()
    expander.show_all()
    panel.load()
    update_estimate()
    panel.estimate = estimate

    test_hook = os.environ.get("STYLEBRIDGE_GIMP_DIALOG_TEST")
    if test_hook:       # the automated tests put sb_testhook.py beside the plug-in; it is not shipped
        import sb_testhook
        GLib.timeout_add(1000, sb_testhook.look, dialog, config, panel, files, test_hook, slider)

    return _run_until_answered(dialog, config, panel, files)


def _connection_expander(dialog, GimpUi, Gtk):  # noqa: N803 - the gi modules, imported by show_dialog
    """The connection (URL, token), apart from the main form, the token hidden as it is typed."""
    expander = Gtk.Expander(label="Conn_ection to the stylebridge daemon", use_underline=True)
    conn = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
    conn.set_border_width(4)
    for prop in ("daemon-url", "token"):
        conn.pack_start(dialog.get_widget(prop, GObject.TYPE_NONE), False, False, 0)
    try:
        token_widget = dialog.get_widget("token", GObject.TYPE_NONE)    # the GimpLabelEntry get_widget made
        if isinstance(token_widget, GimpUi.LabelEntry):
            token_widget.get_entry().set_visibility(False)
    except Exception:  # noqa: BLE001 - cosmetic
        pass
    expander.add(conn)
    return expander


def _run_until_answered(dialog, config, panel, files):
    """Run the dialog until Cancel (False) or an OK with at least one readable style (True)."""
    while True:
        ok = dialog.run()
        if not ok:
            panel.close()
            dialog.destroy()
            return False
        if panel.checks:
            config.set_property("styles", ",".join(panel.chosen()))
        unreadable = sb_logic.unreadable_files_message(files.paths())
        if unreadable:                      # the job would fail: say so and keep the dialog
            Gimp.message(unreadable)
            continue
        if config.get_property("styles") or config.get_property("style-files"):
            panel.close()
            dialog.destroy()
            return True
        Gimp.message("Stylebridge: choose at least one style (library style or style image file).")


class LibraryPanel:
    """The library frame: loads the daemon's styles for the URL and token in the config (again when they are
    edited), starts a daemon on this machine when none answers, and keeps OK insensitive, with a Retry button,
    while no daemon answers."""

    RELOAD_DELAY_MS = 700

    def __init__(self, dialog, config, chosen, layer=None):
        from gi.repository import Gtk

        self.Gtk = Gtk
        self.dialog, self.config = dialog, config
        self._chosen = set(chosen)
        self.checks = []
        self.library = []
        self.thumbs = {}                # name -> (width, height) of its thumbnail
        self.previewer = Previewer(layer) if layer is not None else None
        self.preview_images = {}        # name -> the Gtk.Image under its check box
        self.error = None
        self.state = "loading"          # loading | starting | ready | down
        self.loads = 0                  # finished loads (the test hook waits on it)
        self.expander = None
        self.health = None              # the daemon's health once it answered
        self.on_change = None           # called when the library or the ticked styles change
        self.on_ready = None            # called when a load ended (ready or down): the style files' previews
        self.estimate = None
        self._pending = None
        self._starter = None
        self.frame = Gtk.Frame(label="Styles from the daemon's library")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        box.set_border_width(6)
        self.frame.add(box)
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        self.status = Gtk.Label(label="")
        self.status.set_line_wrap(True)
        self.status.set_xalign(0.0)
        self.status.set_max_width_chars(70)
        self.retry = Gtk.Button(label="Retr_y", use_underline=True)
        self.retry.connect("clicked", lambda _b: self.load())
        row.pack_start(self.status, True, True, 0)
        row.pack_start(self.retry, False, False, 0)
        box.pack_start(row, False, False, 0)
        self.grid = Gtk.FlowBox()
        self.grid.set_selection_mode(Gtk.SelectionMode.NONE)
        self.grid.set_max_children_per_line(4)
        self.grid.set_homogeneous(True)
        box.pack_start(self.grid, True, True, 0)
        self.add_button = Gtk.Button(label="_Add images to the library...", use_underline=True)
        self.add_button.set_tooltip_text("Upload style images to the daemon's library (POST /v1/styles)")
        self.add_button.connect("clicked", self._choose_for_library)
        buttons = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        buttons.pack_start(self.add_button, False, False, 0)
        box.pack_start(buttons, False, False, 0)
        self._handlers = [config.connect("notify::daemon-url", self._edited),
                          config.connect("notify::token", self._edited)]

    # -- state --------------------------------------------------------------------------------------
    def chosen(self):
        for name, check in self.checks:
            if check.get_active():
                self._chosen.add(name)
            else:
                self._chosen.discard(name)
        return [name for name, _ in self.checks if name in self._chosen]

    def _set_ok(self, sensitive):
        self.dialog.set_response_sensitive(self.Gtk.ResponseType.OK, sensitive)

    def _say(self, text, retry=False):
        self.status.set_text(text)
        self.status.set_visible(bool(text))
        self.retry.set_visible(retry)

    def close(self):
        if self._pending is not None:
            GLib.source_remove(self._pending)
            self._pending = None
        for handler in self._handlers:
            self.config.disconnect(handler)
        self._handlers = []
        if self.previewer is not None:
            self.previewer.stop()

    # -- loading ------------------------------------------------------------------------------------
    def _edited(self, *_args):
        if self._pending is not None:
            GLib.source_remove(self._pending)
        self._pending = GLib.timeout_add(self.RELOAD_DELAY_MS, self._reload)

    def _reload(self):
        self._pending = None
        self.load()
        return False

    def load(self):
        """Fetch the library for the current URL/token; start a daemon here if none answers."""
        self.chosen()
        url, token = sb_logic.connection(sb_logic.config_values(self.config))
        self.state = "loading"
        self._set_ok(False)
        client = sb_logic.daemon_client(url, token, timeout=10)
        try:
            health = client.health(timeout=5)
            error, warning = sb_logic.protocol_check(health, client.url)
            if error:
                return self._down(error)
            self.health = health
            styles = client.styles()
        except sb_client.DaemonUnreachable as exc:
            if self._starter is not None and self._starter.url == url and self._starter.proc is not None \
                    and self._starter.proc.poll() is None:
                return self._starting()                 # already on its way
            starter = sb_logic.DaemonStarter(url, token, PLUGIN_DIR)
            problem = starter.start()
            if problem is None:
                self._starter = starter
                return self._starting()
            return self._down(problem if starter.command is not None else str(exc) + ".")
        except sb_client.ClientError as exc:
            return self._down(str(exc))
        self._show(styles, url, token, warning)

    def _starting(self):
        self.state = "starting"
        self._say(sb_logic.START_TEXT.replace("Stylebridge: s", "S"))
        GLib.timeout_add(500, self._poll_start, self._starter)

    def _poll_start(self, starter):
        if starter is not self._starter or self.state != "starting":
            return False
        result = starter.poll()
        if result is None:
            return True
        if result == "up":
            self.load()
        else:
            self._down(result)
        return False

    def _clear(self):
        for child in self.grid.get_children():
            self.grid.remove(child)
            child.destroy()
        self.checks = []
        self.library = []
        self.preview_images = {}

    def _changed(self):
        if self.on_change is not None:
            self.on_change()

    def _ready(self):
        if self.on_ready is not None:
            self.on_ready()

    def _down(self, message):
        self.health = None
        self._clear()
        self.add_button.set_sensitive(False)
        self.state = "down"
        self.error = message
        self._say(message, retry=True)
        if self.expander is not None:
            self.expander.set_expanded(True)
        self._set_ok(False)
        self._ready()
        self.loads += 1
        self._changed()

    def _show(self, styles, url, token, warning=None):
        Gtk = self.Gtk
        self._clear()
        self.add_button.set_sensitive(True)
        self.state = "ready"
        self.error = None
        self.library = styles
        self.thumbs = {}
        text = warning or ("" if styles else "The library is empty: add style images below.")
        self._say(text)
        for style in styles:
            name = style.get("name")
            check = Gtk.CheckButton(label=f"{name}  ({style.get('width')}x{style.get('height')})")
            check.set_active(name in self._chosen)
            remove = Gtk.Button.new_from_icon_name("edit-delete", Gtk.IconSize.MENU)
            remove.set_relief(Gtk.ReliefStyle.NONE)
            remove.set_tooltip_text(f"Remove {name} from the daemon's library")
            remove.connect("clicked", lambda _b, n=name: self.remove_style(n))
            row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=2)
            row.pack_start(check, True, True, 0)
            row.pack_start(remove, False, False, 0)
            box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
            thumb = _thumbnail(url, token, style.get("thumbnail_url"))
            if thumb is not None:
                self.thumbs[name] = (thumb.get_width(), thumb.get_height())
                image = Gtk.Image.new_from_pixbuf(thumb)
            else:       # the same height without a picture, so the check boxes still line up
                image = Gtk.Image()
            image.set_size_request(-1, sb_logic.THUMB_HEIGHT)
            box.pack_start(image, False, False, 0)
            box.pack_start(row, False, False, 0)
            preview = Gtk.Image()
            preview.set_no_show_all(True)
            box.pack_start(preview, False, False, 0)
            self.preview_images[name] = preview
            check.connect("toggled", self._toggled, name, url, token)
            self.grid.add(box)
            self.checks.append((name, check))
        self.grid.show_all()
        for name, check in self.checks:
            if check.get_active():
                self._toggled(check, name, url, token)
        self._changed()
        self._set_ok(True)
        self._ready()
        self.loads += 1

    # -- previews -----------------------------------------------------------------------------------
    def _toggled(self, check, name, url, token):
        """The photo in this style appears under its check box as it is ticked (POST /v1/previews)."""
        self._changed()
        image = self.preview_images.get(name)
        if image is None or self.previewer is None:
            return
        if not check.get_active():
            image.hide()
            return
        self.previewer.request(url, token, name, lambda pix, why, n=name: self._preview_ready(n, pix, why))

    def _preview_ready(self, name, pixbuf, why):
        image = self.preview_images.get(name)
        if image is None:
            return
        if pixbuf is not None:
            image.set_from_pixbuf(pixbuf)
            image.set_tooltip_text(f"{name}: a quick preview of the photo in this style (not the final result)")
        else:
            image.set_from_icon_name("dialog-warning", self.Gtk.IconSize.DIALOG)
            image.set_tooltip_text(f"No preview for {name}: {why}")
        active = dict(self.checks).get(name)
        image.set_visible(bool(active and active.get_active()))

    # -- editing the library ------------------------------------------------------------------------
    def _client(self):
        url, token = sb_logic.connection(sb_logic.config_values(self.config))
        return sb_logic.daemon_client(url, token, timeout=60)

    def _choose_for_library(self, _button):
        paths = choose_images(self.dialog, "Add style images to the daemon's library", "_Add to library")
        if paths:
            self.add_to_library(paths)

    def add_to_library(self, paths):
        """Upload ``paths`` to the library (named after their files), tick them, reload."""
        client = self._client()
        results = []
        for path in paths:
            try:
                entry = client.add_style(path)
                self._chosen.add(entry.get("name"))
                results.append((path, None))
            except (OSError, sb_client.ClientError) as exc:
                results.append((path, getattr(exc, "strerror", None) or str(exc)))
        message = sb_logic.library_add_message(results)
        if message:
            Gimp.message(message)
        self.load()

    def remove_style(self, name, confirm=True):
        """Remove ``name`` from the daemon's library (after asking), reload."""
        Gtk = self.Gtk
        if confirm:
            ask = Gtk.MessageDialog(transient_for=self.dialog, modal=True, message_type=Gtk.MessageType.QUESTION,
                                    buttons=Gtk.ButtonsType.OK_CANCEL,
                                    text=f"Remove {name} from the daemon's library?")
            ask.format_secondary_text("The image is deleted on the daemon's machine; layers made with it stay.")
            answer = ask.run()
            ask.destroy()
            if answer != Gtk.ResponseType.OK:
                return
        try:
            self._client().remove_style(name)
        except sb_client.ClientError as exc:
            Gimp.message(f"Stylebridge: {name} not removed: {exc}")
        self._chosen.discard(name)
        self.load()


class Previewer:
    """Fetches dialog previews one at a time in a worker thread (the daemon renders one request at a time) and
    hands each to the GTK main loop; results are cached per daemon and library style, or per daemon and
    style file version (sb_logic.file_preview_key)."""

    def __init__(self, layer):
        import queue
        import threading

        self.layer = layer
        self.content = None             # the layer as a small PNG, made on first use (GIMP calls: main thread)
        self.cache = {}                 # key -> (pixbuf or None, error text, info)
        self.info = {}                  # library style -> {"width", "height", "method", "seconds", "shown"}
        self.file_info = {}             # style file path -> the same (test hook)
        self.sent = 0                   # requests sent to the daemon (the test hook: a cache hit sends none)
        self.waiting = set()
        self.queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _content_png(self):
        if self.content is None:
            from gi.repository import GdkPixbuf  # noqa: F401 - the pixbuf type the thumbnail comes as
            side = sb_logic.PREVIEW_CONTENT_SIDE
            w, h = self.layer.get_width(), self.layer.get_height()
            scale = min(1.0, side / max(w, h, 1))
            pix = self.layer.get_thumbnail(max(1, round(w * scale)), max(1, round(h * scale)),
                                           Gimp.PixbufTransparency.KEEP_ALPHA)
            ok, data = pix.save_to_bufferv("png", [], [])
            self.content = bytes(data)
        return self.content

    def shape(self):
        """(width, height) a preview of the photo is shown at, so a row keeps its place while it loads."""
        width, height, _ = sb_logic.thumb_geometry(self.layer.get_width(), self.layer.get_height())
        return width, height

    def request(self, url, token, style, done):
        """``done(pixbuf, None)`` or ``done(None, why)`` for library style ``style``, now if cached."""
        self._ask(sb_logic.preview_key(url, style), url, token, style, None, done)

    def request_file(self, url, token, path, done):
        """The same for the style image file ``path`` (uploaded with the request, as the job uploads it)."""
        try:
            key = sb_logic.file_preview_key(url, path)
        except OSError as exc:
            done(None, sb_logic.unreadable_file_text(exc))
            return
        self._ask(key, url, token, None, path, done)

    def _ask(self, key, url, token, style, path, done):
        if key in self.cache:
            pix, why, _ = self.cache[key]
            done(pix, why)
            return
        if key in self.waiting:
            return
        self.waiting.add(key)
        try:
            content = self._content_png()
        except Exception as exc:  # noqa: BLE001 - a preview is decoration
            self.waiting.discard(key)
            done(None, f"the layer could not be read ({exc})")
            return
        self.queue.put((key, url, token, style, path, content, done))

    def stop(self):
        self.queue.put(None)

    def _work(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            key, url, token, style, path, content, done = item
            data, why, info, keep = None, None, {}, True
            if path is None:
                ask = {"styles": [style]}
            else:
                try:
                    with open(path, "rb") as fh:
                        ask = {"style_files": [(os.path.basename(path), fh.read())]}
                except OSError as exc:
                    GLib.idle_add(self._deliver, key, style, path, None, sb_logic.unreadable_file_text(exc), {},
                                  done, False)          # not kept: the artist may fix the file's permissions
                    continue
            for attempt in range(20):
                try:
                    self.sent += 1
                    got = sb_logic.daemon_client(url, token, timeout=120).previews(
                        ("layer.png", content), size=sb_logic.PREVIEW_SIZE, **ask)
                    data, why, info, keep = sb_logic.preview_answer(got)
                    break
                except sb_client.DaemonError as exc:
                    if exc.status == 429 and attempt < 19:      # busy with another preview: wait our turn
                        time.sleep(0.5)
                        continue
                    why = str(exc)
                    break
                except sb_client.ClientError as exc:
                    why = str(exc)
                    break
                except Exception as exc:  # noqa: BLE001 - never kill the worker
                    why = f"{type(exc).__name__}: {exc}"
                    break
            GLib.idle_add(self._deliver, key, style, path, data, why, info, done, keep)

    def _deliver(self, key, style, path, data, why, info, done, keep=True):
        pix = None
        if data:
            try:
                from gi.repository import GdkPixbuf
                loader = GdkPixbuf.PixbufLoader()
                loader.write(data)
                loader.close()
                pix = loader.get_pixbuf()
                width, height, _ = sb_logic.thumb_geometry(pix.get_width(), pix.get_height())
                pix = pix.scale_simple(width, height, GdkPixbuf.InterpType.BILINEAR)
            except Exception as exc:  # noqa: BLE001
                pix, why = None, f"unreadable preview ({exc})"
        self.waiting.discard(key)
        if keep:
            self.cache[key] = (pix, why, info)
        if pix is not None:
            shown = dict(info, shown=[pix.get_width(), pix.get_height()])
            if path is None:
                self.info[style] = shown
            else:
                self.file_info[path] = shown
        done(pix, why)
        return False


def choose_images(parent, title, accept):
    """The desktop's own file chooser (several files); the chosen paths, or [] when cancelled."""
    from gi.repository import Gtk

    chooser = Gtk.FileChooserNative.new(title, parent, Gtk.FileChooserAction.OPEN, accept, "_Cancel")
    chooser.set_select_multiple(True)
    filt = Gtk.FileFilter()
    filt.set_name("Images")
    for pattern in sb_logic.IMAGE_PATTERNS:
        filt.add_pattern(pattern)
        filt.add_pattern(pattern.upper())
    chooser.add_filter(filt)
    try:
        if chooser.run() == Gtk.ResponseType.ACCEPT:
            return [p for p in chooser.get_filenames() if p]
        return []
    finally:
        chooser.destroy()


class FileList:
    """Style images from disk (uploaded with the job, not kept in the library): a list with a remove button per
    file and the desktop's file chooser to add several at once. Kept in the ``style-files`` argument. Each row
    shows the photo in that file's style (a quick preview, POST /v1/previews) once the daemon answers."""

    MAX_ROWS_SHOWN = 3

    def __init__(self, dialog, config, panel=None):
        from gi.repository import Gtk

        self.Gtk, self.dialog, self.config, self.panel = Gtk, dialog, config, panel
        self.on_change = None
        self.preview_images = {}        # path -> the Gtk.Image in its row
        self.previews = {}              # path -> {"error": why} or the preview's info, once in (the test hook)
        self.frame = Gtk.Frame(label="Style images from files (sent with the job)")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        box.set_border_width(6)
        self.frame.add(box)
        self.list = Gtk.ListBox()
        self.list.set_selection_mode(Gtk.SelectionMode.NONE)
        scroller = Gtk.ScrolledWindow()     # rows are preview-high: beyond a few, scroll (the dialog fits the screen)
        scroller.set_policy(Gtk.PolicyType.NEVER, Gtk.PolicyType.AUTOMATIC)
        scroller.set_propagate_natural_height(True)
        scroller.set_max_content_height(self.MAX_ROWS_SHOWN * (sb_logic.THUMB_HEIGHT + 4))
        scroller.add(self.list)
        box.pack_start(scroller, False, False, 0)
        add = Gtk.Button(label="Add style _image files...", use_underline=True)
        add.connect("clicked", lambda _b: self.add(choose_images(dialog, "Style images", "_Add")))
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL)
        row.pack_start(add, False, False, 0)
        box.pack_start(row, False, False, 0)
        self.refresh()

    def paths(self):
        return sb_logic.split_list(self.config.get_property("style-files"), ";")

    def add(self, paths):
        if paths:
            self.config.set_property("style-files", sb_logic.add_files(self.config.get_property("style-files"), paths))
            self.refresh()

    def remove(self, path):
        self.config.set_property("style-files", sb_logic.remove_file(self.config.get_property("style-files"), path))
        self.refresh()

    def _previewer(self):
        panel = self.panel
        return panel.previewer if panel is not None else None

    def refresh(self):
        Gtk = self.Gtk
        for child in self.list.get_children():
            self.list.remove(child)
            child.destroy()
        self.preview_images = {}
        previewer = self._previewer()
        for path in self.paths():
            name = os.path.basename(path)
            row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
            if previewer is not None:   # the library previews' size: the rows keep their place while it loads
                image = Gtk.Image()
                image.set_size_request(*previewer.shape())
                image.set_tooltip_text(f"{name}: a quick preview of the photo in this style is on its way")
                row.pack_start(image, False, False, 0)
                self.preview_images[path] = image
            label = Gtk.Label(label=name)
            label.set_tooltip_text(path)
            label.set_xalign(0.0)
            label.set_ellipsize(3)          # Pango.EllipsizeMode.END
            remove = Gtk.Button.new_from_icon_name("list-remove", Gtk.IconSize.MENU)
            remove.set_relief(Gtk.ReliefStyle.NONE)
            remove.set_valign(Gtk.Align.CENTER)
            remove.set_tooltip_text(f"Do not use {name}")
            remove.connect("clicked", lambda _b, p=path: self.remove(p))
            row.pack_start(label, True, True, 0)
            row.pack_start(remove, False, False, 0)
            self.list.add(row)
        self.previews = {}              # refilled at once from the previewer's cache
        self.list.set_visible(bool(self.paths()))
        self.list.show_all()
        if not self.paths():
            self.list.hide()
        self.load_previews()
        if self.on_change is not None:
            self.on_change()

    def load_previews(self):
        """Ask for each file's preview once the library panel reached a daemon (again when it reloads: the URL
        may have changed); while none answers the rows show no picture."""
        previewer, panel = self._previewer(), self.panel
        if previewer is None:
            return
        if panel.state != "ready":
            self.previews = {}
            text = "No preview: no daemon answers" if panel.state == "down" else "Preview: waiting for the daemon"
            for image in self.preview_images.values():
                image.clear()
                image.set_tooltip_text(text)
            return
        url, token = sb_logic.connection(sb_logic.config_values(self.config))
        for path in self.preview_images:
            previewer.request_file(url, token, path, lambda pix, why, p=path: self._preview_ready(p, pix, why))

    def waiting(self):
        """Paths whose preview has not come in yet (the test hook waits on them)."""
        if self._previewer() is None or self.panel.state != "ready":
            return []
        return [p for p in self.preview_images if p not in self.previews]

    def _preview_ready(self, path, pixbuf, why):
        image = self.preview_images.get(path)
        if image is None:               # taken off the list meanwhile
            return
        name = os.path.basename(path)
        if pixbuf is not None:
            image.set_from_pixbuf(pixbuf)
            image.set_tooltip_text(f"{name}: a quick preview of the photo in this style (not the final result)")
            self.previews[path] = dict(self._previewer().file_info.get(path, {}),
                                       shown=[pixbuf.get_width(), pixbuf.get_height()])
        else:
            image.set_from_icon_name("dialog-warning", self.Gtk.IconSize.DIALOG)
            image.set_tooltip_text(f"No preview for {name}: {why}")
            self.previews[path] = {"error": why}





def _thumbnail(url, token, thumb_url):
    if not thumb_url:
        return None
    try:
        from gi.repository import GdkPixbuf
        data = sb_logic.daemon_client(url, token, timeout=5).get_bytes(thumb_url)
        loader = GdkPixbuf.PixbufLoader()
        loader.write(data)
        loader.close()
        pix = loader.get_pixbuf()
        width, height, crop_x = sb_logic.thumb_geometry(pix.get_width(), pix.get_height())
        pix = pix.scale_simple(width, height, GdkPixbuf.InterpType.BILINEAR)
        if crop_x:
            pix = pix.new_subpixbuf(crop_x, 0, min(width, sb_logic.THUMB_MAX_WIDTH), height)
        return pix
    except Exception:  # noqa: BLE001 - a thumbnail is decoration
        return None
