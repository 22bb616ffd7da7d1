"""The Stylebridge plug-in's dialog (GimpUi/Gtk): the daemon's library with previews, style files, the form,
the connection, the time estimate. Imported by ``stylebridge.py`` only for an interactive run.

Decisions that need no GIMP are in ``sb_logic.py``; this module is widgets and their wiring. With
``STYLEBRIDGE_GIMP_DIALOG_TEST`` set, the tests' own hook (tests/gimp/sb_testhook.py, which they copy beside the
installed plug-in) drives and records the dialog on a virtual display.
"""

import os

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib, GObject  # noqa: E402

import sb_client  # noqa: E402
import sb_desk  # noqa: E402
import sb_logic  # noqa: E402
from sb_widgets import FileList, Previewer, choose_images, thumbnail  # noqa: E402

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


def _heading(Gtk, text, wrap=False):
    """A left-aligned line of the dialog: one line cut with an ellipsis (a long layer name), or wrapped."""
    label = Gtk.Label(label=text)
    label.set_xalign(0.0)
    if wrap:
        label.set_line_wrap(True)
    else:
        label.set_ellipsize(3)                              # Pango.EllipsizeMode.END: a long name stays one line
    return label


def show_dialog(procedure, config, layer, target=None):
    """The GimpUi dialog: the layer it paints, your style library as a scrolled grid, style files, quality,
    colours, strength, brush strokes, mask; the connection in its own expander. ``target``: (why this layer,
    True when the item chosen is in an earlier result group (then the re-run choice shows), the item chosen).
    True on OK."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk

    GimpUi.init(sb_logic.PROC_NAME)
    why, result_group, chosen = target or (None, False, layer)
    record = settings_from_layer(chosen)            # an earlier result: its run's settings, to repeat or vary
    if record:
        prefill_config(config, record)
    knob, extra = sb_desk.legacy_strength(config.get_property("style-strength"),
                                          config.get_property("extra-settings"))
    config.set_property("extra-settings", extra)      # a strength above 1 is explicit there, the knob spans 0..1
    config.set_property("style-strength", knob)

    dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title="Stylebridge")
    panel = LibraryPanel(dialog, config, set(sb_logic.split_list(config.get_property("styles"), ",")), layer)
    files = FileList(dialog, config, panel)
    panel.on_ready = files.load_previews
    slider = _knobs(dialog)
    fields = ["preset", "preserve-colors", "style-strength", "style-scale", "mask-mode"]
    dialog.fill((["rerun"] if result_group else []) + fields)

    expander = _connection_expander(dialog, GimpUi, Gtk)
    panel.expander = expander
    heading = _heading(Gtk, sb_desk.target_words(layer.get_name(), why))
    content = dialog.get_content_area()
    for i, widget in enumerate((heading, panel.frame, files.frame)):
        content.pack_start(widget, False, False, 0)
        content.reorder_child(widget, i)
    regions = RegionsFrame(dialog, config, panel, files, layer)
    content.pack_start(regions.frame, False, False, 0)
    content.reorder_child(regions.frame, 3)
    estimate = _heading(Gtk, "", wrap=True)
    content.pack_start(estimate, False, False, 0)
    content.pack_start(expander, False, False, 0)
    panel.heading = heading

    def update_estimate(*_args):
        """The time the chosen quality and styles take, as the daemon estimates it (POST /v1/estimate)."""
        if panel.health is None:
            estimate.set_text("")
            return
        _offer_daemon_presets(config, panel.health)
        opts = _dialog_options(config, panel, files)
        url, token = sb_logic.connection(sb_logic.config_values(config))
        client = sb_logic.daemon_client(url, token, timeout=5)
        estimate.set_text(sb_logic.ask_estimate(client, opts, (layer.get_width(), layer.get_height()),
                                                len(opts.styles) + len(opts.style_files), len(regions.usable)))

    def changed(*_args):
        regions.refresh()
        update_estimate()

    panel.on_change = changed
    files.on_change = changed
    config.connect("notify::use-regions", changed)
    regions.on_change = update_estimate
    for prop in ("preset", "extra-settings"):
        config.connect(f"notify::{prop}", update_estimate)
    for prop in ("preset", "extra-settings", "style-strength", "preserve-colors", "style-scale"):
        config.connect(f"notify::{prop}", panel.settings_changed)
    for widget in (heading, panel.frame, regions.frame, estimate, files.frame, expander):
        widget.show_all()
    panel.load()
    regions.refresh()
    update_estimate()
    panel.estimate = estimate
    panel.regions = regions

    test_hook = os.environ.get("STYLEBRIDGE_GIMP_DIALOG_TEST")
    if test_hook:       # the automated tests put sb_testhook.py beside the plug-in; it is not shipped
        import sb_testhook
        GLib.timeout_add(1000, sb_testhook.look, dialog, config, panel, files, test_hook, slider)

    return _run_until_answered(dialog, config, panel, files)


def _dialog_options(config, panel, files):
    """The run's options as the dialog now shows them (for the estimate and the faithful previews)."""
    try:
        extra = sb_logic.parse_extra(config.get_property("extra-settings"))
    except sb_logic.UserError:
        extra = {}
    return sb_logic.Options(styles=panel.chosen(), style_files=files.paths(),
                            quality=sb_logic.quality_choice(config.get_property("preset")), extra_settings=extra,
                            original_colors=bool(config.get_property("preserve-colors")),
                            style_strength=float(config.get_property("style-strength")),
                            style_scale=float(config.get_property("style-scale")),
                            use_regions=bool(config.get_property("use-regions")),
                            region_selection=str(config.get_property("region-selection") or ""))


