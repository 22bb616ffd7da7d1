"""One claimed file's inputs: what the file is (by its first bytes), the photo and the style pictures.

The format is decided by the file's first bytes, never by its extension (a JPEG named ``.png`` is
a JPEG; a text file named ``.jpg`` is refused). A file that cannot be used is a
:class:`~.errors.JobError` whose message says what is wrong and whose ``advice`` what to do.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..engine.types import StyleInput
from ..imaging import ImageError, MetadataWarning, Picture, image_kind, image_size, load_image
from ..job import JobSpec, LimitError, Source, check, load_region
from ..settings import LIMITS, SettingsError
from .errors import ADVICE_IMAGE, ADVICE_SETTINGS, ADVICE_SIZE, ADVICE_SPECIAL, ADVICE_WRITE, JobError
from .presets import misplaced_style_hint

# --------------------------------------------------------------------------------------------
# Sniffing


@dataclass(frozen=True)
class Sniffed:
    kind: str                     # "jpeg" | "png" | "tiff" | "webp" | "psd" | "psb"
    width: int | None = None      # known without decoding for PSD/PSB
    height: int | None = None


def sniff(path: Path) -> Sniffed:
    """Identify an input by its content; raise JobError for anything that is not a supported image.

    FIFOs, sockets, devices and folders (or links to them) are refused from ``stat`` alone; the file
    is then opened non-blocking and checked again (``fstat``: same regular file), so a link swapped
    for a FIFO in between can never block the watcher on ``open()``.
    """
    from .layout import regular_file_problem
    problem = regular_file_problem(path)
    if problem is not None:
        raise JobError(problem, ADVICE_SPECIAL)
    try:
        before = os.stat(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
                raise JobError("the file was replaced by something that is not a file while it was read",
                               ADVICE_SPECIAL)
            size = st.st_size
            head = os.pread(fd, 32, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise JobError(f"cannot read the file ({exc.strerror or exc})", ADVICE_WRITE) from None
    if size == 0:
        raise JobError("the file is empty (0 bytes); the copy may have failed")
    kind = image_kind(head)                  # the one table of magic numbers (bridge.imaging.probe)
    if kind in ("psd", "psb") and len(head) >= 26:
        version, = struct.unpack(">H", head[4:6])
        height, width = struct.unpack(">II", head[14:22])
        if version not in (1, 2):
            raise JobError(f"PSD header has version {version}, expected 1 (PSD) or 2 (PSB); the file is damaged")
        return Sniffed(kind, width, height)
    if kind in ("jpeg", "png", "tiff", "webp"):
        return Sniffed(kind)
    raise JobError(f"not a supported image: the content {_describe(head)}, not JPEG, PNG, TIFF or PSD/PSB "
                   "(the file name's extension does not matter)")


def _describe(head: bytes) -> str:
    known = {b"%PDF": "is a PDF document", b"PK\x03\x04": "is a ZIP archive", b"GIF8": "is a GIF image",
             b"BM": "is a BMP image", b"{": "looks like JSON text", b"\x00\x00\x00": "starts with zero bytes"}
    for magic, what in known.items():
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
        if all(c >= 32 or c in (9, 10, 13) for c in head):
            return "looks like plain text"
    except UnicodeDecodeError:
        pass
    return f"starts with unknown bytes {head[:8].hex(' ')}"


# --------------------------------------------------------------------------------------------
# Loading content and styles


@dataclass
class Inputs:
    """One job, read: ``spec`` is the complete job (the preset's styles plus a PSD's ``style:`` layers,
    checked against the limits); ``styles`` the pictures of its non-library styles, in order."""

    content: Picture
    styles: list[StyleInput]
    spec: JobSpec
    source_kind: str
    notes: list[str] = field(default_factory=list)   # what reading dropped (frames, a broken profile...)
    # style name -> where it is painted (float32 0..1, the photo's size) and the file it was decoded from
    # (the preset's mask file, or a PSD channel as PNG): the daemon gets the same bytes, so the same array
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    region_files: dict[str, bytes] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return self.spec.style_names


def load_inputs(path: Path, spec: JobSpec, *, allow_library: bool) -> Inputs:
    """The content picture and the style pictures for one job, or JobError.

    The limits every front end applies (:func:`bridge.job.check`) are checked here, in both modes, once
    the PSD's own style layers are known.  What reading dropped (:class:`~bridge.imaging.MetadataWarning`:
    an animation's later frames, a broken ICC profile) comes back in ``notes``, for the watcher's lines.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetadataWarning)
        inputs = _load_inputs(path, spec, allow_library=allow_library)
    for w in caught:
        if issubclass(w.category, MetadataWarning):
            note = _strip_path(str(w.message), path)
            if note not in inputs.notes:
                inputs.notes.append(note)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return inputs


