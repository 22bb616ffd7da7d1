#!/usr/bin/env python3
"""Stylebridge for GIMP 3: stylise the current layer into masked layers (Filters > Artistic > Stylebridge...).

The style transfer itself runs in the stylebridge daemon (``stylebridge serve``); this plug-in sends it the
layer (pixels, alpha, offsets) and, when asked, the selection as the job's mask, in ONE job description
(``sb_client.Client.submit_job``), follows the job with GIMP's progress bar, and inserts the returned layer
stack above the layer in one undo group. Standard library + gi only: it runs under GIMP's own Python.

This file is the adapter over Gimp/Gegl/GimpUi (pixels, layers, parasites, dialog, watchdog process); every
decision that needs no GIMP (options -> job, mask choice, protocol check, layer plan, records, progress text)
is in ``sb_logic.py``, tested under the suite's Python. The protocol client is ``sb_client.py``
(docs/protocol.md); PNG for GIMP buffers is ``sb_png.py``. Scripting: docs/gimp.md.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio, GLib, GObject  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sb_client  # noqa: E402
import sb_png  # noqa: E402
import sb_logic  # noqa: E402

PROC_NAME = sb_logic.PROC_NAME
PARASITE_NAME = sb_logic.PARASITE_NAME
UserError = sb_logic.UserError
PROPS = ("styles", "style-files", "preset", "preserve-colors", "style-strength", "mask-mode", "daemon-url", "token",
         "extra-settings")


def config_values(config):
    """The procedure's arguments as a plain dict (property id -> value): all sb_logic needs."""
    return {p: config.get_property(p) for p in PROPS}


# ------------------------------------------------------------------------------------------------
# pixels
# ------------------------------------------------------------------------------------------------

def is_high_precision(image):
    return image.get_precision() not in (Gimp.Precision.U8_LINEAR, Gimp.Precision.U8_NON_LINEAR)


def channel_format(image):
    # Selections and masks hold linear coverage: read as "Y u8", a selection gives the same bytes as the mask
    # GIMP itself makes from it (Add Layer Mask > Selection), feathering included. Masks are written back in
    # the same format, so a mask from the selection is bit-identical to it.
    return "Y u8"


def layer_png(image, layer):
    w, h = layer.get_width(), layer.get_height()
    alpha = layer.has_alpha()
    deep = is_high_precision(image)
    fmt = ("R'G'B'A" if alpha else "R'G'B'") + (" u16" if deep else " u8")
    buf = layer.get_buffer()
    data = buf.get(Gegl.Rectangle.new(0, 0, w, h), 1.0, fmt, Gegl.AbyssPolicy.CLAMP)
    if deep:
        data = sb_png.swap16(data)
    return sb_png.png_encode(w, h, data, 4 if alpha else 3, 16 if deep else 8, level=1)


def selection_mask_png(image, layer):
    """The selection under the layer (layer-sized, outside the image = unselected) as a gray PNG."""
    _, ox, oy = layer.get_offsets()
    w, h = layer.get_width(), layer.get_height()
    sel = image.get_selection().get_buffer()
    data = sel.get(Gegl.Rectangle.new(ox, oy, w, h), 1.0, channel_format(image), Gegl.AbyssPolicy.NONE)
    return sb_png.png_encode(w, h, data, 1, 8, level=6)


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------

def daemon_client(url, token, timeout=60.0):
    """A protocol client that names the plug-in in the daemon's logs."""
    return sb_client.Client(url, token or "", timeout=timeout, user_agent=sb_logic.USER_AGENT)


def start_watchdog(client, job_id):
    """A separate process that cancels the job if this plug-in dies (GIMP kills a plug-in whose
    progress the user cancels). Returns the pipe's write end, or None."""
    try:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env[sb_client.URL_ENV] = client.url
        env.pop(sb_client.TOKEN_ENV, None)
        if client.token:
            env[sb_client.TOKEN_ENV] = client.token
        python = sys.executable or shutil.which("python3") or "python3"
        subprocess.Popen([python, os.path.abspath(sb_client.__file__), "cancel-on-eof", str(job_id)],
                         stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         close_fds=True, start_new_session=True, env=env)
        os.close(read_fd)
        return write_fd
    except OSError:
        return None