class RegionsFrame:
    """Where each style goes (issue #22): the "Regions from channels and layer masks" switch, the choice "Use
    the selection as the region of: [style]", and one line per chosen style saying which region it gets, with a
    small thumbnail of that region (white = the style goes there). Refreshed when the styles or the switch
    change."""

    NONE = "(no style: the selection is not a region)"

    def __init__(self, dialog, config, panel, files, layer):
        from gi.repository import Gtk
        self.config, self.panel, self.files, self.layer = config, panel, files, layer
        self.frame = Gtk.Frame(label="Regions: where each style is painted")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        box.set_border_width(6)
        try:
            box.pack_start(dialog.get_widget("use-regions", GObject.TYPE_NONE), False, False, 0)
        except Exception:  # noqa: BLE001 - the switch is also in the procedure's settings
            pass
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        row.pack_start(Gtk.Label(label="Use the selection as the region of:"), False, False, 0)
        self.combo = Gtk.ComboBoxText()
        self.combo.connect("changed", self._chosen)
        row.pack_start(self.combo, True, True, 0)
        box.pack_start(row, False, False, 0)
        self.lines = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
        box.pack_start(self.lines, False, False, 0)
        self.frame.add(box)
        self.words = []             # what the lines say (the test hook reads it)
        self.usable = []            # the styles whose region goes with the job (the estimate counts one run)
        self.on_change = None
        self._filling = False

    def _chosen(self, combo):
        if self._filling:
            return
        text = combo.get_active_text()
        self.config.set_property("region-selection", "" if text in (None, self.NONE) else text)
        self.refresh()
        if self.on_change is not None:
            self.on_change()

    def _fill_combo(self, styles):
        want = str(self.config.get_property("region-selection") or "")
        self._filling = True
        try:
            self.combo.remove_all()
            self.combo.append_text(self.NONE)
            active = 0
            for i, style in enumerate(styles):
                self.combo.append_text(style)
                if style.casefold() == want.casefold():
                    active = i + 1
            self.combo.set_active(active)
            if want and not active:
                self.config.set_property("region-selection", "")      # that style is no longer in the run
        finally:
            self._filling = False

    def refresh(self, *_args):
        from gi.repository import GdkPixbuf, Gtk
        from sb_layers import read_regions
        try:
            opts = _dialog_options(self.config, self.panel, self.files)
            styles = sb_logic.style_names(opts)
            self._fill_combo(styles)
            opts.region_selection = str(self.config.get_property("region-selection") or "")
            found, masks, covered = read_regions(self.layer.get_image(), self.layer, opts)
        except Exception as exc:  # noqa: BLE001 - the run reads them again and reports
            self.words = [f"Regions: cannot read them ({exc})"]
            found, masks, covered, styles = {}, {}, {}, []
        else:
            self.words = sb_logic.region_lines(styles, found, covered) if styles else ["Regions: choose a style"]
        self.usable = sb_logic.usable_regions(styles, found, covered)
        for child in self.lines.get_children():
            self.lines.remove(child)
        w, h = self.layer.get_width(), self.layer.get_height()
        for i, text in enumerate(self.words):
            row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
            style = styles[i] if i < len(styles) else None
            if style in masks:
                tw, th, rgb = sb_desk.region_thumb(masks[style], w, h)
                pix = GdkPixbuf.Pixbuf.new_from_bytes(GLib.Bytes.new(rgb), GdkPixbuf.Colorspace.RGB, False, 8,
                                                      tw, th, tw * 3)
                row.pack_start(Gtk.Image.new_from_pixbuf(pix), False, False, 0)
            label = Gtk.Label(label=text)
            label.set_xalign(0.0)
            label.set_line_wrap(True)
            row.pack_start(label, True, True, 0)
            self.lines.pack_start(row, False, False, 0)
        self.lines.show_all()


