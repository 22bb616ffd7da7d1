"""One job, whatever front end it comes from: typed data, parsed once, serialised once at the edge.

Every front end builds a :class:`JobSpec` at its edge and nowhere else:

* the CLI from its arguments (:meth:`JobSpec.build`),
* the hot folder from its preset layers (:meth:`JobSpec.build`, with file or library styles),
* the GIMP plug-in and the hot folder's daemon mode send :meth:`JobSpec.to_json` (the daemon's ``job`` field),
* the daemon rebuilds it with :meth:`JobSpec.from_json` on its own defaults (its ``--preset``, device, weights).

:func:`check` applies the machine-protecting :class:`~bridge.settings.Limits` the same way for all of them.
The settings are parsed and validated once, by :func:`bridge.settings_parse.settings_from_mapping`; the engine and
the layer builder take the typed result as it is.

Only what the user chose travels (``options``): a daemon started with ``--preset draft`` applies its preset
to a job that names none, which a full copy of every default would hide.
"""

from __future__ import annotations

import math
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from . import protocol
from .settings import (DEFAULTS, DOCUMENT_DEFAULTS, LIMITS, RENAMED, REVEAL_CHOICES, DocumentSettings, Limits, Settings, SettingsError)
from .settings_parse import normalise_keys, settings_from_mapping, unknown_option_message

if TYPE_CHECKING:
    import numpy as np

#: The protocol's version (its home is bridge.protocol): sent with each job, checked here.
PROTOCOL_VERSION: int = protocol.PROTOCOL_VERSION

#: Settings a daemon fixes when it starts (the weights are loaded once, on one device).
FIXED_BY_DAEMON = ("device", "weights")
#: Settings that name a file on the machine that runs the engine: not accepted over HTTP.
PATH_OPTIONS = ("init_image",)
#: Limited settings -> the Limits field that bounds them.
LIMITED = {"iterations": "max_iterations", "coarse_iterations": "max_iterations",
           "large_iterations": "max_iterations", "size": "max_size", "min_size": "max_size",
           "base_size": "max_size"}
#: The result of a job with regions: every region painted in one run (file CONTENT_fused.png, layer "Fused").
FUSED = "fused"
#: Old mask words (daemon ``mask_mode``, the GIMP plug-in before 0.2) -> the one vocabulary.
OLD_MASK_WORDS = {"reveal-all": "all", "hide-all": "none", "auto": "first"}


class Priority(str, enum.Enum):
    """How a daemon schedules a job: an artist waiting in the editor, or a batch (hot folder, scripts).

    A ``batch`` job that runs when an ``interactive`` one arrives pauses at a checkpoint and resumes after it.
    """

    INTERACTIVE = "interactive"
    BATCH = "batch"

    def __str__(self) -> str:
        return self.value


class LimitError(SettingsError):
    """A job over one of the machine's :class:`~bridge.settings.Limits`; ``limit``/``value`` say which.

    ``status`` is the HTTP status the daemon answers with (413 for sizes of data, 422 for settings).
    """

    def __init__(self, option: str, message: str, limit: str, value: Any, status: int = 422) -> None:
        self.limit, self.value, self.status = limit, value, status
        super().__init__(option, message)


