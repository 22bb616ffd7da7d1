"""The GIMP plug-in's decisions, without GIMP: standard library only, tested under the suite's CPython.

``stylebridge.py`` is a thin adapter over Gimp/Gegl/GimpUi: it reads the procedure's arguments into a plain
dict, asks this module what to send, what to say and what to insert, and does the pixel and layer work.
Everything that can be decided from plain values lives here (tests/test_gimp_logic.py), so it is checked
without a GIMP:

* the arguments -> :class:`Options` -> the ONE job description sent with ``sb_client.Client.submit_job``
  (names as everywhere else: ``original_colors``, ``style_strength``, ``reveal``, ``preset`` only when the
  user chose one, so ``stylebridge serve --preset`` applies otherwise);
* the mask choice (``first|all|none`` as in ``bridge.settings.Reveal``, plus ``selection``);
* the daemon's protocol version and what to tell the user when either side is too old;
* the layer plan from the daemon's result, the parasite record on each layer, reading old records;
* progress text (through ``sb_client.progress_text``, the one formatter);
* the Quality choices a daemon offers (its health's ``presets``) and its time estimate (``Client.estimate``).

GIMP cannot import the ``bridge`` package, so the few values that must equal the package's (bounds, defaults,
choices, old names) are repeated here as constants and a suite test checks each against its home.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import sb_client
import sb_desk

PROC_NAME = "python-fu-stylebridge"
PARASITE_NAME = "stylebridge-settings"
#: Version of the parasite record (1: before the one job description; it used preserve_colors/mask_mode).
RECORD_VERSION = 2
USER_AGENT = "stylebridge-gimp/2"
POLL_S = 0.3

#: Quality: "daemon" sends no preset (the daemon's own, ``stylebridge serve --preset``), else that preset.
#: GIMP's choice argument needs its words when the plug-in registers, before any daemon is asked, so the known
#: presets are named here, once (= bridge.settings.PRESETS, a test checks); the dialog offers those the daemon's
#: health lists (:func:`quality_choices`).
DAEMON_DEFAULT = "daemon"
PRESET_LABELS = {"draft": "Draft (fast)", "normal": "Normal", "best": "Best (slow)",
                 "print": "Print (the photo's own size; slow)"}
QUALITY_CHOICES = ((DAEMON_DEFAULT, "Daemon default"), *PRESET_LABELS.items())
QUALITY_DEFAULT = DAEMON_DEFAULT
PRESET_NAMES = tuple(PRESET_LABELS)                       # = bridge.settings.PRESETS

#: Masks: the one vocabulary (bridge.settings.Reveal) plus "selection" (the selection is the job's mask).
SELECTION = "selection"
MASK_CHOICES = (("first", "First style shown, the others hidden (one brush stroke away)"),
                ("all", "All styles shown"),
                ("none", "All styles hidden (paint them in)"),
                (SELECTION, "The selection (feathering kept)"))
MASK_DEFAULT = "first"                                   # = bridge.settings.DocumentSettings.reveal
#: Old words (plug-in before the one vocabulary) -> new: = bridge.job.OLD_MASK_WORDS, plus the plug-in's own.
OLD_MASK_WORDS = {"reveal-all": "all", "hide-all": "none", "auto": "first", "mask": SELECTION}

#: style_strength: bounds and default of bridge.settings.Settings.style_strength (a test checks). The dialog's
#: slider spans the 0..1 knob; above 1 is the old meaning (extra style weight), still accepted when typed.
STRENGTH_DEFAULT = 1.0
STRENGTH_MIN = 0.0
STRENGTH_MAX = 100.0
STRENGTH_KNOB = (0.0, 1.0)
ORIGINAL_COLORS_DEFAULT = False                          # = bridge.settings.Settings.original_colors
#: Old option names -> new (= bridge.settings.RENAMED).
RENAMED = {"preserve_colors": "original_colors"}

# Daemon blend-mode names -> the Gimp.LayerMode member (by name: this module does not import Gimp).
LAYER_MODES = {
    "normal": "NORMAL", "pass_through": "PASS_THROUGH", "multiply": "MULTIPLY", "screen": "SCREEN",
    "overlay": "OVERLAY", "soft_light": "SOFTLIGHT", "hard_light": "HARDLIGHT", "linear_light": "LINEAR_LIGHT",
    "color": "HSL_COLOR",            # Photoshop's "Color": hue + saturation, keeps luminosity
    "luminosity": "LUMINANCE", "darken": "DARKEN_ONLY", "lighten": "LIGHTEN_ONLY", "difference": "DIFFERENCE",
    "hue": "HSV_HUE", "saturation": "HSV_SATURATION", "dissolve": "DISSOLVE", "color_dodge": "DODGE",
    "color_burn": "BURN", "linear_burn": "LINEAR_BURN", "vivid_light": "VIVID_LIGHT", "pin_light": "PIN_LIGHT",
    "hard_mix": "HARD_MIX", "exclusion": "EXCLUSION", "subtract": "SUBTRACT", "divide": "DIVIDE",
}


class UserError(Exception):
    """A problem with the arguments: reported as a CALLING_ERROR, in these words."""


class DaemonNotStarted(sb_client.ClientError):
    """No daemon answered and the plug-in could not start one; ``str()`` says what to do."""


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------

def split_list(text: str | None, sep: str) -> list[str]:
    return [s.strip() for s in (text or "").split(sep) if s.strip()]


@dataclass
class Options:
    """One run's choices, from the procedure's arguments (GIMP property ids in :func:`read_options`)."""

    styles: list[str]
    style_files: list[str]
    quality: str = QUALITY_DEFAULT
    original_colors: bool = ORIGINAL_COLORS_DEFAULT
    style_strength: float = STRENGTH_DEFAULT
    mask: str = MASK_DEFAULT
    daemon_url: str = sb_client.DEFAULT_URL
    token: str | None = None
    extra_settings: dict = field(default_factory=dict)
    style_scale: float = sb_desk.STYLE_SCALE_DEFAULT
    rerun: str = sb_desk.RERUN_DEFAULT
    #: Regions (issue #22): channels / layer masks named after styles are their regions (``use-regions``), and
    #: the selection is the region of this style (``region-selection``; "" = none).
    use_regions: bool = True
    region_selection: str = ""

    @property
    def preset(self) -> str | None:
        """The preset to send, or None for the daemon's own."""
        return None if self.quality == DAEMON_DEFAULT else self.quality


