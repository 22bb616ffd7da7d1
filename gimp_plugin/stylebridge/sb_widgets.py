"""The dialog's parts besides the library panel: the preview fetcher (instant, then faithful), the style file
list, the file chooser with an image preview, thumbnails. Split from ``sb_dialog.py`` (one home per widget).
"""

import os
import time

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, GLib  # noqa: E402

import sb_client  # noqa: E402
import sb_desk  # noqa: E402
import sb_logic  # noqa: E402


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
        self.faithful_info = {}         # library style -> the same, for its faithful preview (test hook)
        self.sent = 0                   # requests sent to the daemon (the test hook: a cache hit sends none)
        self.waiting = set()
        self.generation = 0             # bumped when the settings change: faithful previews asked before are dropped
        self.cancelled = set()          # styles unticked since their faithful preview was asked for
        self.faithful_ok = True         # False once the daemon shows it has no faithful previews (4xx, or instant)
        self.faithful_sent = 0          # (the test hook)
        self.photos = {}                # (w, h) -> the layer's pixels at that size, RGBA (for the mix)
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

    def new_generation(self):
        self.generation += 1
        self.cancelled.clear()

    def cancel(self, style):
        self.cancelled.add(style)

    def request_faithful(self, url, token, style, settings, done):
        """A small real run of library style ``style`` with the job's ``settings`` (method "faithful"), after
        the instant one; dropped when the settings change or the style is unticked before its turn."""
        import json
        self.cancelled.discard(style)
        key = ("faithful",) + sb_logic.preview_key(url, style) + (json.dumps(settings, sort_keys=True),)
        if key in self.cache:
            pix, why, _ = self.cache[key]
            done(pix, why)
            return
        if key in self.waiting:
            return
        try:
            content = self._content_png()
        except Exception:  # noqa: BLE001 - the instant preview said why already
            return
        self.waiting.add(key)
        self.queue.put((key, url, token, style, None, content, done,
                        {"method": sb_desk.FAITHFUL, "settings": settings, "generation": self.generation}))

    def mixed(self, pixbuf, strength, original_colors):
        """``pixbuf`` (an instant preview) mixed with the photo as the engine mixes (sb_desk.mix_pixels)."""
        if strength >= 1.0 and not original_colors:
            return pixbuf
        from gi.repository import GdkPixbuf
        w, h = pixbuf.get_width(), pixbuf.get_height()
        try:
            styled = _rgba_bytes(pixbuf)
            photo = self.photos.get((w, h))
            if photo is None:
                photo = self.photos[(w, h)] = _rgba_bytes(self.layer.get_thumbnail(
                    w, h, Gimp.PixbufTransparency.KEEP_ALPHA))
            data = sb_desk.mix_pixels(styled, photo, 4, strength, original_colors)
            return GdkPixbuf.Pixbuf.new_from_bytes(GLib.Bytes.new(data), GdkPixbuf.Colorspace.RGB, True, 8, w, h,
                                                   w * 4)
        except Exception:  # noqa: BLE001 - the unmixed preview is still a preview
            return pixbuf

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
        self.queue.put((key, url, token, style, path, content, done, None))

    def stop(self):
        self.queue.put(None)

    def _work(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            key, url, token, style, path, content, done, faithful = item
            data, why, info, keep = None, None, {}, True
            if faithful is not None and (faithful["generation"] != self.generation or style in self.cancelled
                                         or not self.faithful_ok):
                GLib.idle_add(self._deliver, key, style, path, None, "not wanted any more", {}, lambda *_: None,
                              False)
                continue
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
                    client = sb_logic.daemon_client(url, token, timeout=120)
                    if faithful is None:
                        got = client.previews(("layer.png", content), size=sb_logic.PREVIEW_SIZE, **ask)
                    else:
                        self.faithful_sent += 1
                        got = sb_desk.ask_previews(client, ("layer.png", content), size=sb_desk.FAITHFUL_SIZE,
                                                   method=sb_desk.FAITHFUL, settings=faithful["settings"], **ask)
                    data, why, info, keep = sb_logic.preview_answer(got)
                    if faithful is not None and info.get("method") != sb_desk.FAITHFUL_METHOD:
                        self.faithful_ok = False        # the daemon made an instant one: it has no faithful kind
                        data, why, keep = None, "this stylebridge service makes no faithful previews", False
                    elif faithful is not None and faithful["generation"] != self.generation:
                        data, why, keep = None, "the settings changed meanwhile", False
                    break
                except sb_client.DaemonError as exc:
                    if exc.status == 429 and attempt < 19:      # busy with another preview: wait our turn
                        time.sleep(0.5)
                        continue
                    if faithful is not None and sb_desk.faithful_refused(exc):
                        self.faithful_ok = False                # an older daemon: the instant preview stays
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
            if key[0] == "faithful":
                self.faithful_info[style] = shown
            elif path is None:
                self.info[style] = shown
            else:
                self.file_info[path] = shown
        done(pix, why)
        return False


def _rgba_bytes(pixbuf):
    """A pixbuf's pixels as tightly packed 8-bit RGBA."""
    if not pixbuf.get_has_alpha():
        pixbuf = pixbuf.add_alpha(False, 0, 0, 0)
    w, h, stride = pixbuf.get_width(), pixbuf.get_height(), pixbuf.get_rowstride()
    data = pixbuf.get_pixels()
    if stride == w * 4:
        return bytes(data[:w * h * 4])
    return b"".join(bytes(data[y * stride:y * stride + w * 4]) for y in range(h))


_LAST_FOLDER = []           # the folder the artist last chose from (while GIMP runs the plug-in)
PREVIEW_SIDE = 192


def start_folder():
    """Where the chooser opens: the last folder chosen from, else Pictures, else home (never "Recent")."""
    from gi.repository import GLib as _GLib
    pictures = _GLib.get_user_special_dir(_GLib.UserDirectory.DIRECTORY_PICTURES)
    for folder in (*_LAST_FOLDER[-1:], pictures, os.path.expanduser("~")):
        if folder and os.path.isdir(folder):
            return folder
    return None


def choose_images(parent, title, accept):
    """A file chooser for images (several files) with a preview of the image under the pointer, opening in a
    folder (:func:`start_folder`); the chosen paths, or [] when cancelled."""
    from gi.repository import GdkPixbuf, Gtk

    chooser = Gtk.FileChooserDialog(title=title, transient_for=parent, action=Gtk.FileChooserAction.OPEN,
                                    modal=True)
    chooser.add_buttons("_Cancel", Gtk.ResponseType.CANCEL, accept, Gtk.ResponseType.ACCEPT)
    chooser.set_select_multiple(True)
    chooser.set_local_only(True)
    folder = start_folder()
    if folder:
        chooser.set_current_folder(folder)
    filt = Gtk.FileFilter()
    filt.set_name("Images")
    for pattern in sb_logic.IMAGE_PATTERNS:
        filt.add_pattern(pattern)
        filt.add_pattern(pattern.upper())
    chooser.add_filter(filt)
    preview = Gtk.Image()
    chooser.set_preview_widget(preview)

    def update(_chooser):
        path = chooser.get_preview_filename()
        try:
            pix = GdkPixbuf.Pixbuf.new_from_file_at_size(path, PREVIEW_SIDE, PREVIEW_SIDE) if path else None
        except Exception:  # noqa: BLE001 - not an image (yet): no preview
            pix = None
        if pix is not None:
            preview.set_from_pixbuf(pix)
        chooser.set_preview_widget_active(pix is not None)

    chooser.connect("update-preview", update)
    try:
        if chooser.run() == Gtk.ResponseType.ACCEPT:
            paths = [p for p in chooser.get_filenames() if p]
            if paths:
                _LAST_FOLDER.append(os.path.dirname(paths[0]))
            return paths
        return []
    finally:
        chooser.destroy()


class FileList:
    """Style images from disk (uploaded with the job, not kept in the library): a list with a remove button per
    file and the desktop's file chooser to add several at once. Kept in the ``style-files`` argument. Each row
    shows the photo in that file's style (a quick preview, POST /v1/previews) once the daemon answers."""

    MAX_ROWS_SHOWN = 2

    def __init__(self, dialog, config, panel=None):
        from gi.repository import Gtk

        self.Gtk, self.dialog, self.config, self.panel = Gtk, dialog, config, panel
        self.on_change = None
        self.preview_images = {}        # path -> the Gtk.Image in its row
        self.previews = {}              # path -> {"error": why} or the preview's info, once in (the test hook)
        self.frame = Gtk.Frame(label="Style images from files (this run only)")
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        box.set_border_width(6)
        self.frame.add(box)
        self.list = Gtk.ListBox()
        self.list.set_selection_mode(Gtk.SelectionMode.NONE)
        self.scroller = scroller = Gtk.ScrolledWindow()     # rows are preview-high: beyond two, scroll
        scroller.set_policy(Gtk.PolicyType.NEVER, Gtk.PolicyType.AUTOMATIC)
        scroller.set_propagate_natural_height(True)
        scroller.set_max_content_height(self.MAX_ROWS_SHOWN * (sb_logic.THUMB_HEIGHT + 4))
        scroller.set_no_show_all(True)      # shown only while the list has files (no empty white box)
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
            label.set_width_chars(24)           # the name stays readable beside its preview (not a sliver)
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
        self.scroller.set_visible(bool(self.paths()))
        if not self.paths():
            self.list.hide()
        self.scroller.set_min_content_height(min(len(self.paths()), self.MAX_ROWS_SHOWN) * (sb_logic.THUMB_HEIGHT + 4))
        try:
            self.dialog.resize(1, 1)        # shrink back after a file was taken off
        except Exception:  # noqa: BLE001
            pass
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





def thumbnail(url, token, thumb_url):
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