def _load_inputs(path: Path, spec: JobSpec, *, allow_library: bool) -> Inputs:
    kind = sniff(path)
    stem = spec.name or path.stem
    if spec.settings.native:     # refused from the header, before decoding (the rest is checked below)
        _check_native(spec, (kind.width, kind.height) if kind.width and kind.height else image_size(path))
    psd_styles: list[StyleInput] = []
    channels: dict[str, np.ndarray] = {}
    if kind.kind in ("psd", "psb"):
        if kind.width and kind.height and kind.width * kind.height > LIMITS.max_pixels:
            raise JobError(f"{kind.width}x{kind.height} is {kind.width * kind.height:,} pixels, over the limit "
                           f"of {LIMITS.max_pixels:,}", ADVICE_SIZE)
        content, psd_styles, channels = _load_psd(path, stem, spec.content_layer)
    else:
        if spec.content_layer:
            raise JobError(f"content_layer {spec.content_layer!r} is set but the file is a {kind.kind.upper()}, "
                           "which has no layers", ADVICE_SETTINGS)
        try:
            content = load_image(path, max_pixels=LIMITS.max_pixels, name=stem)
        except ImageError as exc:
            raise JobError(_strip_path(str(exc), path), _image_advice(str(exc))) from None
    if not spec.styles and not psd_styles:
        raise JobError("no style images: name them in preset.json (\"styles\": [\"styles/starry.jpg\"]), "
                       "in a sidecar NAME.json, or as PSD layers named \"style: NAME\"", ADVICE_SETTINGS)
    # a PSD's style layers travel as uploads in daemon mode; here they are styles like the preset's
    spec = replace(spec, styles=spec.styles + tuple(Source(upload=i, name=s.name) for i, s in enumerate(psd_styles)))
    spec, region_files = _region_files(spec, channels)
    check(spec, LIMITS, content_size=(content.width, content.height))   # SettingsError: "bad settings" (error/)
    styles = load_styles(spec, psd_styles, allow_library=allow_library, root=path.parent.parent)  # working/NAME
    regions = {}
    for style, data in region_files.items():
        try:
            regions[style] = load_region(data, (content.width, content.height), style=style,
                                         max_pixels=LIMITS.max_pixels)
        except ImageError as exc:
            raise JobError(str(exc), ADVICE_SETTINGS) from None
    return Inputs(content, styles, spec, kind.kind, regions=regions, region_files=region_files)


def _region_files(spec: JobSpec, channels: dict[str, np.ndarray]) -> tuple[JobSpec, dict[str, bytes]]:
    """The job's regions as the bytes of their files: the preset's mask files, and a PSD's alpha channels named
    after a style of the job (as grey PNG at the channel's depth; they win over the preset's region of that
    style). Channels named after no style (Photoshop's "Alpha 1", saved selections) are left alone."""
    from ..imaging.png import encode_array_png
    names = spec.style_names
    by_fold = {n.casefold(): n for n in names}
    files: dict[str, bytes] = {}
    sources: dict[str, Source] = {}
    for style, src in spec.regions:
        if src.path is None:
            raise JobError(f"the region of {style!r} must be a mask file", ADVICE_SETTINGS)
        try:
            files[style] = Path(src.path).read_bytes()
        except OSError as exc:
            raise JobError(f"region of style {style!r}: cannot read {src.path} ({exc.strerror or exc})",
                           ADVICE_SETTINGS) from None
        sources[style] = src
    for channel, plane in channels.items():
        style = channel if channel in names else by_fold.get(channel.casefold())
        if style is None:
            continue
        files[style] = encode_array_png(plane)
        sources[style] = Source(upload=len(sources), name=f"channel {channel}")
    return replace(spec, regions=tuple(sources.items())), files


