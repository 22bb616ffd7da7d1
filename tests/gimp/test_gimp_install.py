"""``stylebridge gimp-install``: where it installs, what, and ``--uninstall`` (no GIMP needed)."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import gimp_install

from .conftest import REPO, stylebridge_command


def test_default_profile_follows_gimp(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert gimp_install.default_profile({"GIMP3_DIRECTORY": str(tmp_path / "g")}) == tmp_path / "g"
    assert gimp_install.default_profile({"XDG_CONFIG_HOME": str(tmp_path / "x")}) == tmp_path / "x" / "GIMP" / "3.0"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gimp_install.default_profile({}) == tmp_path / "home" / ".config" / "GIMP" / "3.0"


def test_install_and_uninstall_with_the_cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("GIMP3_DIRECTORY", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path)
    run = lambda *args: subprocess.run(stylebridge_command() + ["gimp-install", *args], capture_output=True,  # noqa: E731
                                       text=True, env=env, cwd=REPO, timeout=60)
    proc = run()
    dest = tmp_path / ".config" / "GIMP" / "3.0" / "plug-ins" / "stylebridge"
    assert proc.returncode == 0, proc.stderr
    assert str(dest) in proc.stdout and "stylebridge serve" in proc.stdout
    assert os.access(dest / "stylebridge.py", os.X_OK)
    for name in gimp_install.PLUGIN_FILES:                # the folder as it stands
        assert (dest / name).read_bytes() == (REPO / "gimp_plugin" / "stylebridge" / name).read_bytes()
    assert (dest / gimp_install.CLIENT_FILE).read_bytes() == (REPO / "bridge" / "protocol.py").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == sorted(gimp_install.INSTALLED_FILES + (gimp_install.INSTALL_FILE,))
    record = json.loads((dest / gimp_install.INSTALL_FILE).read_text())    # the stylebridge that installed it
    exe = stylebridge_command()
    assert record["stylebridge"] == ([str(Path(exe[0]).absolute())] if len(exe) == 1 else record["stylebridge"])
    assert subprocess.run(record["stylebridge"] + ["--help"], capture_output=True, env=env, cwd=REPO,
                          timeout=60).returncode == 0
    from bridge import __version__
    assert record["version"] == __version__
    assert run().returncode == 0                       # again: replaces in place
    proc = run("--uninstall")
    assert proc.returncode == 0 and str(dest) in proc.stdout and not dest.exists()
    proc = run("--uninstall")
    assert proc.returncode == 0 and "no GIMP plug-in installed" in proc.stdout


def test_profile_option(tmp_path):
    profile = tmp_path / "p"
    proc = subprocess.run(stylebridge_command() + ["gimp-install", "--profile", str(profile)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and (profile / "plug-ins" / "stylebridge" / "stylebridge.py").is_file()


def test_missing_plugin_files_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gimp_install, "plugin_source", lambda: (_ for _ in ()).throw(FileNotFoundError("gone")))
    args = type("A", (), {"profile": str(tmp_path), "uninstall": False})()
    assert gimp_install.run(args) == 1
    assert "gone" in capsys.readouterr().err


@pytest.mark.parametrize("path, extra", [
    ("gimp_plugin/stylebridge/stylebridge.py", {"gi", "sb_client", "sb_png", "sb_logic", "sb_dialog", "sb_progress",
                                                "sb_desk", "sb_layers"}),
    ("gimp_plugin/stylebridge/sb_layers.py", {"gi", "sb_desk", "sb_logic"}),
    ("gimp_plugin/stylebridge/sb_progress.py", {"gi"}),
    ("gimp_plugin/stylebridge/sb_dialog.py", {"gi", "sb_client", "sb_logic", "sb_desk", "sb_widgets", "sb_layers",
                                              "sb_testhook"}),   # the tests' hook
    ("gimp_plugin/stylebridge/sb_widgets.py", {"gi", "sb_client", "sb_logic", "sb_desk"}),
    ("gimp_plugin/stylebridge/sb_desk.py", {"sb_client"}),
    ("tests/gimp/sb_testhook.py", {"gi", "sb_logic"}),
    ("gimp_plugin/stylebridge/sb_logic.py", {"sb_client", "sb_desk"}),
    ("gimp_plugin/stylebridge/sb_png.py", set()),
    ("gimp_plugin/stylebridge/sb_watchdog.py", {"sb_client"}),
    ("gimp_plugin/stylebridge/sb_client.py", set()),       # a copy of bridge/protocol.py
    ("bridge/protocol.py", set()),
])
def test_plugin_is_stdlib_and_gi_only(path, extra):
    """GIMP runs the plug-in with its own Python: nothing from pip, nothing from bridge, no relative imports."""
    import ast
    tree = ast.parse((REPO / path).read_text())
    allowed = set(sys.stdlib_module_names) | extra
    imports = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path} has a relative import (from {'.' * node.level}{node.module or ''})"
            mods = [node.module]
        else:
            continue
        for mod in mods:
            imports += 1
            assert mod.split(".")[0] in allowed, f"{path} imports {mod}"
    assert imports


def _plugin_files(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in gimp_install.PLUGIN_FILES:
        (folder / name).write_text(f"# {name}\n")
    return folder


def test_plugin_source_lookup(tmp_path):
    """Where gimp-install finds the plug-in: $STYLEBRIDGE_GIMP_PLUGIN_DIR, a checkout (gimp_plugin/ beside the
    package), package data, the wheel's data-files under sys.prefix or the user base; else a clear error."""
    package = tmp_path / "site" / "bridge"
    package.mkdir(parents=True)
    prefix = tmp_path / "prefix"
    user_base = tmp_path / "user"
    lookup = lambda env={}: gimp_install.plugin_source(package_dir=package, prefix=prefix, env=env,  # noqa: E731
                                                       user_base=user_base)
    with pytest.raises(FileNotFoundError, match="STYLEBRIDGE_GIMP_PLUGIN_DIR"):
        lookup()
    user = _plugin_files(user_base / "share" / "stylebridge" / "gimp_plugin" / "stylebridge")
    assert lookup() == user                                           # pip install --user
    data = _plugin_files(prefix / "share" / "stylebridge" / "gimp_plugin" / "stylebridge")
    assert lookup() == data                                           # installed wheel
    (package / "gimp_plugin" / "stylebridge").mkdir(parents=True)     # incomplete: skipped
    (package / "gimp_plugin" / "stylebridge" / "stylebridge.py").write_text("")
    assert lookup() == data
    checkout = _plugin_files(tmp_path / "site" / "gimp_plugin" / "stylebridge")
    assert lookup() == checkout                                       # checkout / editable install first
    chosen = _plugin_files(tmp_path / "mine")
    assert lookup({"STYLEBRIDGE_GIMP_PLUGIN_DIR": str(chosen)}) == chosen
    # this checkout: the real folder; the client comes from the package's protocol module
    assert gimp_install.plugin_source() == REPO / "gimp_plugin" / "stylebridge"
    assert gimp_install.plugin_files()[gimp_install.CLIENT_FILE] == REPO / "bridge" / "protocol.py"