def stop_watchdog(fd, done=True):
    if fd is None:
        return
    try:
        if done:
            os.write(fd, b"done\n")
        os.close(fd)
    except OSError:
        pass


def check_daemon(client):
    """The daemon's health; sb_client.DaemonTooOld (nothing sent) when its protocol is too old for this plug-in;
    a newer daemon (this installed plug-in is stale) is said once, and the run goes on."""
    health = client.health(timeout=10)
    error, warning = sb_logic.protocol_check(health, client.url)
    if error:
        raise sb_client.DaemonTooOld(client.url, sb_logic.daemon_protocol(health))
    if warning:
        Gimp.message(warning)
    return health


PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))


class DaemonStarter:
    """Starts ``stylebridge serve`` for a loopback URL with the command ``stylebridge gimp-install`` recorded
    (sb_install.json beside this file), and follows it until ``/v1/health`` answers."""

    def __init__(self, url, token):
        self.url, self.token = url, token
        self.command = sb_logic.serve_command(sb_logic.read_install(PLUGIN_DIR), url)
        self.proc = None
        self.log_path = None
        self.started = None

    def start(self):
        """Spawn the daemon (it outlives GIMP). Returns None, or the message saying what to do instead."""
        if self.command is None:
            return sb_logic.start_failed_message(self.url, None)
        port = self.command[-1]
        self.log_path = os.path.join(tempfile.gettempdir(), f"stylebridge-serve-{port}.log")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}   # GIMP's, not ours
        if self.token:
            env[sb_client.TOKEN_ENV] = self.token
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, close_fds=True, start_new_session=True,
                                             env=env, cwd=os.path.expanduser("~"))
        except OSError as exc:
            try:
                if os.path.getsize(self.log_path) == 0:
                    os.unlink(self.log_path)
            except OSError:
                pass
            return sb_logic.start_failed_message(self.url, self.command, exc.strerror or str(exc))
        self.started = time.monotonic()
        return None

    def poll(self):
        """"up" once the daemon answers, None while starting, else the message for the user."""
        try:
            daemon_client(self.url, self.token, timeout=2).health(timeout=2)
            return "up"
        except sb_client.DaemonUnreachable:
            pass
        except sb_client.ClientError:
            return "up"             # it answers (an error status is the caller's to report)
        code = self.proc.poll() if self.proc is not None else None
        if code not in (None, 0):
            return sb_logic.start_failed_message(self.url, self.command,
                                                 f"it exited with status {code}; {self._log_tail()}")
        if time.monotonic() - self.started > sb_logic.START_TIMEOUT_S:
            return sb_logic.start_failed_message(self.url, self.command,
                                                 f"no answer after {sb_logic.START_TIMEOUT_S:.0f} s; its log: "
                                                 f"{self.log_path}")
        return None

    def _log_tail(self):
        try:
            with open(self.log_path, "rb") as fh:
                lines = fh.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
            return f"its log ({self.log_path}) ends: {lines[-1]}" if lines else f"its log: {self.log_path}"
        except OSError:
            return f"its log: {self.log_path}"


def ensure_daemon(client):
    """The daemon's health (check_daemon); when nothing answers on this machine, start one and wait for it, with
    GIMP's progress text saying so. DaemonNotStarted says what to do when that is not possible."""
    try:
        return check_daemon(client)
    except sb_client.DaemonUnreachable:
        pass
    starter = DaemonStarter(client.url, client.token)
    error = starter.start()
    if error:
        raise sb_logic.DaemonNotStarted(error)
    Gimp.progress_set_text(sb_logic.START_TEXT)
    while True:
        state = starter.poll()
        if state == "up":
            return check_daemon(client)
        if state:
            raise sb_logic.DaemonNotStarted(state)
        Gimp.progress_pulse()
        time.sleep(0.5)


