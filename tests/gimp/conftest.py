"""Fixtures for the GIMP 3 plug-in tests: a real headless GIMP 3 and a real ``stylebridge serve``.

GIMP 3 comes from ``.ci/gimp3.sh`` (natively on Debian 13, else a cached trixie root run with chroot). When it
cannot be provisioned the GIMP tests are skipped with the reason, unless ``STYLEBRIDGE_REQUIRE_GIMP=1`` (CI),
which makes that a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from inprocess import stop_process
from testdata import SAMPLES  # noqa: F401  the pictures by name, all in the repository (tests/data/README.md)

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "gimp_plugin" / "stylebridge"
CLIENT_SOURCE = REPO / "gimp_plugin" / "stylebridge" / "sb_client.py"     # the plug-in's client, imported by the package


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sb_client():
    """The protocol client as the plug-in sees it: the package's file loaded alone, as ``sb_client``
    (no package around it, as under GIMP's Python)."""
    return _load("sb_client", CLIENT_SOURCE)


@pytest.fixture(scope="session")
def sb_client():
    return load_sb_client()


@pytest.fixture(scope="session")
def sb_png():
    """The plug-in's PNG codec, imported from its file."""
    return _load("sb_png", PLUGIN_DIR / "sb_png.py")


def stylebridge_command() -> list[str]:
    exe = Path(sys.executable).with_name("stylebridge")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("stylebridge")
    return [found] if found else [sys.executable, "-m", "bridge.cli"]


# ------------------------------------------------------------------------------------------------
# GIMP
# ------------------------------------------------------------------------------------------------

#: How the tests start GIMP 3: headless (-i), a new instance (-n), and no brushes, gradients or patterns
#: loaded (-d: nothing here paints with them; ~0.3 s of CPU each start); the Python given on stdin runs in the
#: python-fu-eval batch interpreter, then GIMP quits.
GIMP_BATCH = ["-i", "-n", "-d", "--batch-interpreter=python-fu-eval", "-b", "-", "--quit"]


@dataclass
class Gimp:
    runner: str          # runs gimp-console-3.0 (natively or chrooted)
    root: Path           # "/" natively; else the root GIMP sees as "/"
    provision_s: float

    def inside(self, host_path: Path) -> str:
        """The path GIMP sees for a host path under ``root``."""
        rel = Path(host_path).resolve().relative_to(self.root.resolve())
        return "/" + str(rel)

    def env(self, workdir: Path, profile: Path, extra: dict | None = None) -> dict[str, str]:
        """GIMP's whole environment for a test: its profile, a home and a TMPDIR in ``workdir``, and ``extra``."""
        home = workdir / "home"
        home.mkdir(exist_ok=True)
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": self.inside(workdir),
                    "GIMP3_DIRECTORY": self.inside(profile), "HOME": self.inside(home)}
        full_env.update(extra or {})
        return full_env

    def batch(self, script: str, workdir: Path, profile: Path, timeout: float = 300,
              env: dict | None = None) -> subprocess.CompletedProcess:
        """Run Python ``script`` in GIMP's python-fu-eval batch interpreter, headless."""
        return subprocess.run([self.runner, *GIMP_BATCH], input=script, text=True, capture_output=True,
                              timeout=timeout, env=self.env(workdir, profile, env))

    def start(self, script: str, workdir: Path, profile: Path, env: dict | None = None) -> subprocess.Popen:
        """:meth:`batch` without waiting (a test that acts while the plug-in runs): GIMP's output, stdout and
        stderr together, on the process's ``stdout``."""
        path = Path(tempfile.mkstemp(suffix=".py", prefix="script-", dir=workdir)[1])
        path.write_text(script)
        with open(path) as stdin:
            return subprocess.Popen([self.runner, *GIMP_BATCH], stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=self.env(workdir, profile, env))


@pytest.fixture(scope="session")
def gimp() -> Gimp:
    t0 = time.monotonic()
    runner = os.environ.get("STYLEBRIDGE_GIMP3_RUNNER", "")      # set by .ci/test, which ran .ci/gimp3.sh
    if not (runner and os.access(runner, os.X_OK)):
        proc = subprocess.run(["bash", str(REPO / ".ci" / "gimp3.sh")], capture_output=True, text=True, timeout=1200)
        runner = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() and proc.returncode == 0 else ""
    else:
        proc = subprocess.CompletedProcess([runner], 0, "", "")
    if proc.returncode != 0 or not runner:
        why = f"GIMP 3 could not be provisioned by .ci/gimp3.sh (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        print(why, file=sys.stderr)
        if os.environ.get("STYLEBRIDGE_REQUIRE_GIMP") == "1":
            pytest.fail(why)
        pytest.skip(why)
    root = subprocess.run([runner, "--root"], capture_output=True, text=True, check=True).stdout.strip()
    return Gimp(runner=runner, root=Path(root), provision_s=time.monotonic() - t0)


