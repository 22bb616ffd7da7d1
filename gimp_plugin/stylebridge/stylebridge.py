#!/usr/bin/env python3
"""Stylebridge for GIMP 3: stylise the current layer into masked layers (Filters > Artistic > Stylebridge...).

The style transfer itself runs in the stylebridge daemon (``stylebridge serve``); this plug-in sends it the
layer (pixels, alpha, offsets) and, when asked, the selection as the job's mask, in ONE job description
(``sb_client.Client.submit_job``), follows the job (its own progress window with Cancel in an interactive run,
``sb_progress.py``; GIMP's progress bar in a script), and inserts the returned layer
stack above the layer in one undo group. Standard library + gi only: it runs under GIMP's own Python.

This file is the adapter over Gimp/Gegl (pixels, layers, parasites, progress, the watchdog process); the dialog
is ``sb_dialog.py``; every decision that needs no GIMP (options -> job, mask choice, protocol check, starting a
daemon, layer plan, records, progress text, time estimate) is in ``sb_logic.py``, tested under the suite's
Python. The protocol client is ``sb_client.py``
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
import sb_desk  # noqa: E402
import sb_png  # noqa: E402
import sb_logic  # noqa: E402
import sb_progress  # noqa: E402
from sb_layers import (channel_format, insert_stack, make_parasite, read_regions, resolve_target,  # noqa: E402
                       stack_place)

PROC_NAME = sb_logic.PROC_NAME
PARASITE_NAME = sb_logic.PARASITE_NAME
UserError = sb_logic.UserError
PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
# ------------------------------------------------------------------------------------------------
# pixels
# ------------------------------------------------------------------------------------------------

def is_high_precision(image):
    return image.get_precision() not in (Gimp.Precision.U8_LINEAR, Gimp.Precision.U8_NON_LINEAR)


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
        watchdog = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sb_watchdog.py")
        subprocess.Popen([python, watchdog, "cancel-on-eof", str(job_id)],
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


def ensure_daemon(client, progress):
    """The daemon's health (check_daemon); when nothing answers on this machine, start one and wait for it, with
    the progress text saying so. DaemonNotStarted says what to do when that is not possible; JobCancelled when
    the artist cancels the wait."""
    try:
        return check_daemon(client)
    except sb_client.DaemonUnreachable:
        pass
    starter = sb_logic.DaemonStarter(client.url, client.token, PLUGIN_DIR)
    error = starter.start()
    if error:
        raise sb_logic.DaemonNotStarted(error)
    progress.text(sb_logic.START_TEXT)
    while True:
        if progress.cancelled:
            raise sb_client.JobCancelled({}, "cancelled while the daemon was starting")
        state = starter.poll()
        if state == "up":
            return check_daemon(client)
        if state:
            raise sb_logic.DaemonNotStarted(state)
        progress.pulse()
        progress.sleep(0.5)


class TempPreview:
    """The temporary layer above the source that shows the job's current result while it runs.

    Every change to it happens with the image's undo frozen (so it is never in the undo history), and undo is
    thawed again at once: GIMP kills a plug-in whose progress is cancelled, and a kill between changes must not
    leave the image's undo frozen. The layer goes before the final layers come in, and on cancel or error; after
    a kill it cannot, so it carries a parasite and the next run removes such leftovers (remove_leftover_previews).
    """

    def __init__(self, image, source, job_id, place=None):
        self.image, self.source, self.job_id = image, source, job_id
        self.place = place or (lambda: (source.get_parent(), image.get_item_position(source)))
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
                self.image.insert_layer(new, *self.place())     # above the photo and every earlier result
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
                                     "above_source": self.image.get_item_position(new)
                                     < self.image.get_item_position(self.source),
                                     "position": self.image.get_item_position(new),
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


def read_style_files(paths):
    """(file name, bytes) of each style image file, or UserError naming the one that cannot be read."""
    style_files = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                style_files.append((os.path.basename(path), fh.read()))
        except OSError as exc:
            raise UserError(f"Stylebridge: cannot read style image {path}: {exc.strerror}") from None
    return style_files


def download_layers(client, result, tmpdir, progress, job_id):
    """{layer_index: (image_path, mask_path)} of the result's layers, written into ``tmpdir``; a Cancel clicked
    while they come raises JobCancelled (nothing goes into the image)."""
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
        if progress.cancelled:
            raise sb_client.JobCancelled({"id": job_id}, "cancelled")
    return files


def stylize(image, layer, opts, progress):
    """Send the layer as one job description, follow the job, download the layer stack. Changes nothing in the
    image (the temporary preview layer comes and goes outside the undo history). Returns (result_json,
    {layer_index: (image_path, mask_path)}, tmpdir, job_id, mask_used, health). ``progress``: an sb_progress
    sink; its Cancel cancels the job (JobCancelled) with the preview layer removed."""
    client = sb_logic.daemon_client(opts.daemon_url, opts.token)
    progress.start("Sending the photo to the stylebridge service...")
    health = ensure_daemon(client, progress)
    progress.text("Sending the photo to the stylebridge service...")

    found, masks, covered = read_regions(image, layer, opts)
    regions = sb_logic.usable_regions(sb_logic.style_names(opts), found, covered)
    job, used = sb_logic.job_description(opts, has_selection=not Gimp.Selection.is_empty(image), regions=regions)
    mask = selection_mask_png(image, layer) if "mask" in job else None
    w, h = layer.get_width(), layer.get_height()
    region_files = [(f"region{i + 1}.png", sb_png.png_encode(w, h, masks[style], 1, 8, level=6))
                    for i, style in enumerate(regions)]
    content = layer_png(image, layer)
    answer = client.submit_job(("layer.png", content), job, style_files=read_style_files(opts.style_files),
                               mask=mask, region_files=region_files)
    job_id = answer["id"]
    for note in answer.get("notes") or ():
        Gimp.message(f"Stylebridge: {note}")
    watchdog = start_watchdog(client, job_id)
    finished = False
    tmpdir = None
    line = sb_logic.ProgressLine()
    preview = TempPreview(image, layer, job_id, place=lambda: stack_place(image, layer))

    def on_progress(status):
        if progress.cancelled:
            preview.remove()                # at once: the daemon may need a step to stop
            return False
        text, fraction = line.update(status)
        if text is not None:
            progress.text(text)
        if fraction is None:
            progress.pulse()
        else:
            progress.fraction(fraction)
        preview.update(client, status)
        progress.look(preview_layers=preview.shown, job_id=job_id)
        return not progress.cancelled

    try:
        client.wait(job_id, on_progress=on_progress, poll=sb_logic.POLL_S, sleep=progress.sleep)
        progress.text("Bringing the layers into GIMP...")
        result = client.result(job_id)
        tmpdir = tempfile.mkdtemp(prefix="stylebridge-")
        files = download_layers(client, result, tmpdir, progress, job_id)
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
        progress.fraction(1.0)
    return result, files, tmpdir, job_id, used, health


# ------------------------------------------------------------------------------------------------
# procedure
# ------------------------------------------------------------------------------------------------

def _clean_again(image, was_dirty):
    """A run that changed nothing (cancelled, failed) leaves an image that was clean marked clean again: the
    temporary preview layer came and went outside the undo history, yet GIMP counted it as a change."""
    try:
        if not was_dirty and image.is_valid() and image.is_dirty():
            image.clean_all()
    except Exception:  # noqa: BLE001 - cosmetic
        pass


def _error(procedure, status, message):
    return procedure.new_return_values(status, GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0))


def run(procedure, run_mode, image, drawables, config, data):
    try:
        layer, why, chosen, group = resolve_target(image, drawables)
    except UserError as exc:
        Gimp.message(str(exc))
        return _error(procedure, Gimp.PDBStatusType.CALLING_ERROR, str(exc))
    was_dirty = image.is_dirty()

    if run_mode == Gimp.RunMode.INTERACTIVE:
        import sb_dialog
        if not sb_dialog.show_dialog(procedure, config, layer, target=(why, group is not None, chosen)):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())

    tmpdir = None
    progress = None
    try:
        if remove_leftover_previews(image):
            Gimp.displays_flush()
        opts = sb_logic.read_options(sb_logic.config_values(config))
        # an interactive run gets a window whose Cancel the plug-in hears (GIMP's own Cancel kills it)
        progress = sb_progress.progress_for(run_mode == Gimp.RunMode.INTERACTIVE)
        result, files, tmpdir, job_id, used, health = stylize(image, layer, opts, progress)
        image.undo_group_start()
        inserted = []
        try:
            warnings = insert_stack(image, layer, opts, result, files, job_id, used, inserted, group)
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
        _clean_again(image, was_dirty)
        Gimp.message(str(exc))
        return _error(procedure, Gimp.PDBStatusType.CALLING_ERROR, str(exc))
    except (sb_client.DaemonUnreachable, sb_client.DaemonTooOld, sb_logic.DaemonNotStarted) as exc:
        _clean_again(image, was_dirty)
        Gimp.message(str(exc))
        return _error(procedure, Gimp.PDBStatusType.EXECUTION_ERROR, str(exc))
    except sb_client.JobCancelled:
        _clean_again(image, was_dirty)
        return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
    except sb_client.ClientError as exc:
        _clean_again(image, was_dirty)
        msg = f"Stylebridge daemon: {exc}"
        Gimp.message(msg)
        return _error(procedure, Gimp.PDBStatusType.EXECUTION_ERROR, msg)
    except Exception as exc:  # noqa: BLE001 - report, never crash GIMP's wire
        _clean_again(image, was_dirty)
        msg = f"Stylebridge failed: {type(exc).__name__}: {exc}"
        Gimp.message(msg)
        return _error(procedure, Gimp.PDBStatusType.EXECUTION_ERROR, msg)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if progress is not None:
            progress.end()
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
        procedure.add_choice_argument("preset", "_Quality", "Quality preset (size and iterations; print: the photo's "
                                      "own size); 'daemon': the daemon's own (stylebridge serve --preset)", presets,
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
        procedure.add_string_argument("daemon-url", "Service _URL", "Where the stylebridge service (stylebridge "
                                      "serve) listens",
                                      sb_client.DEFAULT_URL, flags)
        procedure.add_string_argument("token", "_Token", "The daemon's token, if it has one (else "
                                      f"${sb_client.TOKEN_ENV})", "", flags)
        procedure.add_string_argument("extra-settings", "E_xtra settings", "JSON object of further engine "
                                      "settings, e.g. {\"size\": 384, \"iterations\": 100}", "", flags)
        procedure.add_double_argument("style-scale", "_Brush strokes", "Size of the style's brush strokes: 1 = as "
                                      "painted, 2 = twice as large, 0.5 = half (style_scale)",
                                      sb_desk.STYLE_SCALE_MIN, sb_desk.STYLE_SCALE_MAX,
                                      sb_desk.STYLE_SCALE_DEFAULT, flags)
        reruns = Gimp.Choice.new()
        for i, (key, label) in enumerate(sb_desk.RERUN_CHOICES):
            reruns.add(key, i, label, "")
        procedure.add_choice_argument("rerun", "_Earlier result", "When the layer chosen is an earlier result: "
                                      "new (a new group on top) | replace (this group) | add (to this group)",
                                      reruns, sb_desk.RERUN_DEFAULT, flags)
        procedure.add_boolean_argument("use-regions", "Re_gions from channels and layer masks",
                                       "Paint each style only where a channel (or a layer's mask) named after it "
                                       "says: one run, the result the layer 'Fused'", True, flags)
        procedure.add_string_argument("region-selection", "Use the _selection as the region of",
                                      "The style (library name or file stem) whose region is the selection; "
                                      "empty: none", "", flags)
        return procedure


if __name__ == "__main__":
    Gimp.main(Stylebridge.__gtype__, sys.argv)