class TempPreview:
    """The temporary layer above the source that shows the job's current result while it runs.

    Every change to it happens with the image's undo frozen (so it is never in the undo history), and undo is
    thawed again at once: GIMP kills a plug-in whose progress is cancelled, and a kill between changes must not
    leave the image's undo frozen. The layer goes before the final layers come in, and on cancel or error; after
    a kill it cannot, so it carries a parasite and the next run removes such leftovers (remove_leftover_previews).
    """

    def __init__(self, image, source, job_id):
        self.image, self.source, self.job_id = image, source, job_id
        self.layer = None
        self.last = None
        self.fetched = None
        self.shown = 0
        self.hook = os.environ.get("STYLEBRIDGE_GIMP_PREVIEW_TEST")       # tests only: a JSON line per update

    def update(self, client, status):
        now = time.monotonic()
        if not sb_logic.preview_due(status, self.fetched, now):
            return
        self.fetched = now
        try:
            data = client.preview(self.job_id)
        except sb_client.ClientError:
            return                                  # a preview is decoration; the job goes on
        if data and data != self.last:
            self.last = data
            self.show(data)

    def show(self, png):
        fd, path = tempfile.mkstemp(prefix="stylebridge-preview-", suffix=".png")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(png)
            self.image.undo_freeze()
            try:
                undo_while_changing = self.image.undo_is_enabled()
                new = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, self.image, Gio.File.new_for_path(path))
                self.image.insert_layer(new, self.source.get_parent(), self.image.get_item_position(self.source))
                w, h = self.source.get_width(), self.source.get_height()
                if (new.get_width(), new.get_height()) != (w, h):
                    new.scale(w, h, False)
                _, ox, oy = self.source.get_offsets()
                new.set_offsets(ox, oy)
                new.attach_parasite(make_parasite(sb_logic.preview_record(self.job_id)))
                old, self.layer = self.layer, new
                if old is not None and old.is_valid():
                    self.image.remove_layer(old)
                new.set_name(sb_logic.PREVIEW_LAYER_NAME)       # after the old one went (GIMP would add " #1")
            finally:
                self.image.undo_thaw()
        finally:
            os.unlink(path)
        self.shown += 1
        Gimp.displays_flush()
        if self.hook:
            new = self.layer
            with open(self.hook, "a") as fh:
                fh.write(json.dumps({"name": new.get_name(), "size": [new.get_width(), new.get_height()],
                                     "offsets": list(new.get_offsets())[1:],
                                     "above_source": self.image.get_item_position(new) + 1
                                     == self.image.get_item_position(self.source),
                                     "undo_while_changing": undo_while_changing,
                                     "undo_after": self.image.undo_is_enabled(),
                                     "layers": [lay.get_name() for lay in self.image.get_layers()]}) + "\n")

    def remove(self):
        layer, self.layer = self.layer, None
        if layer is not None and layer.is_valid():
            self.image.undo_freeze()
            try:
                self.image.remove_layer(layer)
            finally:
                self.image.undo_thaw()
            Gimp.displays_flush()


def speeds_path():
    return os.path.join(Gimp.directory(), sb_logic.SPEED_FILE)


def remember_speed(opts, result, health):
    """Fold this run's measured speed into the per-daemon speeds (for the dialog's time estimate)."""
    try:
        styles = len(opts.styles) + len(opts.style_files)
        store = sb_logic.read_speeds(speeds_path())
        sb_logic.write_speeds(speeds_path(), sb_logic.record_speed(store, opts.daemon_url, health.get("device"),
                                                                   result, styles))
    except OSError:
        pass                    # an estimate is a convenience


def remove_leftover_previews(image):
    """Temporary preview layers left by a run GIMP killed (progress cancelled): removed, outside the undo history.
    Should the kill have come while undo was frozen for a preview change, undo is thawed again."""
    leftovers = []

    def walk(items):
        for item in items:
            parasite = item.get_parasite(PARASITE_NAME)
            if parasite is not None and sb_logic.is_preview_record(sb_logic.read_record(bytes(parasite.get_data()))):
                leftovers.append(item)
            elif item.is_group():
                walk(item.get_children())

    walk(image.get_layers())
    if leftovers:
        if not image.undo_is_enabled():
            image.undo_thaw()
        image.undo_freeze()
        try:
            for item in leftovers:
                image.remove_layer(item)
        finally:
            image.undo_thaw()
    return len(leftovers)