@dataclass(frozen=True)
class Source:
    """Where one image of a job comes from: exactly one of ``path``, ``library`` or ``upload``.

    ``path``: a file on the machine that runs the engine (CLI, hot folder in-process).
    ``library``: a style in the daemon's library. ``upload``: on the wire, the index of the file in the
    request's ``style_files`` (for styles) or 0 for the ``content``/``mask`` upload. ``name`` names the
    layer (default: the file's or library name).
    """

    path: str | None = None
    library: str | None = None
    upload: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("path", "library", "upload") if getattr(self, k) is not None]
        if len(given) != 1:
            raise SettingsError("styles", f"each image needs exactly one of a file, a library name or an upload "
                                          f"(got {', '.join(given) or 'none'})")

    @property
    def label(self) -> str:
        """The layer name this source gets unless renamed."""
        if self.name:
            return self.name
        if self.library is not None:
            return self.library
        if self.path is not None:
            from pathlib import PurePath
            return PurePath(self.path).stem
        return f"style {self.upload}"

    def to_json(self) -> dict[str, Any]:
        key = "file" if self.path is not None else "library" if self.library is not None else "upload"
        value = self.path if self.path is not None else self.library if self.library is not None else self.upload
        out: dict[str, Any] = {key: value}
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, data: Any, *, what: str = "styles", allow_paths: bool = False) -> "Source":
        """``"Name"`` (a library style), ``{"library": ..}``, ``{"upload": N}`` or ``{"file": PATH}``."""
        if isinstance(data, str) and data.strip():
            return cls(library=data.strip())
        if not isinstance(data, dict):
            raise SettingsError(what, f"{_short(data)} is not a style: give a library name or an object such as "
                                      '{"library": "Starry"} or {"upload": 0}')
        unknown = set(data) - {"file", "library", "upload", "name"}
        if unknown:
            key = sorted(unknown)[0]
            raise SettingsError(what, f"{key!r}: {unknown_option_message(key, ('file', 'library', 'upload', 'name'))}")
        if "file" in data and not allow_paths:
            raise SettingsError(what, "a file path is not accepted here (the daemon reads no path named by a "
                                      "client): upload the file instead")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise SettingsError(what, "\"name\" must be non-empty text")
        upload = data.get("upload")
        if upload is not None and (isinstance(upload, bool) or not isinstance(upload, int) or upload < 0):
            raise SettingsError(what, f"\"upload\" must be the index (0, 1, ...) of an uploaded file, not {_short(upload)}")
        for key in ("file", "library"):
            if key in data and (not isinstance(data[key], str) or not data[key].strip()):
                raise SettingsError(what, f"{key!r} must be non-empty text")
        return cls(path=data.get("file"), library=(data.get("library") or None) and data["library"].strip(),
                   upload=upload, name=name.strip() if isinstance(name, str) else None)


