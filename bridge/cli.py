"""The ``stylebridge`` command: one sub-command per front end, each registered by its own module.

Each module exposes ``register(subparsers)`` which adds its sub-parser and sets ``func`` (a
callable taking the parsed arguments and returning an exit code). This file only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from . import __version__

COMMAND_MODULES = (
    "bridge.commands.stylize",     # stylize: files in, PNG/PSD out
    "bridge.commands.preview",     # preview: contact sheet of fast previews
    "bridge.daemon.command",       # serve, status
    "bridge.hotfolder.command",    # watch
    "bridge.gimp_install",         # gimp-install
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylebridge",
        description="Neural style transfer (Gatys et al.) for image editors: stylised layers with masks, "
                    "at the photo's full resolution, for GIMP 3, Photoshop (hot folder) and scripts.")
    parser.add_argument("--version", action="version", version=f"stylebridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("bridge"):
                continue  # a front end not built in this checkout
            raise
        module.register(sub)
    return parser


def _show_notes(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Metadata dropped from an input (a bomb or broken ICC profile, EXIF...) or a style image smaller than
    a stage needs is news for the user, not a Python warning with a source line: print it as one plain
    line; other warnings as Python would."""
    from .engine.types import StyleResolutionWarning
    from .imaging import MetadataWarning
    if issubclass(category, (MetadataWarning, StyleResolutionWarning)):
        print(f"stylebridge: note: {message}", file=file or sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    from .engine.threads import prepare_process   # (imports no torch) before any command loads torch: OpenMP's
    prepare_process()                              # waiting threads then sleep instead of spinning
    warnings.showwarning = _show_notes
    # The notes are for the user: shown even where Python's warnings are silenced (PYTHONWARNINGS=ignore).
    warnings.filterwarnings("default", module=r"bridge(\.|$)")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("stylebridge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