def stylize(image, layer, opts):
    """Send the layer as one job description, follow the job, download the layer stack. Changes nothing in the
    image. Returns (result_json, {layer_index: (image_path, mask_path)}, tmpdir, job_id, mask_used, health)."""
    client = daemon_client(opts.daemon_url, opts.token)
    Gimp.progress_init("Stylebridge: sending the layer")
    health = ensure_daemon(client)
    Gimp.progress_set_text("Stylebridge: sending the layer")

    job, used = sb_logic.job_description(opts, has_selection=not Gimp.Selection.is_empty(image))
    mask = selection_mask_png(image, layer) if "mask" in job else None
    style_files = []
    for path in opts.style_files:
        try:
            with open(path, "rb") as fh:
                style_files.append((os.path.basename(path), fh.read()))
        except OSError as exc:
            raise UserError(f"Stylebridge: cannot read style image {path}: {exc.strerror}") from None

    content = layer_png(image, layer)
    answer = client.submit_job(("layer.png", content), job, style_files=style_files, mask=mask)
    job_id = answer["id"]
    for note in answer.get("notes") or ():
        Gimp.message(f"Stylebridge: {note}")
    watchdog = start_watchdog(client, job_id)
    finished = False
    tmpdir = None
    line = sb_logic.ProgressLine()
    preview = TempPreview(image, layer, job_id)

    def on_progress(status):
        text, fraction = line.update(status)
        if text is not None:
            Gimp.progress_set_text(text)
        if fraction is None:
            Gimp.progress_pulse()
        else:
            Gimp.progress_update(fraction)
        preview.update(client, status)
        return True

    try:
        client.wait(job_id, on_progress=on_progress, poll=sb_logic.POLL_S)
        Gimp.progress_set_text("Stylebridge: fetching the layers")
        result = client.result(job_id)
        tmpdir = tempfile.mkdtemp(prefix="stylebridge-")
        files = {}
        steps, _ = sb_logic.layer_plan(result)
        for step in steps:
            paths = [None, None]
            for k, url in enumerate((step.image_url, step.mask_url)):
                if url:
                    path = os.path.join(tmpdir, f"{step.index}-{('image', 'mask')[k]}.png")
                    with open(path, "wb") as fh:
                        fh.write(client.get_bytes(url))
                    paths[k] = path
            files[step.index] = tuple(paths)
        finished = True
        try:
            client.delete(job_id)           # the layers are here now; free the daemon's memory
        except sb_client.DaemonError:
            pass                            # best effort
    except BaseException:
        if not finished:
            try:
                client.cancel(job_id)
            except sb_client.ClientError:
                pass
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    finally:
        preview.remove()                    # before the final layers, and on cancel or error
        stop_watchdog(watchdog, done=True)
        Gimp.progress_update(1.0)
    return result, files, tmpdir, job_id, used, health


def load_gray(path):
    """A gray PNG's 8-bit values, read with GIMP's own loader (fast; any PNG depth)."""
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))
    try:
        lay = img.get_layers()[0]
        w, h = lay.get_width(), lay.get_height()
        buf = lay.get_buffer()
        return w, h, buf.get(Gegl.Rectangle.new(0, 0, w, h), 1.0, "Y' u8", Gegl.AbyssPolicy.CLAMP)
    finally:
        img.delete()


def apply_mask(image, item, mask_path):
    w, h, data = load_gray(mask_path)
    mask = item.create_mask(Gimp.AddMaskType.WHITE)
    item.add_mask(mask)
    if (w, h) != (item.get_width(), item.get_height()):
        raise RuntimeError(f"mask of {item.get_name()} is {w}x{h}, layer is {item.get_width()}x{item.get_height()}")
    # Straight into the new mask's buffer: merge_shadow() would clip the write to the current selection.
    buf = mask.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, w, h), channel_format(image), data)
    buf.flush()
    mask.update(0, 0, w, h)


def make_parasite(record):
    data = sb_logic.record_bytes(record)
    return Gimp.Parasite.new(PARASITE_NAME, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(data))


