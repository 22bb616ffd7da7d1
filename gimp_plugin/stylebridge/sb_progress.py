"""Where a run's progress shows, and how the artist stops it.

GIMP's own progress bar cannot be cancelled gently: its Cancel makes GIMP kill the plug-in outright (SIGKILL,
``gimp_plug_in_progress_cancel_callback`` in app/plug-in/gimpplugin-progress.c), so a killed plug-in cannot take its
temporary preview layer off the canvas or tell the daemon. An interactive run therefore shows its own small window
(:class:`ProgressWindow`): the text and bar GIMP's progress would show, and a Cancel button the plug-in hears. The
plug-in then cancels the job, removes the preview layer and returns CANCEL, leaving the image as it was.
Non-interactive runs (scripts, batch mode) have no window and use GIMP's progress (:class:`GimpProgress`).

Both have one small surface: ``start/text/fraction/pulse/sleep/end`` and ``cancelled``. ``sleep`` is how the
run waits between polls: the window keeps answering clicks while it waits.
"""

import json
import os
import time

import gi

gi.require_version("Gimp", "3.0")
from gi.repository import Gimp  # noqa: E402

CANCELLING_TEXT = "Cancelling (the stylebridge service stops at its next step)..."
#: The window keeps off the canvas (where the live preview shows): it sits in the screen's bottom-right corner,
#: this far from the edges.
CORNER_MARGIN = 24


def progress_for(interactive):
    """The progress sink for a run: the window when the artist started it from the menu, else GIMP's bar."""
    if interactive:
        try:
            return ProgressWindow()
        except Exception as exc:  # noqa: BLE001 - no display after all: GIMP's bar still shows the run
            Gimp.message(f"Stylebridge: no progress window ({exc}); cancel from GIMP's progress bar")
    return GimpProgress()


class GimpProgress:
    """GIMP's progress bar (status bar). Cancelling it kills the plug-in: the watchdog then cancels the job and
    the next run removes the preview layer left behind."""

    cancelled = False

    def start(self, text):
        Gimp.progress_init(text)

    def text(self, text):
        Gimp.progress_set_text(text)

    def fraction(self, value):
        Gimp.progress_update(value)

    def pulse(self):
        Gimp.progress_pulse()

    def sleep(self, seconds):
        time.sleep(seconds)

    def look(self, **_facts):
        pass

    def end(self):
        Gimp.progress_end()


