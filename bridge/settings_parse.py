"""Settings as users give them: option names (old ones too), values from text or JSON, bounded JSON.

The CLI, a hot-folder preset, the daemon's ``settings`` field and the GIMP plug-in all hand settings over as
names and raw values; here they become validated :class:`~bridge.settings.Settings` and
:class:`~bridge.settings.DocumentSettings`, with one message per mistake (the nearest valid name, the range).
JSON from outside is read with bounded size, depth and digits (:func:`load_settings_json`). The defaults and
their checks are in :mod:`bridge.settings`, once.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import fields
from typing import Any, Mapping

from .settings import (show_value, DEFAULTS, DOCUMENT_DEFAULTS, LIMITS, NATIVE_SIZE, PRESETS, RENAMED, DocumentSettings, Limits, Settings, SettingsError)


def _field_type(cls: type, name: str) -> str:
    return str({f.name: f.type for f in fields(cls)}[name])


def coerce_value(cls: type, name: str, raw: Any) -> Any:
    """Turn a raw value (JSON or command-line text) into the field's type, or raise SettingsError."""
    typ = _field_type(cls, name)
    try:
        if cls is Settings and name == "size" and isinstance(raw, str) and raw.strip().lower() == "native":
            return NATIVE_SIZE
        if raw is None:
            if "None" in typ:
                return None
            raise SettingsError(name, "a value is required")
        if typ.startswith("tuple[str"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if typ.startswith("tuple[int"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            if any(isinstance(i, bool) or (isinstance(i, float) and not i.is_integer()) for i in items):
                raise SettingsError(name, f"{show_value(raw)} is not a list of whole numbers")
            return tuple(int(str(i).strip()) if isinstance(i, str) else int(i) for i in items if str(i).strip())
        if typ.startswith("tuple[float"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(float(i) for i in items)
        if typ.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise SettingsError(name, f"{show_value(raw)} is not true or false")
        if typ.startswith("int"):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise SettingsError(name, f"{show_value(raw)} is not a whole number")
            return int(raw)
        if typ.startswith("float"):
            if isinstance(raw, bool):
                raise SettingsError(name, f"{show_value(raw)} is not a number")
            return float(raw)
        return str(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(name, f"{show_value(raw)} is not a valid value ({typ})") from None


#: Words users write for a name that is spelled differently here (difflib would not find them).
HINTS: dict[str, str] = {"style": "styles", "strength": "style_strength", "quality": "preset",
                         "mask_mode": "reveal", "colors": "original_colors", "colours": "original_colors",
                         "original_colours": "original_colors"}


def unknown_option_message(key: str, valid: "tuple[str, ...] | list[str]") -> str:
    """"unknown option", plus the closest valid name when there is one (a typo, or a word from another tool)."""
    if key in ("style", "styles") and "styles" not in valid:
        return ("unknown option: styles are not a setting; name them with -s/--style on the command line, the "
                "'styles' field of the daemon's job, or \"styles\" in a hot folder's preset.json")
    guess = HINTS.get(key) if HINTS.get(key) in valid else None
    if guess is None:
        close = difflib.get_close_matches(key, sorted(set(valid)), n=1, cutoff=0.6)
        guess = close[0] if close else None
    return f"unknown option; did you mean {guess.replace('_', '-')!r}?" if guess else "unknown option"


def normalise_keys(values: Mapping[str, Any], notes: "list[str] | None" = None) -> dict[str, Any]:
    """Keys with underscores (``content-weight`` -> ``content_weight``), old names replaced by new ones.

    An old name (:data:`RENAMED`) adds a note for the user to ``notes``; both names at once is an error.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in RENAMED:
            new = RENAMED[name]
            if new in out or any(str(k).replace("-", "_") == new for k in values):
                raise SettingsError(name, f"old name of {new.replace('_', '-')!r}: give only {new.replace('_', '-')!r}")
            if notes is not None:
                notes.append(f"{name.replace('_', '-')!r} is now called {new.replace('_', '-')!r}; the old name "
                             "works in this release only")
            name = new
        out[name] = value
    return out


def settings_from_mapping(values: Mapping[str, Any], *, base: Settings = DEFAULTS,
                          document_base: DocumentSettings = DOCUMENT_DEFAULTS,
                          allow_extra: tuple[str, ...] = (),
                          notes: "list[str] | None" = None) -> tuple[Settings, DocumentSettings, dict[str, Any]]:
    """Split user options (CLI, preset.json, HTTP JSON) into engine and document settings: the one parse.

    ``preset`` (see :data:`PRESETS`) applies first, explicit options override it. Keys named in
    ``allow_extra`` are returned untouched in the third item; any other unknown key is an error that
    names the closest valid option. Old names (:data:`RENAMED`) work and add a line to ``notes``.
    """
    engine_names = {f.name for f in fields(Settings)}
    doc_names = {f.name for f in fields(DocumentSettings)}
    engine: dict[str, Any] = {}
    doc: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    normalised = normalise_keys(values, notes)
    preset = normalised.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise SettingsError("preset", f"{show_value(preset)} is not one of {', '.join(PRESETS)}")
        engine.update(PRESETS[preset])
    for key, raw in normalised.items():
        if key in engine_names:
            engine[key] = coerce_value(Settings, key, raw)
        elif key in doc_names:
            doc[key] = coerce_value(DocumentSettings, key, raw)
        elif key in allow_extra:
            extra[key] = raw
        else:
            raise SettingsError(key, unknown_option_message(key, (*engine_names, *doc_names, *allow_extra,
                                                                   "preset")))
    return dataclasses.replace(base, **engine), dataclasses.replace(document_base, **doc), extra   # validated


class JsonLimitError(SettingsError):
    """Settings JSON over one of the :class:`Limits` caps; ``limit``/``value`` say which and by how much."""

    def __init__(self, option: str, message: str, limit: str, value: int) -> None:
        self.limit, self.value = limit, value
        super().__init__(option, message)


def load_settings_json(text: str | bytes, option: str = "settings", limits: "Limits | None" = None) -> Any:
    """``json.loads`` that only raises :class:`SettingsError`, with caps on size, nesting and digits.

    Python's parser recurses once per nesting level (RecursionError deep down) and refuses integers
    of more than 4300 digits with a plain ValueError; both would surface as "internal error".
    """
    limits = limits or LIMITS
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > limits.max_settings_bytes:
        raise JsonLimitError(option, f"{size:,} bytes of JSON is over the limit of {limits.max_settings_bytes:,} "
                             "bytes; send only the options you change", "max_settings_bytes", size)

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > limits.max_json_digits:
            raise JsonLimitError(option, f"a number of {len(digits.lstrip('-'))} digits is over the limit of "
                                 f"{limits.max_json_digits} digits", "max_json_digits", len(digits.lstrip("-")))
        return int(digits)

    too_deep = JsonLimitError(option, f"JSON nested deeper than the limit of {limits.max_json_depth} levels "
                              "(arrays and objects inside each other)", "max_json_depth", limits.max_json_depth + 1)
    try:
        data = json.loads(text, parse_int=parse_int)
    except json.JSONDecodeError as exc:
        raise SettingsError(option, f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise too_deep from None            # deeper than the parser itself can go
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(option, f"not valid JSON ({exc})") from None
    stack = [(data, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level > limits.max_json_depth:
                raise too_deep
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return data


def settings_from_json(text: str, **kwargs: Any) -> tuple[Settings, DocumentSettings, dict[str, Any]]:
    data = load_settings_json(text)
    if not isinstance(data, dict):
        raise SettingsError("settings", "must be a JSON object")
    return settings_from_mapping(data, **kwargs)