def insert_stack(image, layer, opts, result, files, job_id, used, inserted):
    """Insert the daemon's layer stack (sb_logic.layer_plan) above ``layer`` (caller holds the undo group).

    New items are appended to ``inserted`` as they go in (so a caller can take them out on failure).
    Returns a list of warnings.
    """
    parent = layer.get_parent()
    position = image.get_item_position(layer)
    _, ox, oy = layer.get_offsets()
    image_type = Gimp.ImageType.GRAYA_IMAGE if image.get_base_type() == Gimp.ImageBaseType.GRAY \
        else Gimp.ImageType.RGBA_IMAGE
    steps, warnings = sb_logic.layer_plan(result)
    base = sb_logic.base_record(opts, result, job_id, used)
    created = {}
    for step in steps:
        if step.group:
            new = Gimp.GroupLayer.new(image, step.name)
        else:
            image_path = files.get(step.index, (None, None))[0]
            if image_path:
                new = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(image_path))
                new.set_name(step.name)
            else:
                new = Gimp.Layer.new(image, step.name, step.width or layer.get_width(),
                                     step.height or layer.get_height(), image_type, 100, Gimp.LayerMode.NORMAL)
                new.fill(Gimp.FillType.TRANSPARENT)
        if step.parent is not None and step.parent in created:
            image.insert_layer(new, created[step.parent], 0)        # bottom to top: each on top of the group
        else:
            image.insert_layer(new, parent, position)               # bottom to top at a fixed index
        inserted.append(new)
        created[step.index] = new
        if not new.is_group():
            if not new.has_alpha():
                new.add_alpha()
            new.set_offsets(ox + step.left, oy + step.top)
        new.set_mode(getattr(Gimp.LayerMode, step.mode))
        new.set_opacity(step.opacity)
        new.set_visible(step.visible)
        mask_path = files.get(step.index, (None, None))[1]
        if mask_path:
            apply_mask(image, new, mask_path)
        new.attach_parasite(make_parasite(sb_logic.layer_record(base, step)))
    return warnings


# ------------------------------------------------------------------------------------------------
# dialog
# ------------------------------------------------------------------------------------------------

def settings_from_layer(layer):
    """A previous run's record if ``layer`` came out of Stylebridge (to repeat it), else None."""
    try:
        parasite = layer.get_parasite(PARASITE_NAME)
    except Exception:  # noqa: BLE001
        return None
    return sb_logic.read_record(bytes(parasite.get_data())) if parasite is not None else None


def prefill_config(config, record):
    for prop, value in sb_logic.config_from_record(record).items():
        config.set_property(prop, value)


