"""``stylebridge preview``: a contact sheet of the photo under every style, from the fast preview networks.

For choosing styles before a real ``stylize`` run: each style takes a fraction of a second instead of
minutes, and every tile is labelled as a preview (it is not what the Gatys optimisation will produce).
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
from ..settings import LIMITS, PREVIEW

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".webp")


class CliError(Exception):
    """A user mistake: printed as one line ``stylebridge: error: ...``, exit code 2."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..preview.engine import METHODS

    p = subparsers.add_parser(
        "preview", help="contact sheet of fast previews of the photo under each style (not the result)",
        description="Write a contact sheet: PHOTO, then a fast feed-forward preview of PHOTO under each STYLE, "
                    "with the style's thumbnail and name. Previews take well under a second per style and show "
                    "roughly what a style will do; the real result comes from 'stylebridge stylize'.")
    p.add_argument("content", metavar="PHOTO", help="the photo")
    p.add_argument("-s", "--style", dest="styles", action="append", required=True, metavar="STYLE",
                   help="a style image (repeat for several styles)")
    p.add_argument("-o", "--output", required=True, metavar="SHEET",
                   help="the sheet image (.png, .jpg, .tif, .webp), or a folder for PHOTO_preview.png; "
                        "an existing file is never overwritten")
    p.add_argument("--size", type=int, default=PREVIEW.size, metavar="PX",
                   help=f"long side of each preview in pixels (default: {PREVIEW.size}, at most {PREVIEW.max_size})")
    p.add_argument("--method", choices=METHODS, default=METHODS[0],
                   help="how previews reach their size from the 384 px network: one run + photo-guided "
                        "upsampling, overlapping tiles, or auto: guided up to 576 px, tiles above "
                        "(default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="do not print the written file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..preview import PreviewModelError
    from ..preview.sheet import contact_sheet

    try:
        photo, styles, output = _prepare(args)
        _one_torch_thread(args.size)
        sheet = contact_sheet(photo, styles, tile=args.size, method=args.method)
    except (CliError, OutputError, ImageError, PreviewModelError, ValueError) as exc:
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
    if not PREVIEW.min_size <= args.size <= PREVIEW.max_size:
        raise CliError(f"--size {args.size}: must be between {PREVIEW.min_size} and {PREVIEW.max_size}")
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
