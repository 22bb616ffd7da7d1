"""Which settings and styles apply to one dropped file ("one folder = one droplet").

Layers, later ones winning key by key:

1. ``DIR/preset.json`` (the hot folder's own preset),
2. ``DIR/in/SUB/preset.json`` for each sub-folder level between ``in/`` and the file,
3. the sidecar ``NAME.EXT.json`` or ``NAME.json`` that travelled with the file.

Every layer is a JSON object with the CLI's long option names (hyphens or underscores; parsed by
:func:`bridge.settings.settings_from_mapping`, so no default or rule is repeated here), plus:

* ``styles``: a list of style images, each a path (relative to *that* JSON file's folder, or
  absolute), or a daemon library name, or ``{"file": PATH, "name": NAME}`` / ``{"library": NAME}``;
* ``content_layer``: for PSD/PSB inputs, the layer to stylise instead of the composite;
* ``comment``: free text, ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings import DocumentSettings, Settings, SettingsError, load_settings_json, settings_from_mapping

PRESET_NAME = "preset.json"
EXTRA_KEYS = ("styles", "content_layer", "comment")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".psd", ".psb", ".webp", ".bmp", ".gif")


@dataclass(frozen=True)
class StyleRef:
    """A style as named by a preset: an image file, or a name in the daemon's library."""

    name: str
    path: Path | None = None
    library: str | None = None


@dataclass
class Recipe:
    """Everything a job needs to know about *how* to process its file."""

    settings: Settings
    document: DocumentSettings
    styles: list[StyleRef]
    content_layer: str | None = None
    sources: list[str] = field(default_factory=list)   # the JSON files that contributed, for messages
    raw: dict[str, Any] = field(default_factory=dict)  # merged engine/document options (daemon mode)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SettingsError("preset", f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise SettingsError("preset", f"{path}: not UTF-8 text") from None
    try:
        data = load_settings_json(text, "preset")      # capped size, depth and digits: never a crash
    except SettingsError as exc:
        raise SettingsError("preset", f"{path}: {str(exc).split(': ', 1)[-1]}") from None
    if not isinstance(data, dict):
        raise SettingsError("preset", f"{path}: must be a JSON object {{...}}, not {type(data).__name__}")
    return data


def _style_refs(value: Any, base: Path, source: Path) -> list[StyleRef]:
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise SettingsError("styles", f"{source}: must be a list of style files or library names")
    refs: list[StyleRef] = []
    for item in value:
        if isinstance(item, dict):
            unknown = set(item) - {"file", "library", "name"}
            if unknown or ("file" in item) == ("library" in item):
                raise SettingsError("styles", f"{source}: each object needs exactly one of \"file\" or "
                                    f"\"library\" (and optionally \"name\"), got {sorted(item)}")
            if "file" in item:
                ref = _file_ref(str(item["file"]), base, source, must_exist=True)
                refs.append(StyleRef(str(item.get("name") or ref.name), path=ref.path))
            else:
                lib = str(item["library"])
                refs.append(StyleRef(str(item.get("name") or lib), library=lib))
        elif isinstance(item, str) and item.strip():
            refs.append(_file_ref(item.strip(), base, source, must_exist=False))
        else:
            raise SettingsError("styles", f"{source}: {item!r} is neither a file path nor a library name")
    return refs


def _file_ref(text: str, base: Path, source: Path, *, must_exist: bool) -> StyleRef:
    """A path if the file exists (or the text clearly is a path); otherwise a library name."""
    path = Path(text).expanduser()
    # Lexical normalisation: the sidecar's original folder in in/ may be gone by now.
    path = path if path.is_absolute() else Path(os.path.normpath(base / path))
    if path.is_file():
        return StyleRef(path.stem, path=path.resolve())
    looks_like_path = must_exist or "/" in text or "\\" in text or text.lower().endswith(IMAGE_SUFFIXES)
    if looks_like_path:
        raise SettingsError("styles", f"{source}: style file {text!r} not found (looked for {path})")
    return StyleRef(text, library=text)


def _layer(path: Path, *, base: Path | None = None, label: str | None = None
           ) -> tuple[dict[str, Any], list[StyleRef] | None]:
    """One JSON layer: its options (keys normalised to underscores) and its styles if it names any.

    ``label`` is how messages name the file (a sidecar is read from working/ but the user wrote it
    in in/)."""
    try:
        data = {str(k).replace("-", "_"): v for k, v in _read_json(path).items()}
        styles = None
        if "styles" in data:
            styles = _style_refs(data.pop("styles"), base or path.parent, path)
        return data, styles
    except SettingsError as exc:
        if label is None:
            raise
        raise SettingsError(exc.option, str(exc).split(": ", 1)[-1].replace(str(path), label)) from None


def preset_files(root: Path, rel: str) -> list[Path]:
    """The preset.json files that apply to ``in/REL``, outermost first."""
    files = [root / PRESET_NAME]
    folder = root / "in"
    for part in Path(rel).parent.parts:
        folder = folder / part
        files.append(folder / PRESET_NAME)
    return [f for f in files if f.is_file()]


def resolve(root: Path, rel: str, sidecar: Path | None = None, sidecar_name: str | None = None) -> Recipe:
    """The recipe for ``in/REL`` (sidecar = the file's own JSON, wherever it lies now).

    Relative style paths in a sidecar resolve against the input's original folder in ``in/``,
    where the user wrote it, not against ``working/``.
    """
    merged: dict[str, Any] = {}
    styles: list[StyleRef] = []
    sources: list[str] = []
    layers: list[tuple[Path, Path | None, str | None]] = [(p, None, None) for p in preset_files(root, rel)]
    if sidecar is not None:
        origin = root / "in" / Path(rel).parent
        layers.append((sidecar, origin, str(origin / (sidecar_name or sidecar.name))))
    for path, base, label in layers:
        data, refs = _layer(path, base=base, label=label)
        merged.update(data)
        if refs is not None:
            styles = refs
        sources.append(label or str(path))
    merged.pop("comment", None)
    try:
        settings, document, extra = settings_from_mapping(merged, allow_extra=EXTRA_KEYS)
    except SettingsError as exc:
        where = ", ".join(_short(s, root) for s in sources) or "the defaults"
        raise SettingsError(exc.option, f"{str(exc).split(': ', 1)[-1]} (settings from {where})") from None
    content_layer = extra.get("content_layer")
    if content_layer is not None and not isinstance(content_layer, str):
        raise SettingsError("content_layer", "must be a layer name (text)")
    raw = {k: v for k, v in merged.items() if k not in EXTRA_KEYS}
    return Recipe(settings, document, styles, content_layer or None, sources, raw)


def _short(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
