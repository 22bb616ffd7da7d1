"""Which settings and styles apply to one dropped file ("one folder = one droplet").

Layers, later ones winning key by key:

1. ``DIR/preset.json`` (the hot folder's own preset),
2. ``DIR/in/SUB/preset.json`` for each sub-folder level between ``in/`` and the file,
3. the sidecar ``NAME.EXT.json`` or ``NAME.json`` that travelled with the file.

Every layer is a JSON object with the CLI's long option names (hyphens or underscores; parsed by
:func:`bridge.settings_parse.settings_from_mapping`, so no default or rule is repeated here), plus:

* ``styles``: a list of style images, each a path (relative to *that* JSON file's folder, or
  absolute), or a daemon library name, or ``{"file": PATH, "name": NAME}`` / ``{"library": NAME}``;
* ``content_layer``: for PSD/PSB inputs, the layer to stylise instead of the composite;
* ``regions``: ``{"STYLE": "left.png", ...}``, where each style is painted (a grey image, white = this style;
  paths as for ``styles``, relative to that JSON file's folder): one run paints every region (issue #22).
  A PSD input's alpha channels named after its styles are regions too (they win over the preset's);
* ``comment``: free text, ignored.

The result is one :class:`bridge.job.JobSpec` (built by :meth:`JobSpec.build`, the one parse every
front end uses); old names still work for one release and leave a note in ``spec.notes`` (the watcher
prints them): ``preserve_colors``, ``mask_mode``, and the mask words ``reveal-all``/``hide-all``/``auto``.
An unknown key names the closest valid one (``"style"``: did you mean ``styles``?).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..job import OLD_MASK_WORDS, JobSpec, Source, mask_word
from .layout import STATE_DIR
from ..settings import RENAMED, DocumentSettings, Settings, SettingsError
from ..settings_parse import load_settings_json, unknown_option_message

PRESET_NAME = "preset.json"
EXTRA_KEYS = ("styles", "content_layer", "regions", "comment")
#: The folders the watcher moves and writes files in: no place for a style image.
MANAGED_FOLDERS = ("in", "working", "out", "done", "error", STATE_DIR)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".psd", ".psb", ".webp", ".bmp", ".gif")
#: Every key a preset layer may hold: settings, the preset's own fields, old names that still work.
VALID_KEYS: tuple[str, ...] = (*(f.name for f in dataclasses.fields(Settings)),
                               *(f.name for f in dataclasses.fields(DocumentSettings)),
                               "preset", *EXTRA_KEYS, *RENAMED, "mask_mode")


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


def _styles(value: Any, base: Path, source: Path, root: Path | None = None) -> list[Source]:
    """A layer's ``styles``: file paths (relative to ``base``) and daemon library names, as job Sources."""
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list):
        raise SettingsError("styles", f"{source}: must be a list of style files or library names")
    out: list[Source] = []
    for item in value:
        if isinstance(item, dict):
            unknown = set(item) - {"file", "library", "name"}
            if unknown or ("file" in item) == ("library" in item):
                raise SettingsError("styles", f"{source}: each object needs exactly one of \"file\" or "
                                    f"\"library\" (and optionally \"name\"), got {sorted(item)}")
            name = str(item["name"]).strip() if item.get("name") else None
            if "file" in item:
                out.append(dataclasses.replace(_file_source(str(item["file"]), base, source, must_exist=True,
                                                            root=root), name=name))
            else:
                out.append(Source(library=str(item["library"]), name=name))
        elif isinstance(item, str) and item.strip():
            out.append(_file_source(item.strip(), base, source, must_exist=False, root=root))
        else:
            raise SettingsError("styles", f"{source}: {item!r} is neither a file path nor a library name")
    return out


def _regions(value: Any, base: Path, source: Path, root: Path | None = None) -> tuple[tuple[str, Source], ...]:
    """A layer's ``regions``: style name -> mask file (relative to ``base``), checked like its style files."""
    if not isinstance(value, dict):
        raise SettingsError("regions", f"{source}: must be an object: style name -> mask image, e.g. "
                                       '{"Starry": "regions/sky.png"}')
    out = []
    for style, item in value.items():
        if isinstance(item, dict) and set(item) == {"file"}:
            item = item["file"]
        if not isinstance(item, str) or not item.strip():
            raise SettingsError("regions", f"{source}: the region of {style!r} must be a mask file's path, not "
                                           f"{item!r}")
        try:
            found = _file_source(item.strip(), base, source, must_exist=True, root=root)
        except SettingsError as exc:
            raise SettingsError("regions", str(exc).split(": ", 1)[-1].replace("style file", "region file")
                                .replace("style ", f"region of {style!r} ", 1)) from None
        out.append((str(style), found))
    return tuple(out)


