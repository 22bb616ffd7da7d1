"""``stylebridge stylize``: photo + style images in, one PNG per style (or a layered PSD/PSB) out.

Every engine and document setting is an option generated from the dataclasses in
:mod:`bridge.settings` (their help, choices and defaults); only options the user typed are passed
to :func:`bridge.settings_parse.settings_from_mapping`, which owns defaults and validation.

Exit codes: 0 done; 2 bad input or an output that cannot be written (found before any work, nothing
written); 1 failure during the work or while writing (a result that cannot be written where asked is saved
in a temporary folder, and the message says where); 130 interrupted (Ctrl-C once: the optimisation stops and
the best result so far is written, with a note; Ctrl-C twice: stop at once).

Outputs never replace a file: each is claimed under its name or the first free ``NAME-2``... at the moment
it is written (:mod:`bridge.outputs`), so concurrent runs with the same ``-o`` each get their own file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..imaging import ImageError, Picture, image_size, load_image, load_mask, save_image
from ..job import JobSpec, Source, check, load_region, region_names
from ..outputs import OutputError, check_name, explain, nearest_existing, probe_writable
from ..pipeline import FailureKind, LoadedJob, Rendered, classify, render
from ..settings import (
    DEFAULTS,
    DOCUMENT_DEFAULTS,
    LIMITS,
    PRESETS,
    DocumentSettings,
    Settings,
    SettingsError,
)
from . import CliError

DOCUMENT_SUFFIXES = (".psd", ".psb")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".webp")
_DEST = "setting__"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "stylize", help="stylise a photo with one or more style images",
        description="Stylise CONTENT with each STYLE (Gatys neural style transfer). OUT is a folder "
                    "(one PNG per style, named CONTENT_STYLE.png), a .psd/.psb file (one layered document), "
                    "or an image file (.png, .tif, .jpg, .webp) when there is one result.",
        epilog="OUT is a folder when it ends in / or names an existing folder or has no extension; it is "
               "created if its parent exists (ending OUT in / creates the missing parents too); so is the "
               "folder of an OUT file. Nothing is ever replaced: a taken name becomes NAME-2, NAME-3... and the "
               "names written are printed. Where OUT cannot be written (read-only, no such folder, name too "
               "long) the run stops before any work, with exit code 2. "
               "Regions: --region STYLE=MASK (once per style) paints each style only where its mask is white, all "
               "in one run: the result is CONTENT_fused.png in a folder, or the layer \"Fused\" at the top of the "
               "Styles group of a .psd/.psb (masked by the union of the regions: pixels in no region show the "
               "photo); add --region-style-layers to also get each style painted over the whole photo (one more "
               "run per style).")
    p.add_argument("content", metavar="CONTENT", help="the photo")
    p.add_argument("-s", "--style", dest="styles", action="append", required=True, metavar="STYLE",
                   help="a style image (repeat for several styles)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (end it in / to create missing parents), .psd/.psb, or image file")
    p.add_argument("--preset", choices=tuple(PRESETS), default=argparse.SUPPRESS,
                   help="quality preset (size and iterations); explicit options override it")
    p.add_argument("--mask", metavar="FILE", help="grayscale mask (photo size) for every style layer (PSD only)")
    p.add_argument("--style-mask", action="append", default=[], metavar="STYLE=FILE",
                   help="grayscale mask for one style layer, by style name (PSD only; repeatable)")
    p.add_argument("--region", dest="regions", action="append", default=[], metavar="STYLE=MASK",
                   help="where one style is painted: a grey image (white = this style), at the photo's size or "
                        "shape, by style name (repeatable); all regions are painted in one run, the result "
                        "\"fused\" (see below)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no list of written files")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_setting_options(p.add_argument_group("engine settings"), Settings, DEFAULTS)
    _add_setting_options(p.add_argument_group("document settings (PSD/PSB output)"), DocumentSettings,
                         DOCUMENT_DEFAULTS)
    p.set_defaults(func=run)


def _add_setting_options(group: argparse._ArgumentGroup, cls: type, defaults: Any) -> None:
    """One long option per dataclass field; nothing set unless typed (argparse.SUPPRESS)."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = str(meta.get("help", ""))
        if meta.get("choices"):
            help_text += f" [{', '.join(meta['choices'])}]"
        help_text += f" (default: {shown})"
        if str(f.type).startswith("bool"):
            group.add_argument(flag, dest=_DEST + f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            metavar = "LIST" if str(f.type).startswith("tuple") else f.name.upper()
            group.add_argument(flag, dest=_DEST + f.name, default=argparse.SUPPRESS, metavar=metavar,
                               help=help_text.replace("%", "%%"))


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user typed (plus --preset), as raw values for settings_from_mapping."""
    values = {k[len(_DEST):]: v for k, v in vars(args).items() if k.startswith(_DEST)}
    if getattr(args, "preset", None) is not None:
        values["preset"] = args.preset
    return values


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        request = _prepare(args)
    except (CliError, OutputError, SettingsError, ImageError, ValueError) as exc:
        return _fail(exc)
    for note in request.spec.notes:
        print(f"stylebridge: note: {note}", file=sys.stderr)
    prepared = time.perf_counter()
    try:
        rendered = _stylize(request, args)
    except Exception as exc:     # settings, weights, device, memory, a bug: one line (pipeline.classify)
        failure = classify(exc)
        if failure.exit_code == 2:
            return _fail(failure.message)
        advice = f": {failure.advice}" if failure.kind in (FailureKind.MEMORY, FailureKind.ENGINE) else ""
        return _fail(f"stylisation failed: {failure.message}{advice}", code=failure.exit_code)
    if rendered is None:   # interrupted before the first result existed
        print("stylebridge: interrupted: nothing written", file=sys.stderr)
        return 130
    stylized = time.perf_counter()
    try:
        written, problems = _write(request, rendered)
    except (CliError, ValueError) as exc:
        return _fail(exc)
    finished = time.perf_counter()
    cancelled = rendered.result.cancelled
    if cancelled:
        print("stylebridge: interrupted: wrote the best result so far (optimisation not finished)",
              file=sys.stderr)
    for line in problems:
        print(f"stylebridge: {line}", file=sys.stderr)
    if args.json:
        timings = {"prepare": prepared - started, "stylize": stylized - prepared, "write": finished - stylized}
        summary = _summary(request, rendered.result, written, timings)
        if problems:
            summary["errors"] = problems
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        for path in written:
            if path is not None:
                print(path)
    if problems:
        return 1
    return 130 if cancelled else 0


def _fail(exc: Exception | str, code: int = 2) -> int:
    print(f"stylebridge: error: {exc}", file=sys.stderr)
    return code


@dataclasses.dataclass
class _Request:
    """What the command line asks for: the job, loaded and checked (what :func:`bridge.pipeline.render` runs),
    and where its outputs go."""

    spec: JobSpec                    # what to do: parsed and checked once (bridge.job)
    loaded: LoadedJob                # the photo, the styles (named spec.style_names), masks and regions
    output: Path
    kind: str                        # "folder" | "document" | "image"
    make_parents: bool = False       # folder output given with a trailing /: create missing parents too


def build_spec(args: argparse.Namespace) -> JobSpec:
    """The command line as one :class:`~bridge.job.JobSpec` (the one parse), checked against the limits
    every front end applies (:func:`bridge.job.check`)."""
    styles = [Source(path=path, name=_safe(Path(path).stem)) for path in args.styles]
    style_masks: list[tuple[str, Source]] = []
    for item in args.style_mask:
        style, sep, path = item.partition("=")
        if not sep or not style or not path:
            raise CliError(f"--style-mask {item!r}: expected STYLE=FILE")
        style_masks.append((style, Source(path=path)))
    regions: list[tuple[str, Source]] = []
    for item in getattr(args, "regions", []):
        style, sep, path = item.partition("=")
        if not sep or not style or not path:
            raise CliError(f"--region {item!r}: expected STYLE=MASK (a style's name, = and a grey image)")
        regions.append((style, Source(path=path)))
    spec = JobSpec.build(given_options(args), styles, mask=Source(path=args.mask) if args.mask else None,
                         style_masks=tuple(style_masks), regions=tuple(regions), name=_safe(Path(args.content).stem))
    try:
        check(spec, LIMITS)
    except SettingsError as exc:
        if exc.option in ("style_masks", "regions"):      # say it with the option the user typed
            flag = "--style-mask" if exc.option == "style_masks" else "--region"
            raise CliError(f"{flag} {str(exc).split(': ', 1)[-1]}") from None
        raise
    return spec


def _prepare(args: argparse.Namespace) -> _Request:
    """Everything that can be wrong with the input is found here, before any work or any file is written."""
    from ..engine.types import StyleInput

    spec = build_spec(args)
    settings = spec.settings
    if settings.native:        # size native: its pixel cap needs the photo's size (the rest was checked above)
        size = image_size(args.content)     # from the header: refused before decoding, as the daemon does
        if size is not None:
            check(spec, LIMITS, content_size=size)
    if settings.init == "file":
        load_image(settings.init_image or "")
    content = load_image(args.content)
    if settings.native:
        check(spec, LIMITS, content_size=(content.width, content.height))
    styles: list[StyleInput] = []
    for src, name in zip(spec.styles, spec.style_names):
        pic = load_image(src.path or "")
        styles.append(StyleInput(name, dataclasses.replace(pic, name=name)))
    names = region_names(spec)
    regions = {style: load_region(src.path or "", (content.width, content.height), style=style)
               for style, src in spec.regions}
    output, kind = _output_kind(args.output)
    if kind == "image" and len(names) != 1:
        raise CliError(f"{output}: {len(names)} results need a folder or a .psd/.psb as OUT")
    if kind != "document" and (spec.mask or spec.style_masks):
        raise CliError("--mask and --style-mask apply to .psd/.psb output only")
    mask, style_masks = _masks(spec, content) if kind == "document" else (None, {})
    if kind == "document":
        _import_document()
    files = [f"{_safe(content.name)}_{n}.png" for n in names] if kind == "folder" else [output.name]
    make_parents = kind == "folder" and args.output.endswith(("/", os.sep))
    _check_output(output, kind, files, make_parents)
    loaded = LoadedJob(content, styles, spec.settings, spec.document, mask=mask, style_masks=style_masks,
                       regions=regions)
    return _Request(spec, loaded, output, kind, make_parents)


def _output_kind(raw: str) -> tuple[Path, str]:
    """What OUT names: "folder", "document" (.psd/.psb) or "image"; any other extension is a mistake."""
    output = Path(raw)
    if raw.endswith(("/", os.sep)) or os.path.isdir(output):
        return output, "folder"
    if os.path.lexists(output) and not os.path.isfile(output):
        raise CliError(f"{output}: exists and is not a folder or a file: choose another OUT")
    suffix = output.suffix.lower()
    if suffix in DOCUMENT_SUFFIXES:
        return output, "document"
    if suffix in IMAGE_SUFFIXES:
        return output, "image"
    if suffix:
        raise CliError(f"{output}: {output.suffix!r} is not a type stylebridge writes: use "
                       f"{', '.join(IMAGE_SUFFIXES)} for one image, .psd or .psb for a layered document, or a "
                       f"folder (end OUT with / for a folder whose name has a dot)")
    if os.path.lexists(output):
        raise CliError(f"{output}: exists and is not a folder")
    return output, "folder"


def _check_output(output: Path, kind: str, files: list[str], make_parents: bool) -> None:
    """Before any work: the folder exists (or may be created), is writable, and every name fits.

    The folder that receives the results (OUT itself, or an OUT file's folder) is created when its
    parent exists, or with all missing parents when OUT is a folder ending in /; a deeper missing path
    is refused (``mkdir -p`` of a mistyped path would hide the mistake).
    """
    folder = output if kind == "folder" else output.parent
    base = nearest_existing(folder)
    if not os.path.isdir(base):
        raise CliError(f"{base}: exists and is not a folder, so nothing can be written inside it: "
                       f"choose another OUT")
    missing = Path(os.path.abspath(folder)).relative_to(base).parts
    if missing and not (make_parents or len(missing) == 1):
        absent = folder.parent
        hint = " or end OUT with / to have it created," if kind == "folder" else ""
        raise CliError(f"{absent}: no such folder: check the spelling,{hint} or create it first "
                       f"(mkdir -p {shlex.quote(str(absent))})")
    for part in missing:
        check_name(base, part, what="folder name")
    probe_writable(base)
    what = "output name (made of the photo's and style's names)" if kind == "folder" else "output name"
    for name in files:
        check_name(folder, name, what=what)
    try:
        path_max = int(os.pathconf(base, "PC_PATH_MAX"))
    except (OSError, ValueError):
        path_max = 4096
    longest = max(len(os.fsencode(os.path.abspath(folder / n))) for n in files) + 20   # + "-NN" and temp suffix
    if longest > path_max:
        raise OutputError(f"{folder}: the output path would be about {longest} bytes long; the system allows "
                          f"{path_max}: choose a shorter OUT")


def _masks(spec: JobSpec, content: Picture) -> tuple[Any, dict[str, Any]]:
    """The mask files, read at the photo's size: the one for every layer (or None) and those per named style
    (:attr:`bridge.pipeline.LoadedJob.masks` combines them, as for the daemon's jobs)."""
    def read(src: Source) -> Any:
        path = src.path or ""
        try:
            return load_mask(path, (content.width, content.height))   # float32 0..1, photo-sized
        except ImageError as exc:
            raise CliError(str(exc) if path in str(exc) else f"{path}: {exc}") from None

    return (read(spec.mask) if spec.mask else None), {style: read(src) for style, src in spec.style_masks}


def _import_document() -> Any:
    try:
        from ..document import psd, stack
    except ImportError as exc:
        raise CliError(f"PSD output is not available in this installation ({exc})") from None
    return stack, psd


def _safe(name: str) -> str:
    cleaned = re.sub(r"[^\w.\- ]+", "_", name).strip(" .")
    return cleaned or "style"


def _stylize(request: _Request, args: argparse.Namespace) -> "Rendered | None":
    """The one run (:func:`bridge.pipeline.render`; the layer stack only for a document) with a progress bar
    and a Ctrl-C that cancels cleanly. None: interrupted before the first result existed."""
    from ..engine import CancelToken

    cancel = CancelToken()
    bar = _ProgressBar(enabled=not args.quiet)
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(signum: int, frame: Any) -> None:
            if cancel.cancelled:
                raise KeyboardInterrupt
            cancel.cancel()
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return render(request.loaded, progress=bar.update, cancel=cancel, layers=request.kind == "document")
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


class _ProgressBar:
    """tqdm on stderr: the engine's stage-weighted percent, the one progress text every front end shows
    (:func:`bridge.progress.progress_line`: style, stage, iteration, time left) and the best loss so far."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def update(self, p: Any) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        from ..progress import progress_line
        if self.bar is None:
            self.bar = tqdm(total=100.0, file=sys.stderr, dynamic_ncols=True,
                            bar_format="{percentage:3.0f}%|{bar}| {elapsed}{postfix}")   # postfix: ", ..."
        self.bar.n = round(100.0 * p.fraction, 1)
        loss = p.best_loss if p.best_loss is not None else p.loss
        self.bar.set_postfix_str(progress_line(p) + (f", best loss {loss:.4g}" if loss is not None else ""),
                                 refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _outputs(request: _Request, rendered: Rendered) -> list[tuple[Path, Callable[[Path], Path]]]:
    """(wanted path, writer) per output file; each writer claims a free name and returns the one it got."""
    result = rendered.result
    if request.kind == "document":
        _, psd_mod = _import_document()
        return [(request.output, lambda p: psd_mod.write_psd(rendered.stack, p, unique=True))]
    if request.kind == "image":
        return [(request.output, lambda p: save_image(result.images[0].picture, p, unique=True))]
    stem = _safe(request.loaded.content.name)
    return [(request.output / f"{stem}_{image.name}.png",
             lambda p, pic=image.picture: save_image(pic, p, unique=True)) for image in result.images]


def _write(request: _Request, rendered: Rendered) -> tuple[list[Path | None], list[str]]:
    """Write every output; one that cannot be written where asked goes to a temporary folder instead.

    Returns the path written per output (None: lost) and the problems to report (each says where, why,
    and where the result went instead).
    """
    written: list[Path | None] = []
    problems: list[str] = []
    rescue: list[Path] = []              # the rescue folder, once made
    for wanted, write in _outputs(request, rendered):
        try:
            folder = request.output if request.kind == "folder" else request.output.parent
            folder.mkdir(parents=request.make_parents, exist_ok=True)
            written.append(write(wanted))
            continue
        except (OSError, ImageError) as exc:
            problems.append(f"error: could not write {wanted}: {_why(exc)}")
        try:
            if not rescue:
                rescue.append(Path(tempfile.mkdtemp(prefix="stylebridge-rescue-")))
            saved = write(rescue[0] / wanted.name)
        except (OSError, ImageError) as exc:
            problems.append(f"error: could not save it in the temporary folder {tempfile.gettempdir()} either: "
                            f"{_why(exc)}; this result is lost")
            written.append(None)
        else:
            written.append(saved)
            problems.append(f"the result was saved instead to {saved} (a temporary folder: move it somewhere safe)")
    if rescue and not any(rescue[0].iterdir()):
        rescue[0].rmdir()
    return written, problems


def _why(exc: Exception) -> str:
    return explain(exc) if isinstance(exc, OSError) else str(exc)


def _summary(request: _Request, result: Any, written: list[Path | None], timings: dict[str, float]) -> dict[str, Any]:
    """The ``--json`` summary: what was written, the settings used, where and how long it ran.

    ``seconds`` is the whole run (reading, stylising, writing): never less than the sum of ``timings``.
    ``working_size`` is the size the last stage really ran at (the photo's own when it is smaller than
    ``size``); ``device`` the one used (``auto`` resolved).
    """
    images = [{"name": img.name, "losses": img.losses} for img in result.images]
    if request.kind == "folder":
        for entry, path in zip(images, written):
            entry["path"] = str(path) if path is not None else None
    from ..engine.device import resolve_device
    return {
        "outputs": [str(p) for p in written if p is not None],
        "images": images,
        "settings": result.settings.to_dict(),
        "document_settings": request.loaded.document.to_dict() if request.kind == "document" else None,
        "device": str(resolve_device(result.settings.device)),
        "working_size": list(result.working_size),
        "native_size": [request.loaded.content.width, request.loaded.content.height],
        "cancelled": result.cancelled,
        "seconds": math.ceil(sum(timings.values()) * 1000) / 1000,     # ms, rounded up; timings down
        "timings": {k: math.floor(v * 1000) / 1000 for k, v in timings.items()},
        "notes": list(request.spec.notes),
    }