def _knobs(dialog):
    """Strength 0..1 in steps of 0.05 (above 1, the old meaning, only in Extra settings or a script); brush
    strokes 0.25..4 on the slider. Returns the strength slider's span (the test hook reads it)."""
    slider = None
    try:
        strength = dialog.get_spin_scale("style-strength", 1.0)
        strength.set_range(0.0, 1.0)
        strength.set_increments(sb_desk.STRENGTH_STEP, sb_desk.STRENGTH_PAGE)
        strength.set_digits(2)
        slider = [0.0, 1.0]
        scale = dialog.get_spin_scale("style-scale", 1.0)
        scale.set_scale_limits(*sb_desk.STYLE_SCALE_KNOB)
        scale.set_increments(sb_desk.STYLE_SCALE_STEP, 0.25)
        scale.set_digits(2)
    except Exception:  # noqa: BLE001 - cosmetic
        pass
    return slider


def _connection_expander(dialog, GimpUi, Gtk):  # noqa: N803 - the gi modules, imported by show_dialog
    """The connection (URL, token), apart from the main form, the token hidden as it is typed."""
    expander = Gtk.Expander(label="Conn_ection to the stylebridge service", use_underline=True)
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


#: The library grid scrolls beyond this height (about two rows of styles), so the dialog fits any screen
#: from 768 px up whatever the library's size.
LIBRARY_MAX_HEIGHT = 280
TILE_HEIGHT = sb_logic.THUMB_HEIGHT + 40      # a style's tile: its thumbnail and the check box under it
PER_ROW = 3                                   # tiles a row holds at least
#: A moving knob re-mixes the previews once it rests this long.
REMIX_DELAY_MS = 250