class ProgressWindow:
    """The interactive run's own progress window: a line of text, a bar and Cancel (or closing the window).

    ``cancelled`` turns True on the click; the run sees it at its next poll. Events are handled whenever the run
    reports or sleeps (:meth:`pump`), so the window stays live without a main loop of its own."""

    POLL_SLICE_S = 0.03

    def __init__(self, title="Stylebridge"):
        gi.require_version("GimpUi", "3.0")
        gi.require_version("Gtk", "3.0")
        from gi.repository import Gdk, GimpUi, Gtk

        self.Gtk = Gtk
        self.cancelled = False
        self.window = GimpUi.Dialog(title=title, role="stylebridge-progress", modal=False)
        self.cancel_button = self.window.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        self.window.connect("response", self._on_response)
        self.window.connect("delete-event", self._on_delete)
        box = self.window.get_content_area()
        box.set_spacing(8)
        box.set_border_width(12)
        self.label = Gtk.Label(label="")
        self.label.set_xalign(0.0)
        self.label.set_line_wrap(True)
        self.label.set_width_chars(48)
        self.bar = Gtk.ProgressBar()
        self.bar.set_pulse_step(0.05)
        self.bar.set_show_text(True)             # "42 %" on the bar
        box.pack_start(self.label, False, False, 0)
        box.pack_start(self.bar, False, False, 0)
        try:
            GimpUi.window_set_transient(self.window)        # above GIMP's image window
        except Exception:  # noqa: BLE001 - cosmetic
            pass
        self.window.set_gravity(Gdk.Gravity.SOUTH_EAST)
        self.window.show_all()
        self._to_corner(Gdk)
        self.test_hook = os.environ.get("STYLEBRIDGE_GIMP_RUN_TEST")      # tests only, see look()
        self.pump()

    def _to_corner(self, Gdk):  # noqa: N803 - the gi module
        """Move the window to the bottom-right corner of the monitor's work area, off the canvas."""
        try:
            display = Gdk.Display.get_default()
            monitor = display.get_primary_monitor() or display.get_monitor(0)
            area = monitor.get_workarea()
            width, height = self.window.get_size()
            self.window.move(area.x + area.width - width - CORNER_MARGIN,
                             area.y + area.height - height - CORNER_MARGIN)
        except Exception:  # noqa: BLE001 - cosmetic: the window manager places it
            pass

    # -- the artist's Cancel ------------------------------------------------------------------------
    def _on_response(self, _window, response):
        if response in (self.Gtk.ResponseType.CANCEL, self.Gtk.ResponseType.DELETE_EVENT):
            self.cancel()

    def _on_delete(self, *_args):
        self.cancel()
        return True                      # keep the window until the run has cleaned up

    def cancel(self):
        if not self.cancelled:
            self.cancelled = True
            self.cancel_button.set_sensitive(False)
            self.label.set_text(CANCELLING_TEXT)

    # -- the run's reports --------------------------------------------------------------------------
    def pump(self):
        Gtk = self.Gtk
        while Gtk.events_pending():
            Gtk.main_iteration_do(False)

    def start(self, text):
        self.text(text)

    def text(self, text):
        if not self.cancelled:
            self.label.set_text(text)
        self.pump()

    def fraction(self, value):
        self.bar.set_fraction(max(0.0, min(1.0, value)))
        self.pump()

    def pulse(self):
        self.bar.pulse()
        self.pump()

    def sleep(self, seconds):
        deadline = time.monotonic() + seconds
        while True:
            self.pump()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(self.POLL_SLICE_S, left))

    def end(self):
        self.window.destroy()
        self.pump()

    # -- tests --------------------------------------------------------------------------------------
    def look(self, **facts):
        """For the automated tests only (STYLEBRIDGE_GIMP_RUN_TEST=PATH): append what the window shows as a JSON
        line (with ``facts`` from the run, e.g. ``preview_layers``) and a screenshot PATH.N.png; with
        STYLEBRIDGE_GIMP_RUN_TEST_CANCEL=after-preview, click Cancel once the canvas shows a preview layer and the
        window an iteration."""
        if not self.test_hook:
            return
        shown = self.label.get_text()
        if (os.environ.get("STYLEBRIDGE_GIMP_RUN_TEST_CANCEL") == "after-preview" and facts.get("preview_layers")
                and shown.startswith("Painting") and not self.cancelled):
            self.cancel_button.clicked()         # what the artist's click does
            self.pump()
            facts = dict(facts, text_after_cancel=self.label.get_text())
        try:
            with open(self.test_hook) as fh:
                n = sum(1 for _ in fh)
        except OSError:
            n = 0
        geometry = {}
        try:
            from gi.repository import Gdk
            x, y = self.window.get_position()
            width, height = self.window.get_size()
            screen = Gdk.Screen.get_default()
            geometry = {"window": [x, y, width, height], "screen": [screen.get_width(), screen.get_height()]}
        except Exception as exc:  # noqa: BLE001
            geometry = {"geometry_error": str(exc)}
        info = dict(facts, **geometry, text=shown, fraction=round(self.bar.get_fraction(), 4),
                    title=self.window.get_title(), visible=self.window.get_visible(),
                    cancel_label=self.cancel_button.get_label(), cancel_sensitive=self.cancel_button.get_sensitive(),
                    cancelled=self.cancelled)
        if n < 3:
            try:
                from gi.repository import Gdk
                win = self.window.get_window()
                shot = Gdk.pixbuf_get_from_window(win, 0, 0, win.get_width(), win.get_height())
                shot.savev(f"{self.test_hook}.{n}.png", "png", [], [])
            except Exception as exc:  # noqa: BLE001
                info["screenshot_error"] = str(exc)
        with open(self.test_hook, "a") as fh:
            fh.write(json.dumps(info) + "\n")