@pytest.fixture(scope="package")
def xvfb(gimp: Gimp):
    """A virtual X display GIMP's plug-ins can open (Xvfb from GIMP's own system), one for tests/gimp (each
    test's GIMP closes its windows when it quits); yields DISPLAY."""
    if not (gimp.root / "usr" / "bin" / "Xvfb").exists():
        why = "Xvfb is not installed beside GIMP 3 (.ci/gimp3.sh installs it as root): dialog not tested"
        if os.environ.get("STYLEBRIDGE_REQUIRE_GIMP") == "1":
            pytest.fail(why)
        pytest.skip(why)
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([gimp.runner, "--exec", "Xvfb", "-displayfd", str(write_fd), "-nolisten", "tcp",
                             "-screen", "0", "1280x1024x24"], pass_fds=(write_fd,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        number = b""
        deadline = time.monotonic() + 30
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            chunk = os.read(read_fd, 16)
            if not chunk:
                break
            number += chunk
        assert number.strip().isdigit(), f"Xvfb did not start (exit {proc.poll()})"
        yield f":{number.strip().decode()}"
    finally:
        os.close(read_fd)
        stop_process(proc, timeout=10)


def _scratch(gimp: Gimp, prefix: str):
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=gimp.root / "tmp"))
    os.chmod(path, 0o755)
    yield path
    if os.environ.get("STYLEBRIDGE_KEEP_GIMP_WORKDIR") != "1":
        shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"kept {path}", file=sys.stderr)


@pytest.fixture
def gimp_workdir(gimp: Gimp):
    """A scratch folder GIMP can see (under its root's /tmp), removed afterwards."""
    yield from _scratch(gimp, "stylebridge-gimp-test-")


@pytest.fixture(scope="session")
def gimp_profile(gimp: Gimp) -> Path:
    """A fresh GIMP 3 profile (one per test session: GIMP's first start in a profile queries every plug-in)
    with the plug-in installed by ``stylebridge gimp-install``, and of GIMP's own plug-ins only those the tests
    use (:func:`_only_plug_ins_used`)."""
    for base in _scratch(gimp, "stylebridge-gimp-profile-"):
        profile = _install_profile(base / "profile")
        _only_plug_ins_used(gimp, profile)
        yield profile


#: GIMP's own plug-ins the tests use: the batch interpreter, and the loaders of the photos (JPEG) and of the
#: daemon's layers (PNG). XCF is GIMP's core.
SYSTEM_PLUG_INS = ("python-eval", "file-jpeg", "file-png")


def _only_plug_ins_used(gimp: Gimp, profile: Path) -> None:
    """The profile's plug-in path: its own plug-ins (stylebridge) and links to :data:`SYSTEM_PLUG_INS`, instead of
    GIMP's ~120: a profile's first start queries each one (~4 s of CPU) and every start registers them all
    (~0.2 s). Where GIMP's plug-in folder is not found the profile keeps GIMP's default path."""
    found = sorted(gimp.root.glob("usr/lib/*/gimp/3.0/plug-ins"))
    if not found:
        return
    links = profile / "system-plug-ins"
    links.mkdir()
    for name in SYSTEM_PLUG_INS:
        assert (found[0] / name).is_dir(), f"GIMP 3 has no {name} plug-in in {found[0]}"
        (links / name).symlink_to(gimp.inside(found[0] / name))
    with open(profile / "gimprc", "a") as fh:
        fh.write('(plug-in-path "${gimp_dir}/plug-ins:${gimp_dir}/system-plug-ins")\n')


def forget_last_values(profile: Path) -> None:
    """An interactive run starts from the procedure's last-used values (GIMP keeps them in the profile), not
    from the arguments given: forget them, so a dialog test starts from its own arguments."""
    (profile / "plug-in-settings" / "GimpProcedureConfigRun-python-fu-stylebridge.last").unlink(missing_ok=True)


