"""``stylebridge gimp-install``: copy the GIMP 3 plug-in into a GIMP 3 profile (or remove it).

GIMP 3 loads a Python plug-in only from ``PROFILE/plug-ins/NAME/NAME.py`` (executable, file name equal
to the folder name). The plug-in is the folder ``gimp_plugin/stylebridge`` (``stylebridge.py``, the adapter
over GIMP; ``sb_dialog.py``, its dialog; ``sb_progress.py``, its progress window with Cancel; ``sb_logic.py``, its
decisions, tested without GIMP; the PNG codec ``sb_png.py``; ``sb_watchdog.py``, which cancels the job when GIMP kills
the plug-in) and its protocol
client ``sb_client.py``, which is written from the package's own :mod:`bridge.protocol` (one source: the copy
kept in ``gimp_plugin/stylebridge`` is checked equal by tests/test_protocol.py).

Nothing here runs at import time: the package works without the plug-in's folder (a ``pip install --user``
puts it under the user base's ``share/``); only ``gimp-install`` needs it, and says where it looked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import site
import stat
import sys
from pathlib import Path
from typing import Mapping

PLUGIN_NAME = "stylebridge"
CLIENT_FILE = "sb_client.py"                            # the protocol client: a copy of bridge/protocol.py
#: The plug-in's own files, found in gimp_plugin/stylebridge (or where the wheel put them)
PLUGIN_FILES = ("stylebridge.py", "sb_dialog.py", "sb_logic.py", "sb_desk.py", "sb_widgets.py", "sb_layers.py",
                "sb_png.py", "sb_progress.py", "sb_watchdog.py")
#: What an installed plug-in folder holds (= pyproject's data-files), the client written from bridge/protocol.py
INSTALLED_FILES = (*PLUGIN_FILES, CLIENT_FILE)
DATA_DIR = Path("share") / "stylebridge" / "gimp_plugin" / PLUGIN_NAME    # pyproject's data-files target
PLUGIN_DIR_ENV = "STYLEBRIDGE_GIMP_PLUGIN_DIR"
#: Written beside the plug-in: the command that runs this stylebridge, so the plug-in can start
#: ``stylebridge serve`` itself when no daemon answers (= sb_logic.INSTALL_FILE, a test checks).
INSTALL_FILE = "sb_install.json"
PACKAGE_DIR = Path(__file__).resolve().parent
PROTOCOL_SOURCE = PACKAGE_DIR / "protocol.py"            # written as the plug-in's CLIENT_FILE


def plugin_source(package_dir: Path = PACKAGE_DIR, prefix: Path | None = None,
                  env: Mapping[str, str] | None = None, user_base: Path | None = None) -> Path:
    """The folder holding the plug-in's own files: ``$STYLEBRIDGE_GIMP_PLUGIN_DIR``, a source checkout
    (editable install), package data, or the wheel's data-files under ``sys.prefix`` or, for
    ``pip install --user``, the user base (``~/.local``)."""
    env = os.environ if env is None else env
    prefix = Path(sys.prefix) if prefix is None else prefix
    user_base = Path(site.getuserbase()) if user_base is None else user_base
    candidates = [
        Path(env[PLUGIN_DIR_ENV]) if env.get(PLUGIN_DIR_ENV) else None,
        package_dir.parent / "gimp_plugin" / PLUGIN_NAME,          # source checkout / editable install
        package_dir / "gimp_plugin" / PLUGIN_NAME,                 # shipped as package data
        prefix / DATA_DIR,                                         # pyproject [tool.setuptools.data-files]
        user_base / DATA_DIR,                                      # the same, pip install --user
    ]
    for c in candidates:
        if c is not None and all((c / f).is_file() for f in PLUGIN_FILES):
            return c
    looked = ", ".join(str(c) for c in candidates if c is not None)
    raise FileNotFoundError(f"the GIMP plug-in files ({', '.join(PLUGIN_FILES)}) were not found (looked in "
                            f"{looked}); set {PLUGIN_DIR_ENV} to the folder gimp_plugin/stylebridge of a "
                            "stylebridge source checkout")


def plugin_files() -> dict[str, Path]:
    """Installed file name -> source file, for everything the plug-in folder needs (the client is the
    package's own protocol module)."""
    src = plugin_source()
    return {**{name: src / name for name in PLUGIN_FILES}, CLIENT_FILE: PROTOCOL_SOURCE}


def default_profile(env: dict | None = None) -> Path:
    """GIMP 3's profile folder, as GIMP itself finds it."""
    env = os.environ if env is None else env
    if env.get("GIMP3_DIRECTORY"):
        return Path(env["GIMP3_DIRECTORY"]).expanduser()
    if sys.platform == "win32" and env.get("APPDATA"):
        return Path(env["APPDATA"]) / "GIMP" / "3.0"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "GIMP" / "3.0"
    base = Path(env["XDG_CONFIG_HOME"]).expanduser() if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "GIMP" / "3.0"


def stylebridge_command(argv0: str | None = None) -> list[str]:
    """The command that runs this stylebridge: the ``stylebridge`` executable that is running now
    (``sys.argv[0]``), else the one on PATH, else this Python with ``-m bridge.cli``."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    path = Path(argv0) if argv0 else None
    if path is not None and path.name.startswith("stylebridge") and path.suffix != ".py" and path.is_file() \
            and os.access(path, os.X_OK):
        return [str(path.absolute())]
    found = shutil.which("stylebridge")
    if found:
        return [str(Path(found).absolute())]
    return [sys.executable, "-m", "bridge.cli"]


def install_record(command: list[str] | None = None) -> dict:
    """What the plug-in reads from :data:`INSTALL_FILE`."""
    from . import __version__
    return {"stylebridge": command if command is not None else stylebridge_command(), "version": __version__}


def install(profile: Path, command: list[str] | None = None) -> Path:
    files = plugin_files()
    dest = profile / "plug-ins" / PLUGIN_NAME
    dest.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        tmp = dest / f".{name}.tmp"
        shutil.copyfile(source, tmp)
        mode = 0o755 if name == f"{PLUGIN_NAME}.py" else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, dest / name)       # a fresh mtime makes GIMP query the plug-in again
    tmp = dest / f".{INSTALL_FILE}.tmp"
    tmp.write_text(json.dumps(install_record(command), indent=1) + "\n")
    os.replace(tmp, dest / INSTALL_FILE)
    stale = dest / "__pycache__"
    if stale.is_dir():
        shutil.rmtree(stale, ignore_errors=True)
    return dest


def uninstall(profile: Path) -> Path | None:
    dest = profile / "plug-ins" / PLUGIN_NAME
    if not dest.exists():
        return None
    shutil.rmtree(dest)
    return dest


def run(args: argparse.Namespace) -> int:
    profile = Path(args.profile).expanduser() if args.profile else default_profile()
    try:
        if args.uninstall:
            removed = uninstall(profile)
            if removed is None:
                print(f"stylebridge: no GIMP plug-in installed in {profile}")
            else:
                print(f"stylebridge: removed the GIMP plug-in from {removed}")
            return 0
        dest = install(profile)
    except (OSError, FileNotFoundError) as exc:
        print(f"stylebridge gimp-install: {exc}", file=sys.stderr)
        return 1
    main = dest / f"{PLUGIN_NAME}.py"
    command = " ".join(install_record()["stylebridge"])
    print(f"stylebridge: GIMP 3 plug-in installed in {dest}")
    print(f"  {main}")
    print("  Restart GIMP 3, then use Filters > Artistic > Stylebridge... When no daemon answers on this machine,")
    print(f"  the plug-in starts one with: {command} serve (run gimp-install again after moving stylebridge)")
    if not main.stat().st_mode & stat.S_IXUSR:
        print("  error: the plug-in file is not executable; GIMP would ignore it", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "gimp-install", help="install the GIMP 3 plug-in into a GIMP 3 profile",
        description="Copy the Stylebridge plug-in into PROFILE/plug-ins/stylebridge (default profile: "
                    "$GIMP3_DIRECTORY, else $XDG_CONFIG_HOME/GIMP/3.0, else ~/.config/GIMP/3.0) and print where.")
    parser.add_argument("--profile", metavar="DIR", help="GIMP 3 profile folder (default: the user's own, see above)")
    parser.add_argument("--uninstall", action="store_true", help="remove the plug-in instead")
    parser.set_defaults(func=run)
    return parser
