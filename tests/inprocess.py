"""The front ends in this process, for tests of their logic: no 2-3 s of torch start-up per test.

* :func:`daemon_in_thread`: the real daemon app (``create_app``: Guard, routes, queue, job store) served by
  uvicorn on a loopback port in a thread, with the real engine (``run_engine``) or a stand-in runner;
* :class:`WatcherThread` / :func:`watch_once`: the real hot-folder :class:`~bridge.hotfolder.watcher.Watcher`
  with the in-process engine, a daemon engine or a stand-in (the renderer seam of bridge/hotfolder/process.py),
  its terminal lines collected;
* :class:`StubEngine`: a renderer that writes a real layered PSD of the photo itself (no optimisation).

* :class:`Forked`: ``stylebridge ARGS`` as a real process forked from this one (its own pid, signals, kill -9,
  resource limits), without a Python start-up and torch import of its own.

Real processes (signals, kill -9, resource limits, the command line itself) stay in the tests marked ``e2e``.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: "subprocess.Popen", timeout: float = 20) -> None:
    """SIGTERM ``proc`` and wait ``timeout`` s for it to end (a graceful stop), then SIGKILL it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(cond: Callable[[], Any], timeout: float = 60, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


@contextmanager
def daemon_in_thread(data_dir: Path, *, runner: Callable | None = None, port: int | None = None,
                     token: str | None = None, checkpoint_s: float | None = None,
                     retention_s: float | None = None, **limits: Any) -> Iterator[str]:
    """The daemon app on ``127.0.0.1:port`` (a free one by default) until the block ends; yields its URL.

    ``runner``: the job runner (default the real engine, ``run_engine``); ``limits``: fields of
    :class:`~bridge.settings.Limits` to change (as ``serve --max-...`` does). Leaving the block is
    ``serve``'s graceful stop: the lifespan ends, the job manager pauses and keeps unfinished jobs.
    """
    import uvicorn

    from bridge.daemon.app import DaemonConfig, create_app
    from bridge.daemon.runner import run_engine
    from bridge.settings import LIMITS

    if runner is None:          # warm up as ``serve`` does before it answers: the engine and the VGG (cached)
        from bridge.engine.vgg import load_vgg
        from bridge.settings import DEFAULTS
        load_vgg(DEFAULTS.weights, DEFAULTS.pooling, "cpu")
    port = port or free_port()
    extra: dict[str, Any] = {}
    if checkpoint_s is not None:
        extra["checkpoint_s"] = checkpoint_s
    if retention_s is not None:
        extra["retention_s"] = retention_s
    config = DaemonConfig(data_dir=Path(data_dir), port=port, token=token, resolved_device="cpu",
                          limits=dataclasses.replace(LIMITS, **limits), **extra)
    server = uvicorn.Server(uvicorn.Config(create_app(config, runner=runner or run_engine), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True, name=f"daemon-{port}")
    thread.start()
    try:
        assert wait_until(lambda: server.started or not thread.is_alive(), 30), "the in-process daemon did not start"
        assert server.started, "the in-process daemon did not start (port in use?)"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class StubEngine:
    """Stands in for the engine (the hot folder's renderer seam): the "styled" layers are the photo itself,
    built into the real layer stack and written as a real PSD, so the folder logic runs without torch."""

    allows_library = False

    def __init__(self) -> None:
        self.rendered: list[str] = []

    def render(self, inputs: Any, source: Path, dest: Path, report: Callable, cancel: Any, *,
               checkpoint: Any = None) -> None:
        from bridge.document.psd import write_psd
        from bridge.document.stack import build_stack
        from bridge.engine.types import StyledImage, StylizeResult

        self.rendered.append(inputs.content.name)
        report("stylizing", 0.0, ", ".join(s.name for s in inputs.styles))
        spec = inputs.spec
        photo = inputs.content
        images = [StyledImage(s.name, photo) for s in inputs.styles]
        result = StylizeResult(content=photo, images=images, settings=spec.settings,
                               working_size=(photo.width, photo.height))
        write_psd(build_stack(result, spec.document), dest)


class WatcherThread:
    """A running :class:`Watcher` in a thread; its terminal lines are collected (:meth:`wait_for`)."""

    def __init__(self, root: Path, engine: Any = None, **kwargs: Any) -> None:
        from bridge.hotfolder.process import InProcessEngine
        from bridge.hotfolder.report import Reporter
        from bridge.hotfolder.watcher import Watcher

        self.stream = _Lines()
        self.watcher = Watcher(root, engine if engine is not None else InProcessEngine(),
                               reporter=Reporter(self.stream), **{"stable_seconds": 0.2, **kwargs})
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.rc = self.watcher.run()

    def wait_for(self, text: str, timeout: float = 60) -> bool:
        return self.stream.wait_for(text, timeout)

    @property
    def output(self) -> str:
        return self.stream.getvalue()

    def stop(self, timeout: float = 60) -> int | None:
        """Stop as SIGTERM does (bridge/hotfolder/command.py calls the same ``Watcher.stop``)."""
        self.watcher.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the watcher did not stop"
        return self.rc

    def __enter__(self) -> "WatcherThread":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()


class _Lines(io.StringIO):
    """A text stream whose writers wake up :meth:`wait_for`."""

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition()

    def write(self, text: str) -> int:
        with self._cond:
            n = super().write(text)
            self._cond.notify_all()
        return n

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: text in super(_Lines, self).getvalue(), timeout=timeout)


def watch_once(root: Path, engine: Any = None, **kwargs: Any) -> tuple[int, str]:
    """``stylebridge watch DIR --once`` in this process (``command.run`` returns ``Watcher.run()``): (rc, lines)."""
    from bridge.hotfolder.process import InProcessEngine
    from bridge.hotfolder.report import Reporter
    from bridge.hotfolder.watcher import Watcher

    lines = io.StringIO()
    rc = Watcher(root, engine if engine is not None else InProcessEngine(), once=True, reporter=Reporter(lines),
                 **{"stable_seconds": 0.2, **kwargs}).run()
    return rc, lines.getvalue()


class Forked:
    """``stylebridge ARGS`` as a real process of its own, forked from this one: the command line's ``main`` runs in
    the child (argument parsing, signal handlers, the front end, the engine), its output on a pipe, its exit code
    the process's. Only Python's start-up and the imports are not paid again (torch, the cached VGG weights come
    with the fork). For real signals, kill -9 and per-process limits; the child never returns into the test.

    Enough of :class:`subprocess.Popen` for the tests: ``pid``, ``stdout`` (text lines; stderr too unless
    ``separate_stderr``: then ``stderr``), ``poll``, ``wait``,
    ``send_signal``, ``terminate``, ``kill``, ``communicate`` and ``returncode`` (``-N`` when killed by signal N).
    """

    def __init__(self, argv: list[str], preexec_fn: Callable[[], None] | None = None, *,
                 separate_stderr: bool = False) -> None:
        import os
        import sys

        from bridge.engine.vgg import load_vgg          # what the child would load first: here once, shared
        from bridge.settings import DEFAULTS
        load_vgg(DEFAULTS.weights, DEFAULTS.pooling, "cpu")
        read, write = os.pipe()
        err_read, err_write = os.pipe() if separate_stderr else (None, None)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:                                       # the child: never back into pytest
            code = 1
            try:
                os.close(read)
                os.dup2(write, 1)
                os.dup2(write if err_write is None else err_write, 2)
                os.close(write)
                if err_write is not None:
                    os.close(err_read)
                    os.close(err_write)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                sys.stdin = open(0, closefd=False)
                sys.stdout = open(1, "w", buffering=1, closefd=False)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                if preexec_fn is not None:
                    preexec_fn()
                from bridge.cli import main
                try:
                    code = main([str(a) for a in argv])
                except SystemExit as stop:
                    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code & 0xFF if isinstance(code, int) else 1)
        os.close(write)
        if err_write is not None:
            os.close(err_write)
        self.pid = pid
        self.args = argv
        self.returncode: int | None = None
        self.stdout = open(read, "r", errors="replace")
        self.stderr = open(err_read, "r", errors="replace") if err_read is not None else None

    def _reap(self, flags: int) -> int | None:
        import os
        if self.returncode is None:
            done, status = os.waitpid(self.pid, flags)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        import os
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        import subprocess
        if timeout is None:
            return self._reap(0)  # type: ignore[return-value]
        if not wait_until(lambda: self.poll() is not None, timeout, 0.02):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        import os
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        import signal
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        import signal
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        """The rest of its output (and of its stderr, when separate) once it has ended."""
        import subprocess
        streams = [self.stdout] + ([self.stderr] if self.stderr is not None else [])
        texts: dict[int, str] = {}
        readers = [threading.Thread(target=lambda i=i, f=f: texts.__setitem__(i, f.read()), daemon=True)
                   for i, f in enumerate(streams)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout)
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(timeout)
        return texts[0], texts.get(1)


def forked_serve(data_dir: Path, *extra: str, port: int | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> tuple[Forked, str]:
    """``stylebridge serve --port P --data-dir DATA EXTRA`` as a :class:`Forked` process, once it answers health:
    (process, url). Its output lines stay on ``process.stdout`` (read them, or they may fill the pipe)."""
    import httpx

    port = port or free_port()
    proc = Forked(["serve", "--port", str(port), "--data-dir", str(data_dir), *extra], preexec_fn=preexec_fn)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, f"serve exited {proc.returncode}: {proc.stdout.read()}"
        assert time.monotonic() < deadline, "serve did not answer within 90 s"
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code in (200, 401):
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