@dataclass(frozen=True)
class JobSpec:
    """What to do: the styles, the settings (typed and validated), the masks, the run's name.

    ``options`` are the settings exactly as the user gave them (underscored names, ``preset`` included):
    what is sent to a daemon, which applies them over its own defaults. ``settings``/``document`` are the
    result on this side's defaults. ``mask`` is one grey mask for every style layer (GIMP: the selection);
    ``style_masks`` one per named style; styles without a mask follow ``document.reveal``.
    ``regions`` (issue #22): style name -> a mask of where that style is painted; with any region the engine
    paints every region in one run, the result ``fused`` (:func:`load_region` decodes them).
    """

    styles: tuple[Source, ...]
    settings: Settings = DEFAULTS
    document: DocumentSettings = DOCUMENT_DEFAULTS
    options: Mapping[str, Any] = field(default_factory=dict)
    content: Source | None = None
    mask: Source | None = None
    style_masks: tuple[tuple[str, Source], ...] = ()
    regions: tuple[tuple[str, Source], ...] = ()
    name: str | None = None
    content_layer: str | None = None      # PSD input: the layer to stylise instead of the composite
    priority: Priority = Priority.INTERACTIVE
    notes: tuple[str, ...] = ()           # deprecation notes for the user (old names that still work)

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, options: Mapping[str, Any], styles: Iterable[Source], *, base: Settings = DEFAULTS,
              document_base: DocumentSettings = DOCUMENT_DEFAULTS, **fields_: Any) -> "JobSpec":
        """Parse ``options`` once (preset first, then the rest) on ``base``; the one place a job is made."""
        notes: list[str] = list(fields_.pop("notes", ()))
        given = normalise_keys(options, notes)
        settings, document, _ = settings_from_mapping(given, base=base, document_base=document_base, notes=None)
        return cls(styles=tuple(styles), settings=settings, document=document, options=given,
                   notes=tuple(notes), **fields_)

    @property
    def style_names(self) -> list[str]:
        """The layer names of the styles, made unique in order (``Name``, ``Name-2``...)."""
        return unique_names(s.label for s in self.styles)

    # -- the wire ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The job as the daemon's ``job`` field carries it (paths must have become uploads first)."""
        out: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "styles": [s.to_json() for s in self.styles],
                               "settings": {k: _plain(v) for k, v in self.options.items()}}
        if self.mask is not None:
            out["mask"] = self.mask.to_json()
        if self.style_masks:
            out["style_masks"] = {name: src.to_json() for name, src in self.style_masks}
        if self.regions:
            out["regions"] = {name: src.to_json() for name, src in self.regions}
        if self.name:
            out["name"] = self.name
        if self.content_layer:
            out["content_layer"] = self.content_layer
        if self.priority != Priority.INTERACTIVE:
            out["priority"] = self.priority.value
        return out

    @classmethod
    def from_json(cls, data: Any, *, base: Settings = DEFAULTS, document_base: DocumentSettings = DOCUMENT_DEFAULTS,
                  allow_paths: bool = False) -> "JobSpec":
        """Rebuild a job sent by :meth:`to_json` (or written by hand), on this side's defaults.

        Raises :class:`SettingsError` naming the field; a newer protocol than this side speaks is refused
        with a message saying which side to upgrade.
        """
        if not isinstance(data, dict):
            raise SettingsError("job", "must be a JSON object")
        check_protocol(data.get("protocol"))
        known = ("protocol", "styles", "settings", "mask", "style_masks", "regions", "name", "content_layer",
                 "priority")
        for key in data:
            if key not in known:
                raise SettingsError("job", f"{key!r}: {unknown_option_message(str(key), known)}")
        raw_styles = data.get("styles", [])
        if isinstance(raw_styles, (str, dict)):
            raw_styles = [raw_styles]
        if not isinstance(raw_styles, list):
            raise SettingsError("styles", "must be a list of styles")
        styles = [Source.from_json(s, allow_paths=allow_paths) for s in raw_styles]
        options = data.get("settings", {})
        if not isinstance(options, dict):
            raise SettingsError("settings", "must be a JSON object")
        mask = Source.from_json(data["mask"], what="mask", allow_paths=allow_paths) if data.get("mask") else None
        raw_masks = data.get("style_masks") or {}
        if not isinstance(raw_masks, dict):
            raise SettingsError("style_masks", "must be an object: style name -> mask")
        style_masks = tuple((str(k), Source.from_json(v, what="style_masks", allow_paths=allow_paths))
                            for k, v in raw_masks.items())
        raw_regions = data.get("regions") or {}
        if not isinstance(raw_regions, dict):
            raise SettingsError("regions", 'must be an object: style name -> mask, e.g. {"Starry": {"upload": 0}}')
        regions = tuple((str(k), Source.from_json(v, what="regions", allow_paths=allow_paths))
                        for k, v in raw_regions.items())
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise SettingsError("name", "must be text")
        layer = data.get("content_layer")
        if layer is not None and not isinstance(layer, str):
            raise SettingsError("content_layer", "must be a layer name (text)")
        priority = data.get("priority", Priority.INTERACTIVE.value)
        if priority not in tuple(p.value for p in Priority):
            raise SettingsError("priority", f"{_short(priority)} is not one of {', '.join(p.value for p in Priority)}")
        return cls.build(options, styles, base=base, document_base=document_base, mask=mask,
                         style_masks=style_masks, regions=regions, name=name or None, content_layer=layer or None,
                         priority=Priority(priority))


def check_protocol(version: Any) -> None:
    """Refuse a job from a newer client (an older one, or none given, is version 1 and still understood)."""
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SettingsError("protocol", f"{_short(version)} is not a protocol version (1, 2, ...)")
    if version > PROTOCOL_VERSION:
        raise LimitError("protocol", f"the client speaks protocol {version}, this daemon speaks {PROTOCOL_VERSION}: "
                                     "upgrade stylebridge where the daemon runs (pip install -U stylebridge) and "
                                     "restart it", "protocol", version, status=409)


def mask_word(value: str) -> str:
    """An old mask word (``reveal-all``, ``hide-all``, ``auto``, daemon ``mask_mode``) -> :class:`Reveal` value."""
    word = OLD_MASK_WORDS.get(value, value)
    if word not in REVEAL_CHOICES:
        raise SettingsError("reveal", f"{_short(value)} is not one of {', '.join(REVEAL_CHOICES)}")
    return word