def _check_native(spec: JobSpec, size: tuple[int, int] | None) -> None:
    """Size "native" over ``max_native_pixels``: :func:`bridge.job.check`'s refusal, said before the photo
    is decoded; its other findings wait for the full check, once a PSD's own styles are known."""
    if size is None:
        return
    try:
        check(spec, LIMITS, content_size=size)
    except LimitError as exc:
        if exc.limit == "max_native_pixels":
            raise
    except SettingsError:
        pass


def _strip_path(message: str, path: Path) -> str:
    """load_image's messages start with the path; the working/ path means nothing to the user."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _image_advice(message: str) -> str:
    return ADVICE_SIZE if "pixels" in message and "limit" in message else ADVICE_IMAGE


def load_styles(spec: JobSpec, psd_styles: list[StyleInput], *, allow_library: bool,
                root: Path | None = None) -> list[StyleInput]:
    """The pictures of the job's file and PSD-layer styles, named ``spec.style_names`` (library styles: the
    daemon's, so none here)."""
    styles: list[StyleInput] = []
    layers = iter(psd_styles)
    for src, name in zip(spec.styles, spec.style_names):
        if src.library is not None:
            if not allow_library:
                hint = misplaced_style_hint(root, src.library) if root is not None else ""
                raise JobError(f"style {src.library!r} is not a file; library styles need the daemon "
                               f"(stylebridge watch DIR --daemon URL) — or give a path to an image file{hint}",
                               ADVICE_SETTINGS)
            continue
        if src.path is None:                      # a PSD's own "style: NAME" layer
            styles.append(replace(next(layers), name=name))
            continue
        try:
            pic = load_image(src.path, max_pixels=LIMITS.max_pixels, name=name)
        except ImageError as exc:
            raise JobError(f"style image {exc}", ADVICE_SETTINGS) from None
        styles.append(StyleInput(name, pic))
    return styles


def wire_regions(inputs: Inputs) -> tuple[tuple[str, Source], ...]:
    """The job's regions as the daemon takes them: ``{"upload": i}``, the i-th of ``region_files`` being
    ``list(inputs.region_files.values())`` (the same bytes the in-process engine decodes)."""
    return tuple((style, Source(upload=i)) for i, style in enumerate(inputs.region_files))


def _load_psd(path: Path, stem: str, content_layer: str | None
              ) -> tuple[Picture, list[StyleInput], dict[str, np.ndarray]]:
    """Content (composite, or the named layer), the ``style: NAME`` layers and the named alpha channels of a
    PSD/PSB."""
    from ..document.psd_read import read_psd   # psd-tools is heavy; only PSD inputs pay for it
    try:
        doc = read_psd(path, content_layer=content_layer, max_pixels=LIMITS.max_pixels)
    except ImageError as exc:
        message = _strip_path(str(exc), path)
        advice = ADVICE_SETTINGS if "no layer named" in message else _image_advice(message)
        raise JobError(message, advice) from None
    return replace(doc.content, name=stem), list(doc.styles), dict(doc.channels)


#: Settings the hot folder applies itself, in both modes: not sent to the daemon.
HERE_ONLY = ("contact_sheet", "contact_sheet_method")


def contact_sheet(inputs: Inputs) -> tuple[Picture | None, list[str]]:
    """The photo and a fast preview of it under each style whose picture is here (bridge.preview), on one
    sheet; and the names of the styles left out (library styles live in the daemon). None: no style here."""
    from ..preview.sheet import contact_sheet as make_sheet
    from ..settings import PREVIEW
    here = [replace(s.picture, name=s.name) for s in inputs.styles]
    left_out = [src.library for src in inputs.spec.styles if src.library is not None]
    if not here:
        return None, left_out
    method = inputs.spec.document.contact_sheet_method      # "faithful": small runs with the job's settings
    return make_sheet(inputs.content, here, method=method, settings=inputs.spec.settings,
                      tile=PREVIEW.size if method == "instant" else PREVIEW.faithful_size), left_out


def output_suffix(content: Picture) -> str:
    """'.psb' for documents too large for PSD (the PSD writer's own rule)."""
    from ..document.psd import psd_suffix
    return psd_suffix(content.width, content.height)