def show_dialog(procedure, config, layer):
    """The GimpUi dialog: the daemon's library as check boxes, style files, quality, colours, strength, mask;
    the connection (URL, token) in its own expander. Returns True on OK."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk

    GimpUi.init(PROC_NAME)
    record = settings_from_layer(layer)
    if record:
        prefill_config(config, record)

    dialog = GimpUi.ProcedureDialog(procedure=procedure, config=config, title="Stylebridge")
    panel = LibraryPanel(dialog, config, set(sb_logic.split_list(config.get_property("styles"), ",")), layer)

    files = FileList(dialog, config)

    slider = None
    try:    # the slider spans the 0..1 knob; a typed value above 1 (the old meaning) is still accepted
        dialog.get_spin_scale("style-strength", 1.0).set_scale_limits(*sb_logic.STRENGTH_KNOB)
        slider = list(sb_logic.STRENGTH_KNOB)
    except Exception:  # noqa: BLE001 - cosmetic
        pass
    dialog.fill(["preset", "preserve-colors", "style-strength", "mask-mode"])

    # the connection, apart from the main form
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
    speeds = sb_logic.read_speeds(speeds_path())

    def update_estimate(*_args):
        """The time the chosen quality takes on this daemon's device, from its measured speed."""
        if panel.health is None:
            estimate.set_text("")
            return
        try:
            extra = sb_logic.parse_extra(config.get_property("extra-settings"))
        except sb_logic.UserError:
            extra = {}
        chosen = panel.chosen()
        files_ = files.paths()
        opts = sb_logic.Options(styles=chosen, style_files=files_,
                                quality=sb_logic.quality_choice(config.get_property("preset")), extra_settings=extra)
        url = sb_logic.connection(config_values(config))[0]
        device = panel.health.get("device")
        count = len(chosen) + len(files_)
        seconds = sb_logic.estimate_seconds(speeds, url, device, opts, panel.health.get("preset"),
                                            (layer.get_width(), layer.get_height()), count)
        estimate.set_text(sb_logic.estimate_text(seconds, device, count))

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
    if test_hook:
        GLib.timeout_add(1000, _dialog_test_hook, dialog, config, panel, files, test_hook, slider)

    while True:
        ok = dialog.run()
        if not ok:
            panel.close()
            dialog.destroy()
            return False
        if panel.checks:
            config.set_property("styles", ",".join(panel.chosen()))
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
        url, token = sb_logic.connection(config_values(self.config))
        self.state = "loading"
        self._set_ok(False)
        client = daemon_client(url, token, timeout=10)
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
            starter = DaemonStarter(url, token)
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
        url, token = sb_logic.connection(config_values(self.config))
        return daemon_client(url, token, timeout=60)

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
    hands each to the GTK main loop; results are cached per daemon and style."""

    def __init__(self, layer):
        import queue
        import threading

        self.layer = layer
        self.content = None             # the layer as a small PNG, made on first use (GIMP calls: main thread)
        self.cache = {}                 # (url, style) -> (pixbuf or None, error text, info)
        self.info = {}                  # style -> {"width", "height", "method", "seconds"} (test hook)
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

    def request(self, url, token, style, done):
        key = sb_logic.preview_key(url, style)
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
        self.queue.put((url, token, style, content, done))

    def stop(self):
        self.queue.put(None)

    def _work(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            url, token, style, content, done = item
            data, why, info = None, None, {}
            for attempt in range(20):
                try:
                    got = daemon_client(url, token, timeout=120).previews(
                        ("layer.png", content), styles=[style], size=sb_logic.PREVIEW_SIZE)
                    if got:
                        data = got[0]["png"]
                        info = {k: got[0].get(k) for k in ("width", "height", "method", "seconds")}
                    else:
                        why = "the daemon sent none"
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
            GLib.idle_add(self._deliver, url, style, data, why, info, done)

    def _deliver(self, url, style, data, why, info, done):
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
        key = sb_logic.preview_key(url, style)
        self.waiting.discard(key)
        self.cache[key] = (pix, why, info)
        if pix is not None:
            self.info[style] = dict(info, shown=[pix.get_width(), pix.get_height()])
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
    file and the desktop's file chooser to add several at once. Kept in the ``style-files`` argument."""

    def __init__(self, dialog, config):
        from gi.repository import Gtk

        self.Gtk, self.dialog, self.config = Gtk, dialog, config
        self.on_change = None
        self.frame = Gtk.Frame(label="Style images from files (sent with the job)")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        box.set_border_width(6)
        self.frame.add(box)
        self.list = Gtk.ListBox()
        self.list.set_selection_mode(Gtk.SelectionMode.NONE)
        box.pack_start(self.list, False, False, 0)
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

    def refresh(self):
        Gtk = self.Gtk
        for child in self.list.get_children():
            self.list.remove(child)
        for path in self.paths():
            row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
            label = Gtk.Label(label=os.path.basename(path))
            label.set_tooltip_text(path)
            label.set_xalign(0.0)
            label.set_ellipsize(3)          # Pango.EllipsizeMode.END
            remove = Gtk.Button.new_from_icon_name("list-remove", Gtk.IconSize.MENU)
            remove.set_relief(Gtk.ReliefStyle.NONE)
            remove.set_tooltip_text(f"Do not use {os.path.basename(path)}")
            remove.connect("clicked", lambda _b, p=path: self.remove(p))
            row.pack_start(label, True, True, 0)
            row.pack_start(remove, False, False, 0)
            self.list.add(row)
        self.list.set_visible(bool(self.paths()))
        self.list.show_all()
        if not self.paths():
            self.list.hide()
        if self.on_change is not None:
            self.on_change()