def _install_profile(profile: Path) -> Path:
    proc = subprocess.run(stylebridge_command() + ["gimp-install", "--profile", str(profile)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    dest = profile / "plug-ins" / "stylebridge"
    assert str(dest) in proc.stdout, proc.stdout
    assert os.access(dest / "stylebridge.py", os.X_OK)
    assert (dest / "sb_client.py").read_bytes() == CLIENT_SOURCE.read_bytes()
    assert all((dest / name).is_file() for name in ("sb_png.py", "sb_logic.py", "sb_dialog.py", "sb_install.json"))
    shutil.copyfile(Path(__file__).with_name("sb_testhook.py"), dest / "sb_testhook.py")   # the dialog tests' hook
    return profile


# ------------------------------------------------------------------------------------------------
# the daemon
# ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: L-BFGS iterations of the test daemons' faithful previews (``serve --faithful-iterations``): the dialog tests check
#: that a faithful preview (a real Gatys run, method "gatys") replaces the instant one, not how it looks; at the
#: default 40 iterations each ticked style cost ~20 s of CPU at 176 px, at 1 about 1 s.
FAITHFUL_ITERATIONS = 1


class Daemon:
    """A real ``stylebridge serve`` on loopback, in its own state folder."""

    def __init__(self, home: Path, token: str | None = None, preset: str | None = None,
                 port: int | None = None, faithful_iterations: int | None = FAITHFUL_ITERATIONS) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.preset = preset
        self.faithful_iterations = faithful_iterations
        self.proc: subprocess.Popen | None = None
        self.log_path = home / "daemon.log"

    def start(self, timeout: float = 90.0) -> "Daemon":
        self.home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({"XDG_DATA_HOME": str(self.home / "xdg-data"), "XDG_CONFIG_HOME": str(self.home / "config")})
        env.pop("STYLEBRIDGE_DATA", None)
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            env.pop(var, None)
        if self.token:
            env["STYLEBRIDGE_TOKEN"] = self.token
        else:
            env.pop("STYLEBRIDGE_TOKEN", None)
        cmd = stylebridge_command() + ["serve", "--host", "127.0.0.1", "--port", str(self.port),
                                       "--data-dir", str(self.home / "data")]
        if self.preset:
            cmd += ["--preset", self.preset]
        if self.faithful_iterations:
            cmd += ["--faithful-iterations", str(self.faithful_iterations)]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.home,
                                     start_new_session=True)
        client = load_sb_client().Client(self.url, self.token, timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stylebridge serve exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                client.health()
                return self
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"stylebridge serve did not answer in {timeout} s:\n{self.log_text()}")
                time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """CPU seconds the daemon's process has used so far (user + system, from /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            print(f"daemon on port {self.port}: {self.cpu_seconds():.1f} s CPU")
            stop_process(self.proc, timeout=15)
        self.log.close()
        self.proc = None


@pytest.fixture
def daemon(tmp_path: Path):
    d = Daemon(tmp_path / "daemon").start()
    yield d
    d.stop()


@pytest.fixture(scope="package")       # stopped after tests/gimp, not kept idle for the rest of the suite
def _package_daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("gimp-daemon") / "daemon", preset="draft").start()
    yield d
    d.stop()


def empty_daemon(d: Daemon) -> None:
    """No job and no library style left on ``d`` (running ones cancelled first)."""
    client = load_sb_client().Client(d.url, d.token, timeout=30)
    for job in client.jobs():
        if job["status"] in ("queued", "running"):
            client.cancel(job["id"])
            deadline = time.monotonic() + 60
            while client.job(job["id"])["status"] in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.1)
        client.delete(job["id"])
    for style in client.styles():
        client.remove_style(style["name"])
    assert client.jobs() == [] and client.styles() == [], "the shared daemon could not be emptied"


@pytest.fixture
def shared_daemon(_package_daemon: Daemon):
    """The GIMP tests' one real ``stylebridge serve --preset draft`` (a real process on loopback, started once for
    tests/gimp: a start costs ~4 s of CPU), handed to each test empty: no library style, no job (one left running is
    cancelled), so a test sees only what it adds. Its ``--preset draft`` applies to jobs that name no preset (the
    dialog's Quality "daemon default"); a test that compares with the CLI names its preset. Tests that need a
    daemon of their own keep one: a token, a daemon that is down, started by the plug-in, or killed."""
    d = _package_daemon
    assert d.proc is not None and d.proc.poll() is None, f"the shared daemon died:\n{d.log_text()}"
    empty_daemon(d)
    before = d.cpu_seconds()
    yield d
    print(f"shared daemon: {d.cpu_seconds() - before:.1f} s CPU in this test")
    empty_daemon(d)


@contextlib.contextmanager
def relay(port: int, target_port: int):
    """``127.0.0.1:port`` opened onto the daemon at ``target_port`` (a byte relay, both ways, one connection per
    client connection) until the block ends: "a daemon starts listening on this port" without starting one."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    server.settimeout(0.1)
    stop = threading.Event()
    opened: list[socket.socket] = []

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", target_port))
            opened.extend((client, upstream))
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        for sock in opened:
            sock.close()


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