class _NoFiles:
    """The faithful previews are per library style: the job's settings without its style files."""

    @staticmethod
    def paths():
        return []


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
        self.heading = None
        self.raw = {}                   # name -> the preview as it came (instant: mixed here with the photo)
        self.shown_kind = {}            # name -> "instant" | "faithful": what its tile shows now
        self._remix_pending = None
        self.frame = Gtk.Frame(label="Your style library")
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
        self.grid.set_min_children_per_line(PER_ROW)
        self.grid.set_max_children_per_line(8)
        self.grid.set_homogeneous(True)
        self.grid.set_valign(Gtk.Align.START)
        # any library size fits the screen: the grid scrolls beyond about two rows of styles
        self.scroller = Gtk.ScrolledWindow()
        self.scroller.set_policy(Gtk.PolicyType.NEVER, Gtk.PolicyType.AUTOMATIC)
        self.scroller.set_propagate_natural_height(True)
        self.scroller.set_max_content_height(LIBRARY_MAX_HEIGHT)
        self.scroller.add(self.grid)
        box.pack_start(self.scroller, True, True, 0)
        self.add_button = Gtk.Button(label="_Add images to the library...", use_underline=True)
        self.add_button.set_tooltip_text("Add paintings to your style library (kept by the stylebridge service)")
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
        self.raw = {}
        self.shown_kind = {}

    def shrink(self):
        """Show up to two rows of styles (more scroll), and let the window shrink back to what it shows (after
        a style was removed or the library reloaded)."""
        rows = -(-len(self.checks) // PER_ROW)
        self.scroller.set_min_content_height(min(rows * TILE_HEIGHT, LIBRARY_MAX_HEIGHT))
        self.dialog.resize(1, 1)

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
        self._clear()
        self.add_button.set_sensitive(True)
        self.state = "ready"
        self.error = None
        self.library = styles
        self.thumbs = {}
        text = warning or ("" if styles else "Your style library is empty: add paintings with the button below.")
        self._say(text)
        for style in styles:
            self.grid.add(self._tile(style, url, token))
        self.grid.show_all()
        self.shrink()
        for name, check in self.checks:
            if check.get_active():
                self._toggled(check, name, url, token)
        self._changed()
        self._set_ok(True)
        self._ready()
        self.loads += 1

    def _tile(self, style, url, token):
        """One style: its thumbnail and, once ticked, the photo in that style beside it; the check box and
        the remove button under them (about 130 px tall: several per row, two rows before scrolling)."""
        Gtk = self.Gtk
        name = style.get("name")
        check = Gtk.CheckButton(label=name)
        check.set_tooltip_text(f"{name} ({style.get('width')}x{style.get('height')})")
        check.get_child().set_ellipsize(3)
        check.get_child().set_max_width_chars(14)
        check.set_active(name in self._chosen)
        remove = Gtk.Button.new_from_icon_name("edit-delete", Gtk.IconSize.MENU)
        remove.set_relief(Gtk.ReliefStyle.NONE)
        remove.set_tooltip_text(f"Remove {name} from your style library")
        remove.connect("clicked", lambda _b, n=name: self.remove_style(n))
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=2)
        row.pack_start(check, True, True, 0)
        row.pack_start(remove, False, False, 0)
        pictures = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=2)
        thumb = thumbnail(url, token, style.get("thumbnail_url"))
        if thumb is not None:
            self.thumbs[name] = (thumb.get_width(), thumb.get_height())
            image = Gtk.Image.new_from_pixbuf(thumb)
        else:       # the same height without a picture, so the check boxes still line up
            image = Gtk.Image()
        image.set_size_request(-1, sb_logic.THUMB_HEIGHT)
        pictures.pack_start(image, False, False, 0)
        preview = Gtk.Image()
        preview.set_no_show_all(True)
        pictures.pack_start(preview, False, False, 0)
        self.preview_images[name] = preview
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
        box.pack_start(pictures, False, False, 0)
        box.pack_start(row, False, False, 0)
        check.connect("toggled", self._toggled, name, url, token)
        self.checks.append((name, check))
        return box

    # -- previews -----------------------------------------------------------------------------------
    def settings_changed(self, *_args):
        """Strength, colours, brush strokes or quality changed: re-mix the instant previews at once (soon, once
        the knob rests) and ask for faithful ones again (those asked for the old settings are dropped)."""
        if self._remix_pending is not None:
            GLib.source_remove(self._remix_pending)
        self._remix_pending = GLib.timeout_add(REMIX_DELAY_MS, self._remix)

    def _remix(self):
        self._remix_pending = None
        if self.previewer is None:
            return False
        self.previewer.new_generation()
        url, token = sb_logic.connection(sb_logic.config_values(self.config))
        for name, check in self.checks:
            if check.get_active() and name in self.raw:
                self._show_preview(name, self.raw[name], "instant")
                self._ask_faithful(name, url, token)
        return False

    def _mix_settings(self):
        return float(self.config.get_property("style-strength")), bool(self.config.get_property("preserve-colors"))

    def _ask_faithful(self, name, url, token):
        if self.previewer is None or not self.previewer.faithful_ok:
            return
        settings = sb_desk.faithful_settings(sb_logic.job_settings(
            _dialog_options(self.config, self, _NoFiles()), "all"))
        self.previewer.request_faithful(url, token, name, settings,
                                        lambda pix, why, n=name: self._faithful_ready(n, pix, why))

    def _faithful_ready(self, name, pixbuf, why):
        active = dict(self.checks).get(name)
        if pixbuf is not None and active is not None and active.get_active():
            self._show_preview(name, pixbuf, "faithful")

    def _show_preview(self, name, pixbuf, kind):
        image = self.preview_images.get(name)
        if image is None:
            return
        shown = pixbuf
        if kind == "instant" and self.previewer is not None:
            shown = self.previewer.mixed(pixbuf, *self._mix_settings())
        image.set_from_pixbuf(shown)
        self.shown_kind[name] = kind
        image.set_tooltip_text(f"{name}: " + ("a small real run with these settings (the result will look like "
                                              "this)" if kind == "faithful" else
                                              "a quick impression of the photo in this style; a small real run "
                                              "follows"))

    def _toggled(self, check, name, url, token):
        """The photo in this style appears under its check box as it is ticked (POST /v1/previews)."""
        self._changed()
        image = self.preview_images.get(name)
        if image is None or self.previewer is None:
            return
        if not check.get_active():
            image.hide()
            self.previewer.cancel(name)          # its faithful preview, if still to come, is not wanted now
            return
        self.previewer.request(url, token, name, lambda pix, why, n=name: self._preview_ready(n, pix, why))

    def _preview_ready(self, name, pixbuf, why):
        image = self.preview_images.get(name)
        if image is None:
            return
        if pixbuf is not None:
            self.raw[name] = pixbuf
            self._show_preview(name, pixbuf, "instant")
            url, token = sb_logic.connection(sb_logic.config_values(self.config))
            self._ask_faithful(name, url, token)
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
                                    text=f"Remove {name} from your style library?")
            ask.format_secondary_text("The painting is deleted from the library; layers made with it stay.")
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