def _dialog_test_hook(dialog, config, panel, files, path, slider=None):
    """For the automated tests only (STYLEBRIDGE_GIMP_DIALOG_TEST=PATH): append a description of the dialog as
    shown (one JSON line per look) to PATH, with a screenshot PATH.N.png, then act: the N-th word of
    STYLEBRIDGE_GIMP_DIALOG_TEST_RESPONSES (default "ok"): "ok" ticks every library style and presses OK,
    "cancel" cancels, "tick" ticks every library style and looks again once their previews are in, "seturl"
    types $STYLEBRIDGE_GIMP_DIALOG_TEST_URL as the daemon URL, "addlib" adds the
    files in $STYLEBRIDGE_GIMP_DIALOG_TEST_FILES (';'-separated) to the library, "remove" removes the first library
    style, "addfiles" adds those files to the job's style files; after each of these it looks again once the
    library has reloaded (the next word answers that look)."""
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
    props = [p for p in PROPS if p != "token"]
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
            "config": {p: config.get_property(p) for p in props}}
    try:
        scale = dialog.get_widget("style-strength", GObject.TYPE_NONE)
        adj = scale.get_adjustment()
        info["strength_widget"] = {"range": [adj.get_lower(), adj.get_upper()], "slider": slider,
                                   "value": adj.get_value()}
    except Exception as exc:  # noqa: BLE001
        info["strength_widget"] = str(exc)
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
            url = sb_logic.connection(config_values(config))[0]
            if any(sb_logic.preview_key(url, n) not in panel.previewer.cache for n in names) \
                    and time.monotonic() - started < 120:
                return True
            GLib.timeout_add(300, _dialog_test_hook, dialog, config, panel, files, path, slider)
            return False

        GLib.timeout_add(200, previews_in)
    elif response in ("seturl", "addlib", "remove", "addfiles"):
        loads = panel.loads
        if response == "seturl":
            config.set_property("daemon-url", os.environ.get("STYLEBRIDGE_GIMP_DIALOG_TEST_URL", ""))
        elif response == "addlib":
            panel.add_to_library(test_files)
        elif response == "remove":
            panel.remove_style(panel.checks[0][0], confirm=False)
        else:
            files.add(test_files)
            panel.loads += 1                 # nothing to reload: look again now

        def again():
            if panel.loads == loads:
                return True
            GLib.timeout_add(300, _dialog_test_hook, dialog, config, panel, files, path, slider)
            return False

        GLib.timeout_add(100, again)
    elif response == "ok":
        for _, check in panel.checks:
            check.set_active(True)
        dialog.response(Gtk.ResponseType.OK)
    else:
        dialog.response(Gtk.ResponseType.CANCEL)
    return False


def _thumbnail(url, token, thumb_url):
    if not thumb_url:
        return None
    try:
        from gi.repository import GdkPixbuf
        data = daemon_client(url, token, timeout=5).get_bytes(thumb_url)
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


# ------------------------------------------------------------------------------------------------
# procedure
# ------------------------------------------------------------------------------------------------

def _error(procedure, status, message):
    return procedure.new_return_values(status, GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0))