def check(spec: JobSpec, limits: Limits = LIMITS, *, over_http: bool = False,
          content_size: tuple[int, int] | None = None) -> None:
    """The machine-protecting limits, the same for every front end; raises :class:`LimitError`.

    Also what can only be checked with the whole job in view: one blend weight per style, masks named
    after styles that exist. ``over_http``: the daemon's rules (no paths, no init file). ``content_size``
    (width, height), where the front end knows it: size "native" is refused over ``max_native_pixels``.
    """
    count = len(spec.styles)
    if count == 0:
        raise SettingsError("styles", "no style: give at least one style image or library name")
    if count > limits.max_styles:
        raise LimitError("styles", f"{count} styles is over the limit of {limits.max_styles} per job (max_styles)",
                         "max_styles", count)
    settings = spec.settings
    for option in LIMITED:
        error = None if _native(settings, option) else limit_error(option, getattr(settings, option), limits)
        if error is not None:
            raise error
    if _native(settings, "size") and content_size is not None:
        pixels = int(content_size[0]) * int(content_size[1])
        if pixels > limits.max_native_pixels:
            raise LimitError("size", f"size native: the photo is {content_size[0]}x{content_size[1]} "
                                     f"({pixels / 1e6:.1f} MP), over the limit of {limits.max_native_pixels / 1e6:.0f} MP "
                                     "for optimising at the photo's own size (max_native_pixels); use a working "
                                     f"size (at most {limits.max_size} px) or scale the photo down",
                             "max_native_pixels", pixels, status=413)
    weights = settings.style_blend_weights
    if weights is not None and len(weights) != count:
        raise SettingsError("style_blend_weights", f"{len(weights)} weights given for {count} styles")
    layers = spec.style_names + (["blend"] if weights is not None else [])     # the blended result has a layer too
    for style, _ in spec.style_masks:
        if style not in layers:
            raise SettingsError("style_masks", f"{style!r}: no such style (styles: {', '.join(layers)})")
    check_regions(spec)
    if over_http:
        for option in PATH_OPTIONS:
            if option in spec.options:
                raise SettingsError(option, "not available over HTTP (the daemon reads no path named by a client)")
        if settings.init == "file":
            raise SettingsError("init", "'file' is not available over HTTP (the daemon does not read paths named "
                                        "by clients); use init content or random")
        for src in (*spec.styles, *(m for _, m in spec.style_masks), *(m for _, m in spec.regions),
                    *((spec.mask,) if spec.mask else ())):
            if src.path is not None:
                raise SettingsError("styles", "a file path is not accepted over HTTP: upload the file instead")


def check_regions(spec: JobSpec) -> None:
    """Regions name styles of the job, each once; the blended result has no place in one fused run."""
    names = spec.style_names
    seen: set[str] = set()
    for style, _ in spec.regions:
        if style not in names:
            raise SettingsError("regions", f"{style!r}: no such style (styles: {', '.join(names)}); name a "
                                           "region after the style it is painted with")
        if style in seen:
            raise SettingsError("regions", f"{style!r}: given twice; give one region per style")
        seen.add(style)
    if spec.regions and spec.settings.style_blend_weights is not None:
        raise SettingsError("regions", "regions and style_blend_weights cannot be combined: regions paint each "
                                       "style where it goes; drop one of them")


def region_names(spec: JobSpec) -> list[str]:
    """The results of a job, in the engine's order: each style (and the blend), or with regions ``fused``
    (after each style's own result with ``region_style_layers``)."""
    names = spec.style_names + (["blend"] if spec.settings.style_blend_weights is not None else [])
    if not spec.regions:
        return names
    return (names if spec.settings.region_style_layers else []) + [FUSED]