PROPS = ("styles", "style-files", "preset", "preserve-colors", "style-strength", "mask-mode", "daemon-url", "token",
         "extra-settings", "style-scale", "rerun", "use-regions", "region-selection")


def config_values(config):
    """The procedure's arguments (a GimpProcedureConfig, or anything with get_property) as a plain dict:
    property id -> value, what :func:`read_options` reads."""
    return {p: config.get_property(p) for p in PROPS}


def daemon_client(url, token, timeout=60.0):
    """A protocol client that names the plug-in in the daemon's logs."""
    return sb_client.Client(url, token or "", timeout=timeout, user_agent=USER_AGENT)


def connection(values: Mapping[str, Any], env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(URL, token) from the ``daemon-url``/``token`` arguments, else the defaults / ``$STYLEBRIDGE_TOKEN``."""
    env = os.environ if env is None else env
    url = str(values.get("daemon-url") or "").strip() or sb_client.DEFAULT_URL
    token = str(values.get("token") or "").strip() or env.get(sb_client.TOKEN_ENV) or None
    return url, token


def mask_choice(word: str | None) -> str:
    """A mask word, old or new, -> one of :data:`MASK_CHOICES` (unknown -> the default)."""
    word = OLD_MASK_WORDS.get(word or "", word or MASK_DEFAULT)
    return word if word in dict(MASK_CHOICES) else MASK_DEFAULT


def quality_choice(word: str | None) -> str:
    return word if word in dict(QUALITY_CHOICES) else QUALITY_DEFAULT


def parse_extra(text: str | None) -> dict:
    """The ``extra-settings`` JSON object, old option names renamed."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UserError(f"Stylebridge: extra-settings is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UserError('Stylebridge: extra-settings must be a JSON object, e.g. {"size": 384}')
    out = {}
    for key, val in value.items():
        key = str(key).replace("-", "_")
        out[RENAMED.get(key, key)] = val
    return out


def read_options(values: Mapping[str, Any], env: Mapping[str, str] | None = None,
                 isfile: Callable[[str], bool] = os.path.isfile) -> Options:
    """The procedure's arguments (property id -> value) -> :class:`Options`; :class:`UserError` if unusable."""
    url, token = connection(values, env)
    try:
        strength = float(values.get("style-strength", STRENGTH_DEFAULT))
    except (TypeError, ValueError):
        raise UserError("Stylebridge: style-strength must be a number") from None
    if not STRENGTH_MIN <= strength <= STRENGTH_MAX:
        raise UserError(f"Stylebridge: style-strength {strength:g} is outside {STRENGTH_MIN:g}..{STRENGTH_MAX:g} "
                        f"(0 = the photo, 1 = fully painted)")
    opts = Options(styles=split_list(values.get("styles"), ","),
                   style_files=split_list(values.get("style-files"), ";"),
                   quality=quality_choice(values.get("preset")),
                   original_colors=bool(values.get("preserve-colors", ORIGINAL_COLORS_DEFAULT)),
                   style_strength=strength, mask=mask_choice(values.get("mask-mode")),
                   daemon_url=url, token=token, extra_settings=parse_extra(values.get("extra-settings")),
                   style_scale=_style_scale(values.get("style-scale")),
                   rerun=sb_desk.rerun_choice(values.get("rerun")),
                   use_regions=bool(values.get("use-regions", True)),
                   region_selection=str(values.get("region-selection") or "").strip())
    if opts.region_selection and _norm(opts.region_selection) not in {_norm(s) for s in style_names(opts)}:
        raise UserError(f"Stylebridge: region-selection names the style '{opts.region_selection}', which is not "
                        f"in this run: give one of {', '.join(style_names(opts))}, or leave it empty")
    if not opts.styles and not opts.style_files:
        raise UserError("Stylebridge: choose at least one style (library style or style image file).")
    for path in opts.style_files:
        if not isfile(path):
            raise UserError(f"Stylebridge: style image not found: {path}")
    return opts


def _style_scale(value: Any) -> float:
    """The brush-stroke scale argument (missing: the default), or UserError outside its bounds."""
    if value is None:
        return sb_desk.STYLE_SCALE_DEFAULT
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise UserError("Stylebridge: style-scale must be a number") from None
    if not sb_desk.STYLE_SCALE_MIN <= scale <= sb_desk.STYLE_SCALE_MAX:
        raise UserError(f"Stylebridge: style-scale {scale:g} is outside {sb_desk.STYLE_SCALE_MIN:g}.."
                        f"{sb_desk.STYLE_SCALE_MAX:g} (1 = the style's own brush strokes, 2 = twice as large)")
    return scale


def file_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def run_name(opts: Options) -> str:
    """The run's name (the daemon names the group after it)."""
    return "Stylebridge: " + ", ".join(list(opts.styles) + [file_stem(p) for p in opts.style_files])


def mask_used(opts: Options, has_selection: bool) -> str:
    """What the mask choice means for this image: ``selection`` only when there is one (no selection =
    everything selected, so every style shown: ``all``), and not when the selection is a style's region."""
    if opts.mask == SELECTION:
        return SELECTION if has_selection and not opts.region_selection else "all"
    return opts.mask


def job_settings(opts: Options, used: str) -> dict:
    """The settings as the user chose them (what a daemon applies over its own defaults)."""
    settings: dict[str, Any] = {}
    if opts.preset is not None:
        settings["preset"] = opts.preset
    settings["original_colors"] = opts.original_colors
    settings["style_strength"] = opts.style_strength
    if opts.style_scale != sb_desk.STYLE_SCALE_DEFAULT:
        settings["style_scale"] = opts.style_scale
    if used != SELECTION:
        settings["reveal"] = used
    settings.update(opts.extra_settings)
    return settings


def job_description(opts: Options, has_selection: bool, regions: Iterable[str] = ()) -> tuple[dict, str]:
    """(the job JSON for ``Client.submit_job``, the mask actually used). Style files go as uploads in
    order (``{"upload": i}``), named after their files; the selection as the job's mask (upload 0);
    ``regions``: the styles whose region files go with the job, in that order (:func:`add_regions`)."""
    used = mask_used(opts, has_selection)
    styles: list[Any] = [{"library": name} for name in opts.styles]
    styles += [{"upload": i, "name": file_stem(p)} for i, p in enumerate(opts.style_files)]
    job: dict[str, Any] = {"protocol": sb_client.PROTOCOL_VERSION, "styles": styles,
                           "settings": job_settings(opts, used), "name": run_name(opts)}
    if used == SELECTION:
        job["mask"] = {"upload": 0}
    return add_regions(job, regions), used


# ------------------------------------------------------------------------------------------------
# the daemon: protocol, health
# ------------------------------------------------------------------------------------------------

def daemon_protocol(health: Mapping[str, Any]) -> int:
    """The protocol a daemon speaks: its health's ``protocol`` (absent: 1, the daemon before versions)."""
    value = health.get("protocol", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def protocol_check(health: Mapping[str, Any], url: str,
                   ours: int = sb_client.PROTOCOL_VERSION) -> tuple[str | None, str | None]:
    """(error, warning) for a daemon's health: an error when the daemon is too old for this plug-in (nothing
    is sent; the client's one message, as ``sb_client.DaemonTooOld`` says it), a warning when this installed
    plug-in is older than the daemon (it still works)."""
    theirs = daemon_protocol(health)
    version = health.get("version")
    where = f"at {url}" + (f" (stylebridge {version})" if version else "")
    if theirs < ours:
        return sb_client.upgrade_message(url, theirs, ours), None
    if theirs > ours:
        return None, (f"Stylebridge: this GIMP plug-in (protocol {ours}) is older than the daemon {where}, protocol "
                      f"{theirs}. Run `stylebridge gimp-install` again and restart GIMP to update it.")
    return None, None


# ------------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------------

class ProgressLine:
    """What GIMP's progress bar shows for each polled status: new text only when it changed (GIMP redraws
    on every call), a pulse while queued, else the fraction."""

    def __init__(self) -> None:
        self.last: str | None = None

    def update(self, status: Mapping[str, Any]) -> tuple[str | None, float | None]:
        """(text or None when unchanged, fraction 0..1 or None for a pulse)."""
        text = sb_desk.progress_words(dict(status))          # plain words, not the engine's stages
        changed = text if text != self.last else None
        self.last = text
        if status.get("status") == "queued":
            return changed, None
        return changed, sb_client.progress_fraction(dict(status))


# ------------------------------------------------------------------------------------------------
# the result: layer plan and records
# ------------------------------------------------------------------------------------------------

@dataclass
class LayerStep:
    """One layer or group to insert, bottom to top, as the daemon's result describes it."""

    index: int
    name: str
    group: bool
    parent: int | None          # the index of the group it goes into (None: beside the source layer)
    mode: str                   # a Gimp.LayerMode member name
    opacity: float              # 0..100
    visible: bool
    left: int                   # offset from the source layer's own offsets
    top: int
    width: int | None
    height: int | None
    image_url: str | None
    mask_url: str | None
    role: str | None
    style: str | None


def layer_plan(result: Mapping[str, Any]) -> tuple[list[LayerStep], list[str]]:
    """The steps to insert (the ``original`` layer left out: the source layer is the original) and warnings."""
    steps: list[LayerStep] = []
    warnings: list[str] = []
    for item in result.get("layers", []):
        meta = item.get("meta") or {}
        role = meta.get("role")
        if role == "original":
            continue
        name = item.get("name") or role or "layer"
        group = item.get("kind") == "group"
        mode_name = str(item.get("mode") or "normal").lower()
        mode = LAYER_MODES.get(mode_name)
        if mode is None:
            warnings.append(f"{name}: blend mode {mode_name!r} not known, using Normal")
            mode = "PASS_THROUGH" if group else "NORMAL"
        mask_url = item.get("mask_url") or None
        if mask_url and group:
            warnings.append(f"{name}: masks on groups are not supported, mask left out")
            mask_url = None
        try:
            opacity = max(0.0, min(100.0, 100.0 * float(item.get("opacity", 1.0))))
        except (TypeError, ValueError):
            opacity = 100.0
        steps.append(LayerStep(
            index=int(item["index"]), name=str(name), group=group, parent=item.get("parent"), mode=mode,
            opacity=opacity, visible=bool(item.get("visible", True)), left=int(item.get("left") or 0),
            top=int(item.get("top") or 0), width=_int_or_none(item.get("width")),
            height=_int_or_none(item.get("height")), image_url=None if group else (item.get("image_url") or None),
            mask_url=mask_url, role=role, style=(meta.get("style") or name) if role == "style" else None))
    return steps, warnings


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def base_record(opts: Options, result: Mapping[str, Any], job_id: str, used: str) -> dict:
    """What every inserted layer records (parasite ``stylebridge-settings``): enough to repeat the run."""
    return {"plugin": PROC_NAME, "version": RECORD_VERSION, "run": result.get("name") or run_name(opts),
            "job": job_id, "styles": list(opts.styles), "style_files": list(opts.style_files),
            "preset": opts.preset, "original_colors": opts.original_colors, "style_strength": opts.style_strength,
            "mask": opts.mask, "mask_used": used, "extra_settings": dict(opts.extra_settings),
            "style_scale": opts.style_scale, "use_regions": opts.use_regions,
            "region_selection": opts.region_selection,
            "daemon_url": opts.daemon_url, "settings": dict(result.get("settings") or {})}


def layer_record(base: Mapping[str, Any], step: LayerStep) -> dict:
    record = dict(base, layer=step.name, role=step.role, index=step.index)
    if step.style is not None:
        record["style"] = step.style
    return record


def record_bytes(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode("utf-8")


def read_record(data: bytes | None) -> dict | None:
    """A parasite's record, or None when it is not one."""
    if not data:
        return None
    try:
        value = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def config_from_record(record: Mapping[str, Any]) -> dict:
    """A record (this version's or an old one) -> procedure property id -> value, to start the dialog from it."""
    out: dict[str, Any] = {"styles": ",".join(record.get("styles") or []),
                           "style-files": ";".join(record.get("style_files") or [])}
    if "preset" in record:
        out["preset"] = quality_choice(record.get("preset") or DAEMON_DEFAULT)
    colors = record.get("original_colors", record.get("preserve_colors"))
    if colors is not None:
        out["preserve-colors"] = bool(colors)
    strength = record.get("style_strength")
    if isinstance(strength, (int, float)) and STRENGTH_MIN <= strength <= STRENGTH_MAX:
        out["style-strength"] = float(strength)
    scale = record.get("style_scale")
    if isinstance(scale, (int, float)) and sb_desk.STYLE_SCALE_MIN <= scale <= sb_desk.STYLE_SCALE_MAX:
        out["style-scale"] = float(scale)
    mask = record.get("mask", record.get("mask_mode"))
    if mask is not None:
        out["mask-mode"] = mask_choice(str(mask))
    if isinstance(record.get("use_regions"), bool):
        out["use-regions"] = record["use_regions"]
    if isinstance(record.get("region_selection"), str):
        out["region-selection"] = record["region_selection"]
    if record.get("daemon_url"):
        out["daemon-url"] = str(record["daemon_url"])
    extra = record.get("extra_settings")
    out["extra-settings"] = json.dumps(extra) if extra else ""
    return out


def is_loopback(url: str) -> bool:
    """True when ``url`` names this machine (a daemon the plug-in may start itself)."""
    host = urllib.parse.urlsplit(url if "://" in url else "http://" + url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


# ------------------------------------------------------------------------------------------------
# starting a daemon
# ------------------------------------------------------------------------------------------------

#: Written by ``stylebridge gimp-install`` beside the plug-in (= bridge.gimp_install.INSTALL_FILE):
#: ``{"stylebridge": [command...], "version": ...}``, the stylebridge that installed it.
INSTALL_FILE = "sb_install.json"
#: How long a daemon the plug-in started may take to answer (it loads the VGG-19 weights first).
START_TIMEOUT_S = 120.0
START_TEXT = "Starting the stylebridge service (a few seconds)..."
#: A daemon the plug-in starts stops itself after this long with nothing to do (``serve --idle-exit``): it holds
#: the VGG weights in memory (over a GB), and the next run starts it again.
IDLE_EXIT_S = 20 * 60


def read_install(folder: str) -> dict:
    """The install record in ``folder`` ({} when missing or unreadable: then no daemon is started)."""
    try:
        with open(os.path.join(folder, INSTALL_FILE), encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def serve_command(install: Mapping[str, Any], url: str) -> list[str] | None:
    """``stylebridge serve`` for a daemon at ``url``, with the recorded executable; None when the plug-in must
    not start one (the URL names another machine, or no executable was recorded)."""
    command = install.get("stylebridge")
    if not is_loopback(url) or not isinstance(command, list) or not command \
            or not all(isinstance(c, str) and c for c in command):
        return None
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or sb_client.DEFAULT_PORT
    return list(command) + ["serve", "--host", "127.0.0.1" if host == "localhost" else host, "--port", str(port),
                            "--idle-exit", str(IDLE_EXIT_S)]


def start_failed_message(url: str, command: list[str] | None, reason: str = "") -> str:
    """What to tell the user when no daemon answers and none could be started: exactly what to do."""
    base = sb_client.unreachable_message(url)
    if command is None:
        if not is_loopback(url):
            return base + " on that machine (the plug-in starts a daemon only on this one)."
        return base + " (or run `stylebridge gimp-install` again: then the plug-in starts it itself)."
    why = f": {reason}" if reason else ""
    return f"{base} (the plug-in tried to start it with `{' '.join(command)}`{why})."


class DaemonStarter:
    """Starts ``stylebridge serve`` for a loopback URL with the command ``stylebridge gimp-install`` recorded
    (:data:`INSTALL_FILE` in ``plugin_dir``), and follows it until ``/v1/health`` answers. Standard library
    only: the plug-in's run and its dialog both use it."""

    def __init__(self, url: str, token: str | None, plugin_dir: str) -> None:
        self.url, self.token = url, token
        self.command = serve_command(read_install(plugin_dir), url)
        self.proc = None
        self.log_path = None
        self.started = None

    def start(self) -> str | None:
        """Spawn the daemon (it outlives GIMP). Returns None, or the message saying what to do instead."""
        if self.command is None:
            return start_failed_message(self.url, None)
        port = self.command[self.command.index("--port") + 1]
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
            return start_failed_message(self.url, self.command, exc.strerror or str(exc))
        self.started = time.monotonic()
        return None

    def poll(self) -> str | None:
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
            return start_failed_message(self.url, self.command,
                                                 f"it exited with status {code}; {self._log_tail()}")
        if time.monotonic() - self.started > START_TIMEOUT_S:
            return start_failed_message(self.url, self.command,
                                                 f"no answer after {START_TIMEOUT_S:.0f} s; its log: "
                                                 f"{self.log_path}")
        return None

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                lines = fh.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
            return f"its log ({self.log_path}) ends: {lines[-1]}" if lines else f"its log: {self.log_path}"
        except OSError:
            return f"its log: {self.log_path}"


# ------------------------------------------------------------------------------------------------
# the dialog's library and file list
# ------------------------------------------------------------------------------------------------

#: Library thumbnails all get this height (so the check boxes under them line up); wide ones are cropped
#: to THUMB_MAX_WIDTH around their centre rather than shrunk.
THUMB_HEIGHT = 96
THUMB_MAX_WIDTH = 160
IMAGE_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.webp")


def thumb_geometry(width: int, height: int) -> tuple[int, int, int]:
    """(scaled width, height, crop x) for a thumbnail of ``width`` x ``height``: THUMB_HEIGHT high, at most
    THUMB_MAX_WIDTH wide (cropped around the centre)."""
    scaled = max(1, round(width * THUMB_HEIGHT / max(1, height)))
    shown = min(scaled, THUMB_MAX_WIDTH)
    return scaled, THUMB_HEIGHT, (scaled - shown) // 2


def add_files(current: str | None, new: list[str]) -> str:
    """The ``style-files`` value with ``new`` paths added (order kept, no duplicates)."""
    return ";".join(dict.fromkeys(split_list(current, ";") + [p for p in new if p]))


def remove_file(current: str | None, path: str) -> str:
    return ";".join(p for p in split_list(current, ";") if p != path)


def library_add_message(results: list[tuple[str, str | None]]) -> str | None:
    """One message for the files that could not be added ((path, error or None) per file), or None."""
    failed = [f"{os.path.basename(path)}: {error}" for path, error in results if error]
    if not failed:
        return None
    return "Stylebridge: not added to the library: " + "; ".join(failed)


#: Dialog previews: the layer goes at most this big (GIMP's own thumbnail), previews come back this big.
PREVIEW_CONTENT_SIDE = 256
PREVIEW_SIZE = 192


def preview_key(url: str, style: str) -> tuple[str, str]:
    """Previews are cached per daemon and library style (the photo does not change while the dialog is open)."""
    return (url.rstrip("/"), style)


def file_preview_key(url: str, path: str) -> tuple[str, str, int, int]:
    """The cache key of a style file's preview: the daemon, the file and its version (modification time and
    size), so a file taken off the list and added again shows at once while an edited file is previewed anew.
    Raises OSError when there is no file to read (missing, or a folder)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(21, "not a file", path)
    return (url.rstrip("/"), os.path.abspath(path), st.st_mtime_ns, st.st_size)


def preview_answer(got: list[dict]) -> tuple[bytes | None, str | None, dict, bool]:
    """What the daemon's answer to one style's preview means for the dialog: (PNG bytes or None, why there is
    none, its info, keep it in the cache). A style the daemon skipped (its time budget for the request ran
    out) shows the daemon's reason and is asked again next time, not cached."""
    if not got:
        return None, "the daemon sent none", {}, True
    item = got[0]
    if item.get("skipped"):
        return None, str(item.get("error") or "the daemon skipped this preview"), {}, False
    return item.get("png") or None, None, {k: item.get(k) for k in ("width", "height", "method", "seconds")}, True


def unreadable_file_text(exc: OSError) -> str:
    """Why a style file gets no preview (it would fail the job too), and what to do."""
    why = exc.strerror or str(exc)
    return f"the file cannot be read ({why}): remove it from the list or choose it again"


def unreadable_files_message(paths: Iterable[str]) -> str | None:
    """The dialog's answer to OK when a listed style file cannot be read (the job would fail): None when all can."""
    bad = []
    for path in paths:
        try:
            file_preview_key("", path)
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            bad.append(f"{os.path.basename(path)}: {unreadable_file_text(exc)}")
    return ("Stylebridge: " + "; ".join(bad)) if bad else None


# ------------------------------------------------------------------------------------------------
# the temporary preview layer during a run
# ------------------------------------------------------------------------------------------------

#: While a job runs, a layer above the source shows the daemon's current result (GET /v1/jobs/{id}/preview),
#: fetched at most this often; it is never in the undo history and goes when the final layers come in.
PREVIEW_LAYER_NAME = "Stylebridge preview (temporary)"
PREVIEW_ROLE = "temporary-preview"
PREVIEW_EVERY_S = 1.0


def preview_record(job_id: str) -> dict:
    """The parasite that marks the temporary layer (so a run after GIMP killed this one removes it)."""
    return {"plugin": PROC_NAME, "version": RECORD_VERSION, "role": PREVIEW_ROLE, "job": job_id}


def is_preview_record(record: Mapping[str, Any] | None) -> bool:
    return bool(record) and record.get("plugin") == PROC_NAME and record.get("role") == PREVIEW_ROLE


def preview_due(status: Mapping[str, Any], last_fetch: float | None, now: float) -> bool:
    """Fetch the job's preview now? Only once it has one, and at most every PREVIEW_EVERY_S."""
    if not status.get("preview_url") or status.get("status") not in ("running", None):
        return False
    return last_fetch is None or now - last_fetch >= PREVIEW_EVERY_S


# ------------------------------------------------------------------------------------------------
# quality and time estimate: the daemon's presets and its own estimate (POST /v1/estimate)
# ------------------------------------------------------------------------------------------------

def quality_choices(health: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The Quality choices to offer for this daemon: "Daemon default" first, then the registered presets its
    health lists (all of them for a daemon whose health lists none: older than the list)."""
    listed = (health or {}).get("presets")
    names = set(listed) if isinstance(listed, list) else set(PRESET_NAMES)
    return [(k, label) for k, label in QUALITY_CHOICES if k == DAEMON_DEFAULT or k in names]


def estimate_runs(styles: int, regions: int, settings: Mapping[str, Any]) -> int:
    """How many optimisations the job costs (what the daemon's estimate counts as "styles"): one per style, or
    with regions ONE fused run (plus one per style when ``region_style_layers`` asks for them too)."""
    if regions < 1:
        return styles
    return 1 + (styles if settings.get("region_style_layers") is True else 0)


def estimate_request(opts: Options, layer_size: tuple[int, int], styles: int, regions: int = 0) -> dict:
    """The arguments of ``Client.estimate`` for this run: the layer's size, the runs it costs, the job's
    settings."""
    settings = job_settings(opts, mask_used(opts, False))
    runs = estimate_runs(styles, regions, settings)
    return {"width": max(1, int(layer_size[0])), "height": max(1, int(layer_size[1])), "styles": max(1, runs),
            "settings": settings}


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


def estimate_text(answer: Mapping[str, Any] | None, styles: int, quality: str | None = None,
                  regions: int = 0) -> str:
    """The dialog's line for the daemon's estimate (None: the daemon gave none)."""
    if styles < 1:
        return "Time: choose a style"
    if not answer or not isinstance(answer.get("seconds"), (int, float)):
        return ""
    fused = " in one run (regions)" if regions else ""
    text = (f"Time: {duration_text(float(answer['seconds']))} for {styles} style{'s' if styles != 1 else ''}"
            f"{fused} on {answer.get('device') or 'the daemon'}")
    if not answer.get("measured", True):
        text += " (a guess: the service has not measured its speed)"
    words = sb_desk.quality_words(answer)
    if words and quality is not None:
        label = dict(QUALITY_CHOICES).get(quality, quality).split(" (")[0]
        text += f"\nQuality: {label} ({words})"
    return text


def ask_estimate(client: Any, opts: Options, layer_size: tuple[int, int], styles: int, regions: int = 0) -> str:
    """The daemon's estimate for this run as the dialog shows it; what went wrong, in words, if it gave none."""
    if styles < 1:
        return estimate_text(None, styles)
    try:
        return estimate_text(client.estimate(**estimate_request(opts, layer_size, styles, regions), timeout=5),
                             styles, opts.quality, regions)
    except sb_client.DaemonError as exc:
        if exc.status in (404, 405):
            return "Time: this daemon gives no estimate (an older version; pip install -U stylebridge)"
        return f"Time: no estimate: {exc.message}"
    except sb_client.ClientError:
        return ""


# ------------------------------------------------------------------------------------------------
# regions (issue #22): where each style is painted, from the image's channels, layer masks or the selection
# ------------------------------------------------------------------------------------------------

#: Where a style's region comes from (the words the dialog uses).
REGION_KINDS = {"selection": "the selection", "channel": "channel", "layer-mask": "layer mask of"}


@dataclass(frozen=True)
class RegionSource:
    """Where one style's region is read: ``kind`` (``selection|channel|layer-mask``) and the item's name
    (the channel's, or the layer's whose mask it is; "" for the selection)."""

    kind: str
    name: str = ""

    def words(self) -> str:
        if self.kind == "selection":
            return "the selection"
        return f"{REGION_KINDS[self.kind]} '{self.name}'"


def style_names(opts: Options) -> list[str]:
    """Each style's name in the job, in order: a library style's name, a style file's stem (as the plug-in
    names the style layers and the job's ``regions`` keys them)."""
    return list(opts.styles) + [file_stem(p) for p in opts.style_files]


def _norm(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def match_regions(styles: Iterable[str], channels: Iterable[str] = (), masked_layers: Iterable[str] = (),
                  selection_style: str | None = None, has_selection: bool = False) -> dict[str, RegionSource]:
    """Style name -> where its region comes from, for the styles that have one. The selection, when the
    artist chose it for a style (and there is one), wins; then a channel named after the style; then the layer
    mask of a layer named after it (both topmost first, names compared ignoring case and repeated spaces).
    ``masked_layers``: the names of the layers that have a mask, the painted layer itself left out."""
    channels, masked_layers = list(channels), list(masked_layers)
    out: dict[str, RegionSource] = {}
    for style in styles:
        key = _norm(style)
        if selection_style is not None and has_selection and _norm(selection_style) == key:
            out[style] = RegionSource("selection")
        elif any(_norm(c) == key for c in channels):
            out[style] = RegionSource("channel", next(c for c in channels if _norm(c) == key))
        elif any(_norm(n) == key for n in masked_layers):
            out[style] = RegionSource("layer-mask", next(n for n in masked_layers if _norm(n) == key))
    return out


def coverage(mask: bytes) -> float:
    """The share of the photo a grey 8-bit mask covers (0..1): its mean value."""
    return sum(mask) / (255.0 * len(mask)) if mask else 0.0


def region_lines(styles: Iterable[str], found: Mapping[str, RegionSource],
                 covered: Mapping[str, float]) -> list[str]:
    """What the dialog says each style gets: ``Starry Night: channel 'Starry Night' (38 % of the photo)``;
    a style with no region: the whole photo when no style has one, else nothing (the fused run paints only
    the regions). An empty region (black everywhere) is said and not used."""
    styles = list(styles)
    usable = [s for s in styles if s in found and covered.get(s, 0.0) > 0.0]
    lines = []
    for style in styles:
        source = found.get(style)
        if source is None:
            lines.append(f"{style}: whole photo: no region" if not usable else
                         f"{style}: no region: not painted (the others paint only their regions; give it a "
                         f"channel named '{style}' or the selection)")
        elif covered.get(style, 0.0) <= 0.0:
            lines.append(f"{style}: {source.words()} is empty (black everywhere): not used")
        else:
            share = covered[style] * 100.0
            pct = f"{share:.0f}" if share >= 1 else f"{share:.1f}"
            lines.append(f"{style}: {source.words()} ({pct} % of the photo)")
    return lines


def usable_regions(styles: Iterable[str], found: Mapping[str, RegionSource],
                   covered: Mapping[str, float]) -> list[str]:
    """The styles whose region goes with the job, in style order (an empty region is left out: the engine
    would refuse it)."""
    return [s for s in styles if s in found and covered.get(s, 0.0) > 0.0]


def add_regions(job: dict, regions: Iterable[str]) -> dict:
    """The job with ``"regions": {STYLE: {"upload": i}}`` for the region files sent in this order."""
    regions = list(regions)
    if regions:
        job = dict(job, regions={style: {"upload": i} for i, style in enumerate(regions)})
    return job