def _file_source(text: str, base: Path, source: Path, *, must_exist: bool, root: Path | None = None) -> Source:
    """A path if the file exists (or the text clearly is a path); otherwise a library name.

    A path into one of the hot folder's own folders (``root``/in, out, ...) is refused: the watcher takes,
    moves and writes files there, so such a style is taken as a photo, or is gone by the next job.
    """
    path = Path(text).expanduser()
    # Lexical normalisation: the sidecar's original folder in in/ may be gone by now.
    path = path if path.is_absolute() else Path(os.path.normpath(base / path))
    looks_like_path = must_exist or "/" in text or "\\" in text or text.lower().endswith(IMAGE_SUFFIXES)
    folder = _managed_folder(path, root) if root is not None else None
    if folder is not None and (looks_like_path or os.path.lexists(path)):
        raise SettingsError("styles", f"{source}: style {text!r} points into the hot folder's own {folder}/ folder "
                                      f"({path}), where the watcher takes, moves and writes files: keep style "
                                      f"images outside in/, working/, out/, done/, error/ (e.g. in "
                                      f"{root / 'styles'}) and name them from there")
    if path.is_file():
        return Source(path=str(path.resolve()))
    if looks_like_path:
        raise SettingsError("styles", f"{source}: style file {text!r} not found (looked for {path})")
    return Source(library=text)


def misplaced_style_hint(root: Path, name: str) -> str:
    """For a library style the daemon (or this process) does not have: when a style image of that name sits in
    one of the hot folder's own folders (``out/mine.png`` for ``"mine"``), say so and where it belongs; else ""."""
    if not name or "/" in name or "\\" in name:
        return ""
    for folder in MANAGED_FOLDERS:
        for suffix in IMAGE_SUFFIXES:
            candidate = root / folder / f"{name}{suffix}"
            if candidate.is_file():
                return (f" (there is {folder}/{candidate.name}, but style images may not be in the hot folder's own "
                        f"{folder}/ folder, where the watcher takes, moves and writes files: move it to "
                        f"{root / 'styles'} and name it \"styles/{candidate.name}\")")
    return ""


def _managed_folder(path: Path, root: Path) -> str | None:
    """The name of the hot folder's own folder (in, out, ...) that ``path`` is in or names, else None;
    by the path as written and by where its links lead."""
    pairs = [(path, root)]
    try:
        pairs.append((path.resolve(), root.resolve()))
    except (OSError, RuntimeError):
        pass
    for candidate, top in pairs:
        for name in MANAGED_FOLDERS:
            folder = top / name
            if candidate == folder or folder in candidate.parents:
                return name
    return None


def _layer(path: Path, *, base: Path | None = None, label: str | None = None, root: Path | None = None
           ) -> tuple[dict[str, Any], list[Source] | None]:
    """One JSON layer: its options (keys normalised to underscores) and its styles if it names any.

    ``label`` is how messages name the file (a sidecar is read from working/ but the user wrote it
    in in/)."""
    try:
        data = {str(k).replace("-", "_"): v for k, v in _read_json(path).items()}
        for key in data:
            if key not in VALID_KEYS:     # "style" -> did you mean 'styles'?
                raise SettingsError(key, f"{unknown_option_message(key, VALID_KEYS)} (in {path})")
        styles = None
        if "styles" in data:
            styles = _styles(data.pop("styles"), base or path.parent, path, root)
        if "regions" in data:
            data["regions"] = _regions(data["regions"], base or path.parent, path, root)
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


def _mask_words(merged: dict[str, Any], notes: list[str]) -> None:
    """Old mask words (``mask_mode``, ``reveal-all``...) -> ``reveal`` in the one vocabulary, with a note."""
    if "mask_mode" in merged:
        if "reveal" in merged:
            raise SettingsError("mask_mode", "old name of 'reveal': give only 'reveal'")
        merged["reveal"] = merged.pop("mask_mode")
        notes.append("'mask-mode' is now called 'reveal'; the old name works in this release only")
    word = merged.get("reveal")
    if isinstance(word, str) and word in OLD_MASK_WORDS:
        merged["reveal"] = mask_word(word)
        notes.append(f"reveal {word!r} is now {merged['reveal']!r}; the old word works in this release only")


def resolve(root: Path, rel: str, sidecar: Path | None = None, sidecar_name: str | None = None) -> JobSpec:
    """The job for ``in/REL`` (sidecar = the file's own JSON, wherever it lies now), parsed once.

    Relative style paths in a sidecar resolve against the input's original folder in ``in/``,
    where the user wrote it, not against ``working/``. The job's ``name`` is the file's stem; styles a
    PSD input carries as layers are added when it is read (:func:`bridge.hotfolder.inputs.load_inputs`).
    """
    merged: dict[str, Any] = {}
    styles: list[Source] = []
    sources: list[str] = []
    layers: list[tuple[Path, Path | None, str | None]] = [(p, None, None) for p in preset_files(root, rel)]
    if sidecar is not None:
        origin = root / "in" / Path(rel).parent
        layers.append((sidecar, origin, str(origin / (sidecar_name or sidecar.name))))
    for path, base, label in layers:
        data, found = _layer(path, base=base, label=label, root=root)
        merged.update(data)
        if found is not None:
            styles = found
        sources.append(label or str(path))
    merged.pop("comment", None)
    content_layer = merged.pop("content_layer", None)
    regions = merged.pop("regions", ())
    notes: list[str] = []
    try:
        if content_layer is not None and not isinstance(content_layer, str):
            raise SettingsError("content_layer", "must be a layer name (text)")
        _mask_words(merged, notes)
        spec = JobSpec.build(merged, styles, name=Path(rel).stem, content_layer=content_layer or None,
                             regions=regions, notes=notes)
    except SettingsError as exc:
        where = ", ".join(_short(s, root) for s in sources) or "the defaults"
        raise SettingsError(exc.option, f"{str(exc).split(': ', 1)[-1]} (settings from {where})") from None
    return spec


def _short(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path