def load_region(source: Any, size: tuple[int, int], *, style: str,
                max_pixels: int = LIMITS.max_pixels) -> "np.ndarray":
    """One region's mask (a path or the file's bytes) as H x W float32 0..1 at the photo's ``size`` (width,
    height): grey, colour and alpha as :func:`bridge.imaging.load_mask` reads a mask; a mask of another size but
    the photo's shape is resized (a region drawn on a smaller copy). ImageError, naming the style, for a mask of
    another shape or one that covers nothing."""
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from .imaging import ImageError, load_mask
    from .imaging.probe import probe

    what = f"region of style {style!r}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        what = f"{what} ({path})"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{what}: no such file") from None
        except OSError as exc:
            raise ImageError(f"{what}: cannot read the file ({exc.strerror or exc})") from None
    width, height = int(size[0]), int(size[1])
    try:
        info = probe(io.BytesIO(data))
        got = (int(info.width), int(info.height))
    except Exception:  # noqa: BLE001 - an unreadable header: load_mask says what is wrong
        got = (width, height)
    if got[0] * got[1] > max_pixels:
        raise ImageError(f"{what}: {got[0]}x{got[1]} is over the limit of {max_pixels:,} pixels")
    if abs(got[0] * height - got[1] * width) > max(width, height, got[0], got[1]):
        raise ImageError(f"{what}: is {got[0]}x{got[1]}, not the shape of the photo ({width}x{height}); "
                         "export the region at the photo's size")
    try:
        grey = load_mask(data, got, max_pixels=max_pixels)
    except ImageError as exc:
        text = str(exc)
        raise ImageError(f"{what}: {text.removeprefix('upload: ')}") from None
    if grey.shape != (height, width):
        image = Image.fromarray(np.ascontiguousarray(grey, np.float32))          # mode "F"
        grey = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    grey = np.clip(grey, 0.0, 1.0).astype(np.float32, copy=False)
    check_region(grey, style)
    return grey


def check_region(region: "np.ndarray", style: str) -> None:
    """A region that covers no pixel would paint its style nowhere: a mistake (a black or empty mask)."""
    from .imaging import ImageError
    if not float(region.max(initial=0.0)) > 0.0:
        raise ImageError(f"region of style {style!r}: the mask is black everywhere, so the style would be painted "
                         "nowhere; paint the region white where the style goes")


def limit_error(option: str, value: Any, limits: Limits = LIMITS) -> LimitError | None:
    """The :class:`LimitError` for ``value`` of a :data:`LIMITED` option over its limit, else None.

    :func:`check` applies it to parsed settings; a front end also applies it to a raw value that the
    parse refused for being over the field's own (wider) range, so the user hears the limit that applies.
    Raw values may be text or floats (``"9000"``, ``1e6``).
    """
    limit_name = LIMITED.get(option)
    if limit_name is None:
        return None
    limit = getattr(limits, limit_name)
    if isinstance(value, (tuple, list)):          # large_iterations: the largest of the stages' counts
        numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        value = max(numbers, default=0)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= limit:
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 1e18:
            value = int(value)
    unit = " px" if limit_name == "max_size" else ""
    return LimitError(option, f"{value} is over the limit of {limit}{unit} ({limit_name}); use at most {limit}",
                      limit_name, value)


def _native(settings: Settings, option: str) -> bool:
    """True when the option's value means "the photo's native size" (no working-size cap applies)."""
    return bool(getattr(settings, "native", False)) and option == "size"


def unique_names(names: Iterable[str], reserved: Iterable[str] = ("blend", "fused")) -> list[str]:
    """``a, a, b`` -> ``a, a-2, b``: the one rule for layer and result names (``blend`` and ``fused``, the
    regions' result, are taken)."""
    used: set[str] = set(reserved)
    out: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate in used:
            candidate, n = f"{name}-{n}", n + 1
        used.add(candidate)
        out.append(candidate)
    return out


def _plain(value: Any) -> Any:
    """A setting's value as JSON has it (tuples as lists, enums as their text)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value"), (str, int)):
        return value.value
    return value


def _short(value: Any) -> str:
    text = repr(value) if not (isinstance(value, int) and abs(value) > 10 ** 30) else "a huge number"
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["PROTOCOL_VERSION", "FIXED_BY_DAEMON", "FUSED", "LimitError", "check_region", "check_regions",
           "load_region", "region_names", "Priority", "Source", "JobSpec", "check", "check_protocol",
           "limit_error",
           "mask_word", "unique_names", "RENAMED"]
