"""``stylebridge preview``: a contact sheet of the photo under every style, from the fast preview networks
or (``--method faithful``) from small real Gatys runs with the run's own settings.

For choosing styles before a real ``stylize`` run: each style takes a fraction of a second instead of
minutes (faithful: seconds, :mod:`bridge.preview.faithful`), and every tile is labelled as a preview.
Same input handling as ``stylize``: images read by :func:`bridge.imaging.load_image`, an existing file is
never overwritten (``save_image(..., unique=True)`` claims ``sheet.png`` or its first free ``sheet-N.png``
atomically, :mod:`bridge.outputs`), an unwritable folder is found before any work, bad input prints one
line and exits 2 with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..imaging import ImageError, Picture, load_image, save_image
from ..outputs import OutputError, explain, nearest_existing, probe_writable
from ..settings import DEFAULTS, LIMITS, PREVIEW, Settings, SettingsError
from . import CliError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".webp")
#: Engine settings a faithful preview takes from the command line: all but the schedule (the preview's own),
#: the blend (one preview per style), progress images and the init file.
SCHEDULE = ("size", "iterations", "coarse_to_fine", "min_size", "scale_step", "coarse_iterations", "base_size",
            "large_iterations", "style_blend_weights", "preview_every", "init_image")


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..preview.engine import METHODS
    from ..preview.faithful import MAX_SIZE as FAITHFUL_MAX

    p = subparsers.add_parser(
        "preview", help="contact sheet of previews of the photo under each style (fast, or faithful small runs)",
        description="Write a contact sheet: PHOTO, then a preview of PHOTO under each STYLE, with the style's "
                    "thumbnail and name. Instant previews (a feed-forward network) take well under a second per "
                    "style and show roughly what a style will do; --method faithful runs the real optimisation "
                    "small (about 176 px, seconds per style) with the engine settings given, much closer to what "
                    "'stylebridge stylize' will produce.")
    p.add_argument("content", metavar="PHOTO", help="the photo")
    p.add_argument("-s", "--style", dest="styles", action="append", required=True, metavar="STYLE",
                   help="a style image (repeat for several styles)")
    p.add_argument("-o", "--output", required=True, metavar="SHEET",
                   help="the sheet image (.png, .jpg, .tif, .webp), or a folder for PHOTO_preview.png; "
                        "an existing file is never overwritten")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help=f"long side of each preview in pixels (default: {PREVIEW.size}, at most {PREVIEW.max_size}; "
                        f"faithful: {PREVIEW.faithful_size}, at most {FAITHFUL_MAX})")
    p.add_argument("--method", choices=(*METHODS, "instant", "faithful"), default=METHODS[0],
                   help="faithful: a small real Gatys run per style with the engine settings below (seconds per "
                        "style; closest to the result); instant (= auto): the fast network, well under a second; "
                        "guided/tiles: how the fast network's 384 px output reaches the size (auto: guided up to "
                        "576 px, tiles above) (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="do not print the written file")
    _add_faithful_options(p.add_argument_group("engine settings (--method faithful)"))
    p.set_defaults(func=run)


def _add_faithful_options(group: argparse._ArgumentGroup) -> None:
    """The engine settings ``stylize`` takes (same flags, help and parse), less :data:`SCHEDULE`."""
    from .stylize import _DEST, _add_setting_options

    scratch = argparse.ArgumentParser(add_help=False)
    _add_setting_options(scratch.add_argument_group(), Settings, DEFAULTS)
    for action in scratch._actions:
        if action.dest.startswith(_DEST) and action.dest[len(_DEST):] not in SCHEDULE:
            group._add_action(action)


def run(args: argparse.Namespace) -> int:
    from ..preview import PreviewModelError
    from ..preview.sheet import contact_sheet
    from ..settings_parse import settings_from_mapping
    from .stylize import given_options

    try:
        typed = given_options(args)
        if typed and args.method != "faithful":
            raise CliError(f"--{next(iter(typed)).replace('_', '-')} only changes a faithful preview (a small real "
                           "run with these settings): add --method faithful")
        settings = settings_from_mapping(typed)[0]
        photo, styles, output = _prepare(args)
        if args.method != "faithful":
            _one_torch_thread(args.size)
        sheet = contact_sheet(photo, styles, tile=args.size, method=args.method, settings=settings)
    except (CliError, OutputError, ImageError, PreviewModelError, SettingsError, ValueError) as exc:
        return _fail(exc)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        written = save_image(sheet, output, unique=True)
    except (ImageError, OutputError) as exc:
        return _fail(exc)
    except OSError as exc:
        return _fail(f"cannot write the sheet: {explain(exc)}", code=1)
    if not args.quiet:
        print(written)
    return 0


def _one_torch_thread(size: int) -> None:
    """This process's only torch work is the small photo-guided upsampling of each preview, which on a busy
    2-core machine ran 4x faster on one torch thread than on two (bench/README.md). A process-wide setting,
    so it is made here, in the command, and not in the library a daemon shares with its Gatys jobs."""
    from ..preview.models import NETWORK_SIZE

    if size > NETWORK_SIZE:     # smaller previews need no torch at all
        import torch
        torch.set_num_threads(1)


def _fail(exc: Exception | str, code: int = 2) -> int:
    print(f"stylebridge: error: {exc}", file=sys.stderr)
    return code


def _prepare(args: argparse.Namespace) -> tuple[Picture, list[Picture], Path]:
    """Everything that can be wrong with the input is found here, before any work or any file is written."""
    if len(args.styles) > LIMITS.max_styles:
        raise CliError(f"{len(args.styles)} styles given; at most {LIMITS.max_styles} per run")
    from ..preview import faithful

    faithful_run = args.method == "faithful"
    if args.size is None:
        args.size = PREVIEW.faithful_size if faithful_run else PREVIEW.size
    low, high = (faithful.MIN_SIZE, faithful.MAX_SIZE) if faithful_run else (PREVIEW.min_size, PREVIEW.max_size)
    if not low <= args.size <= high:
        raise CliError(f"--size {args.size}: must be between {low} and {high}"
                       + (" for a faithful preview (a small real run)" if faithful_run else ""))
    photo = load_image(args.content)
    styles = [load_image(path) for path in args.styles]
    output = Path(args.output)
    if output.is_dir() or (not output.suffix and not output.exists()):
        output = output / f"{photo.name}_preview.png"
    elif output.suffix.lower() not in IMAGE_SUFFIXES:
        raise CliError(f"{output}: the sheet must be a .png, .jpg, .tif or .webp file, or a folder")
    elif output.exists() and not output.is_file():
        raise CliError(f"{output}: exists and is not a file")
    probe_writable(nearest_existing(output.parent))   # a read-only folder is reported now, not after the work
    return photo, styles, output
