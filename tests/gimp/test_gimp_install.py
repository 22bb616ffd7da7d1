"""``stylebridge gimp-install``: where it installs, what, and ``--uninstall`` (no GIMP needed)."""

from __future__ import annotations

import os
import subprocess
import sys

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
    for name in ("stylebridge.py", "sb_client.py"):
        assert (dest / name).read_bytes() == (REPO / "gimp_plugin" / "stylebridge" / name).read_bytes()
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


@pytest.mark.parametrize("name", ["stylebridge.py", "sb_client.py"])
def test_plugin_is_stdlib_and_gi_only(name):
    """GIMP runs the plug-in with its own Python: nothing from pip, nothing from bridge."""
    import ast
    tree = ast.parse((REPO / "gimp_plugin" / "stylebridge" / name).read_text())
    allowed = set(sys.stdlib_module_names) | {"gi", "sb_client"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods = [node.module]
        else:
            continue
        for mod in mods:
            assert mod.split(".")[0] in allowed, f"{name} imports {mod}"