def run(procedure, run_mode, image, drawables, config, data):
    if len(drawables) != 1 or not isinstance(drawables[0], Gimp.Layer) or drawables[0].is_group():
        msg = "Stylebridge works on one pixel layer: select a single layer (not a group or a mask)."
        Gimp.message(msg)
        return _error(procedure, Gimp.PDBStatusType.CALLING_ERROR, msg)
    layer = drawables[0]

    if run_mode == Gimp.RunMode.INTERACTIVE:
        if not show_dialog(procedure, config, layer):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    tmpdir = None
    try:
        if remove_leftover_previews(image):
            Gimp.displays_flush()
        opts = sb_logic.read_options(config_values(config))
        result, files, tmpdir, job_id, used, health = stylize(image, layer, opts)
        remember_speed(opts, result, health)
        image.undo_group_start()
        inserted = []
        try:
            warnings = insert_stack(image, layer, opts, result, files, job_id, used, inserted)
        except BaseException:
            for item in reversed(inserted):
                try:
                    if item.is_valid() and item.get_parent() is None:
                        image.remove_layer(item)
                except Exception:  # noqa: BLE001
                    pass
            raise
        finally:
            image.undo_group_end()
        for w in warnings:
            Gimp.message("Stylebridge: " + w)
        Gimp.displays_flush()
    except UserError as exc:
        Gimp.message(str(exc))
        return _error(procedure, Gimp.PDBStatusType.CALLING_ERROR, str(exc))
    except (sb_client.DaemonUnreachable, sb_client.DaemonTooOld, sb_logic.DaemonNotStarted) as exc:
        Gimp.message(str(exc))
        return _error(procedure, Gimp.PDBStatusType.EXECUTION_ERROR, str(exc))
    except sb_client.JobCancelled:
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    except sb_client.ClientError as exc:
        msg = f"Stylebridge daemon: {exc}"
        Gimp.message(msg)
        return _error(procedure, Gimp.PDBStatusType.EXECUTION_ERROR, msg)
    except Exception as exc:  # noqa: BLE001 - report, never crash GIMP's wire
        msg = f"Stylebridge failed: {type(exc).__name__}: {exc}"
        Gimp.message(msg)
        return _error(procedure, Gimp.PDBStatusType.EXECUTION_ERROR, msg)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        Gimp.progress_end()
    return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


class Stylebridge(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False

    def do_query_procedures(self):
        return [PROC_NAME]

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label("Stylebridge...")
        procedure.add_menu_path("<Image>/Filters/Artistic")
        procedure.set_documentation(
            "Neural style transfer of the current layer into masked layers",
            "Sends the current layer (and the selection as a mask) to the stylebridge daemon "
            "(start it with: stylebridge serve) and inserts above it, in one undo step, a group with one "
            "masked layer per style plus detail, original-colours and refine layers.",
            name)
        procedure.set_attribution("stylebridge", "stylebridge", "2026")

        flags = GObject.ParamFlags.READWRITE
        procedure.add_string_argument("styles", "Library st_yles", "Comma-separated names from the daemon's "
                                      "style library", "", flags)
        procedure.add_string_argument("style-files", "Style _image files", "Style image files, separated by ';'",
                                      "", flags)
        presets = Gimp.Choice.new()
        for i, (key, label) in enumerate(sb_logic.QUALITY_CHOICES):
            presets.add(key, i, label, "")
        procedure.add_choice_argument("preset", "_Quality", "Quality preset (size and iterations); 'daemon': the "
                                      "daemon's own (stylebridge serve --preset)", presets,
                                      sb_logic.QUALITY_DEFAULT, flags)
        # id kept for saved settings and scripts; the job calls it original_colors, as everywhere
        procedure.add_boolean_argument("preserve-colors", "Ori_ginal colours",
                                       "Keep the photo's colours (transfer luminance only): original_colors",
                                       sb_logic.ORIGINAL_COLORS_DEFAULT, flags)
        procedure.add_double_argument("style-strength", "Style stre_ngth",
                                      "0 = the photo, 0.5 = half way, 1 = fully painted (above 1: the old extra "
                                      "style weight)", sb_logic.STRENGTH_MIN, sb_logic.STRENGTH_MAX,
                                      sb_logic.STRENGTH_DEFAULT, flags)
        masks = Gimp.Choice.new()
        for i, (key, label) in enumerate(sb_logic.MASK_CHOICES):
            masks.add(key, i, label, "")
        procedure.add_choice_argument("mask-mode", "_Mask", "Masks of the style layers: first | all | none | "
                                      "selection (the selection is every style's mask)", masks,
                                      sb_logic.MASK_DEFAULT, flags)
        procedure.add_string_argument("daemon-url", "_Daemon URL", "Where stylebridge serve listens",
                                      sb_client.DEFAULT_URL, flags)
        procedure.add_string_argument("token", "_Token", "The daemon's token, if it has one (else "
                                      f"${sb_client.TOKEN_ENV})", "", flags)
        procedure.add_string_argument("extra-settings", "E_xtra settings", "JSON object of further engine "
                                      "settings, e.g. {\"size\": 384, \"iterations\": 100}", "", flags)
        return procedure


if __name__ == "__main__":
    Gimp.main(Stylebridge.__gtype__, sys.argv)