def test_wheel_ships_what_gimp_install_looks_for():
    """pyproject's data-files put exactly an installed plug-in folder's files where plugin_source() looks under
    sys.prefix (the client there is the source tree's copy of bridge/protocol.py)."""
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    data_files = project["tool"]["setuptools"]["data-files"]
    assert list(data_files) == [gimp_install.DATA_DIR.as_posix()]
    shipped = data_files[gimp_install.DATA_DIR.as_posix()]
    assert sorted(Path(p).name for p in shipped) == sorted(gimp_install.INSTALLED_FILES)
    assert all((REPO / p).is_file() and Path(p).parent == Path("gimp_plugin/stylebridge") for p in shipped)
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(fnmatch.fnmatch("bridge.daemon", pattern) for pattern in includes)


def test_install_records_the_running_stylebridge(tmp_path, monkeypatch):
    """The plug-in starts the daemon with the command gimp-install recorded: its own executable (sys.argv[0]),
    else the one on PATH, else this Python -m bridge.cli."""
    exe = tmp_path / "bin" / "stylebridge"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert gimp_install.stylebridge_command(str(exe)) == [str(exe)]
    monkeypatch.setenv("PATH", str(exe.parent))
    assert gimp_install.stylebridge_command("/somewhere/bridge/cli.py") == [str(exe)]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gimp_install.stylebridge_command("/somewhere/bridge/cli.py") == [sys.executable, "-m", "bridge.cli"]
    dest = gimp_install.install(tmp_path / "profile", command=["/x/stylebridge"])
    assert json.loads((dest / gimp_install.INSTALL_FILE).read_text())["stylebridge"] == ["/x/stylebridge"]
    import importlib
    saved = {k: sys.modules.pop(k) for k in ("sb_logic", "sb_client", "sb_desk") if k in sys.modules}
    sys.path.insert(0, str(dest))
    try:                                  # the installed plug-in reads what gimp-install wrote
        sb_logic = importlib.import_module("sb_logic")
        assert sb_logic.INSTALL_FILE == gimp_install.INSTALL_FILE
        assert sb_logic.read_install(str(dest))["stylebridge"] == ["/x/stylebridge"]
    finally:
        sys.path.remove(str(dest))
        for k in ("sb_logic", "sb_client", "sb_desk"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)
