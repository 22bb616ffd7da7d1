"""The daemon's jobs as Ray tasks (``stylebridge serve --ray ADDRESS --ray-shared DIR``).

The daemon stays the front door (HTTP API, queue, priorities, cancel, pause, previews, results); its worker
threads hand each job to :class:`RayRunner`, which runs it as one Ray task (:func:`_render_task`) on whichever
node has the resources it needs: one GPU where the cluster has GPUs, else one CPU; and the memory of the job's
estimate (:func:`bridge.daemon.memory.estimate_job_memory`, the run plan's peak). The task runs the same
:func:`bridge.daemon.runner.run_engine` (:func:`bridge.pipeline.render`) as the local runner.

Why these pieces:

- **A per-job actor** (:class:`JobChannel`, pinned to the head node so that losing a worker node never
  loses it) carries progress and the live preview from the task to the daemon, which polls it, and cancel,
  pause and "result no longer wanted" from the daemon to the task, where a thread polls it and sets the
  engine's :class:`~bridge.engine.types.CancelToken`.
- **The checkpoint lives in the shared folder** (``--ray-shared DIR``: NFS/SMB in a studio), one
  :class:`~bridge.engine.checkpoint.FileCheckpoint` per job (written atomically, as today; no ``flock``). A node
  that dies takes its task with it; Ray retries it (``max_retries``: system failures only, not a job's own
  errors) on another node, where it resumes from that checkpoint. The task returns its result only once, so
  the job ends done exactly once.

Importing this module imports Ray; nothing imports it unless ``serve --ray`` is given.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..memory import ImageShape, estimate_job_memory
from ..runner import RunContext, run_engine
from ...engine.checkpoint import FileCheckpoint
from ...engine.types import CancelToken, Progress
from ...pipeline import LoadedJob
from .channel import JobChannel

log = logging.getLogger("stylebridge.daemon")

TASK_RETRIES = 3          # a job's task runs again this many times when its node or worker dies
POLL_S = 0.25             # how often the daemon polls a job's actor, and the task its commands
CAPACITY_CACHE_S = 2.0    # how long the cluster's job slots are trusted before asking Ray again
MARKER = ".stylebridge-shared"    # written by the daemon in the shared folder; every task checks it sees it
CHECKPOINTS = "checkpoints"       # the jobs' checkpoints, one <job id>.npz each, in the shared folder
HEAD_RESOURCE = "node:__internal_head__"   # Ray's resource of the head node alone
MAX_PARALLEL = 64         # worker threads of the daemon: jobs in flight at most, whatever the cluster's size


class ClusterError(Exception):
    """The cluster cannot be used as asked (no Ray there, a shared folder that is not shared): one line."""


def _node_device(settings: Any) -> Any:
    """The job's settings with this node's device: CUDA when Ray gave the task a GPU, else the CPU (the
    checkpoint's fingerprint leaves the device out, so a job may resume on another kind of node)."""
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return dataclasses.replace(settings, device=device)


def _render_task(request: LoadedJob, channel: Any, checkpoint_path: str, interval_s: float, bound: Any,
                 marker: str) -> Any:
    """One job on one node: :func:`run_engine` with the job's checkpoint in the shared folder, progress to
    ``channel`` and the daemon's commands from it. Returns run_engine's outcome (None: paused, or unwanted)."""
    shared = Path(checkpoint_path).parent.parent
    try:
        seen = (shared / MARKER).read_text(encoding="utf-8").strip()
    except OSError:
        seen = None
    if seen != marker:
        raise ClusterError(f"the shared folder {shared} is not the daemon's on node {ray.util.get_node_ip_address()}"
                           f" (mount the same folder at the same path on every node, or give --ray-shared the path "
                           f"every node sees)")
    context = ray.get_runtime_context()
    ray.get(channel.started.remote({"id": context.get_node_id(), "address": ray.util.get_node_ip_address(),
                                    "pid": os.getpid(), "checkpoint_found": Path(checkpoint_path).is_file(),
                                    "resumed": False}))     # True once the engine says it went on from it
    token = CancelToken()
    commands = {"discard": False}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(POLL_S):
            try:
                got = ray.get(channel.read_commands.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - the daemon is away a moment: go on, ask again
                continue
            commands["discard"] = got["discard"]
            if got["cancel"]:
                token.cancel()
            if got["pause"]:
                token.pause()

    def progress(p: Progress) -> None:
        channel.report.remote({f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "preview"},
                              p.preview)

    watcher = threading.Thread(target=watch, name="stylebridge-commands", daemon=True)
    watcher.start()
    try:
        ctx = RunContext(progress=progress, cancel=token, set_phase=lambda phase: channel.set_phase.remote(phase),
                         wanted=lambda: not commands["discard"],
                         checkpoint=FileCheckpoint(checkpoint_path, interval_s, bound=bound))
        job = dataclasses.replace(request, settings=_node_device(request.settings))
        return run_engine(job, ctx)
    finally:
        stop.set()
        watcher.join(timeout=2 * POLL_S + 1)


_RENDER = ray.remote(_render_task)     # made once: a remote function is exported to the cluster once


class RayRunner:
    """The daemon's :data:`~bridge.daemon.runner.Runner` over a Ray cluster (see the module doc).

    ``slots()`` is how many jobs the cluster runs at once (its GPUs, else its CPUs); the daemon's queue hands
    out no more than that, so priorities and pausing stay the daemon's, not Ray's."""

    max_parallel = MAX_PARALLEL

    def __init__(self, shared: Path) -> None:
        self.shared = Path(shared)
        self.checkpoints = self.shared / CHECKPOINTS
        self.marker = uuid.uuid4().hex
        self.node_id = ray.get_runtime_context().get_node_id()    # the daemon's own node: the actors live there
        self._capacity = (0.0, 1)
        self.gpus = self._resources().get("GPU", 0) > 0

    # -- the cluster -----------------------------------------------------------------------------
    @staticmethod
    def _resources() -> dict[str, float]:
        return dict(ray.cluster_resources())

    def slots(self) -> int:
        """Jobs the cluster can run at once: its GPUs where it has any, else its CPUs (at least 1)."""
        at, value = self._capacity
        if time.monotonic() - at > CAPACITY_CACHE_S:
            try:
                resources = self._resources()
                value = max(1, int(resources.get("GPU" if self.gpus else "CPU", 0)))
            except Exception:  # noqa: BLE001 - the GCS is busy a moment: keep the last answer
                pass
            self._capacity = (time.monotonic(), value)
        return value

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's live nodes: id, address, CPUs, GPUs, memory (what ``ray.nodes()`` says)."""
        return [{"id": n["NodeID"], "address": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU", 0),
                 "gpus": n["Resources"].get("GPU", 0), "memory": n["Resources"].get("memory", 0)}
                for n in ray.nodes() if n.get("Alive")]

    def options(self, request: LoadedJob) -> dict[str, Any]:
        """The task's resources: one GPU (and one CPU) where the cluster has GPUs, else one CPU; the job's memory
        estimate. ClusterError when no node of the cluster has that much memory (it would wait forever)."""
        content = request.content
        shapes = [ImageShape(s.picture.width, s.picture.height, s.picture.alpha is not None, s.picture.bit_depth)
                  for s in request.styles]
        memory = estimate_job_memory(
            ImageShape(content.width, content.height, content.alpha is not None, content.bit_depth), shapes,
            request.settings, request.document, mask=None if request.mask is None else
            ImageShape(request.mask.shape[1], request.mask.shape[0]), on_cpu=not self.gpus)
        largest = max((n["memory"] for n in self.nodes()), default=0)
        if largest and memory > largest:
            raise ClusterError(f"this job needs about {memory / 2 ** 30:.1f} GB of memory and the largest node of the "
                               f"Ray cluster offers {largest / 2 ** 30:.1f} GB: try a smaller size, or add a node "
                               "with more memory")
        resources: dict[str, Any] = {"num_cpus": 1, "memory": int(memory)}
        if self.gpus:
            resources["num_gpus"] = 1
        return resources

    def prepare(self) -> None:
        """Make the shared folder's checkpoints folder and the marker every task checks. ClusterError if not."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            tmp = self.shared / f"{MARKER}.{os.getpid()}.tmp"
            tmp.write_text(self.marker, encoding="utf-8")
            os.replace(tmp, self.shared / MARKER)
        except OSError as exc:
            raise ClusterError(f"cannot write in the shared folder {self.shared} ({exc.strerror or exc}): "
                               "give --ray-shared a folder this daemon and every node can write") from None

    def _channel_place(self) -> dict[str, Any]:
        """Where a job's actor lives: the head node (its GCS: the cluster lives and dies with it), found by the
        resource Ray gives the head alone; else the daemon's own node. Never a worker node that may die."""
        if any(HEAD_RESOURCE in n["Resources"] for n in ray.nodes() if n.get("Alive")):
            return {"resources": {HEAD_RESOURCE: 0.001}}
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(self.node_id, soft=True)}

    def checkpoint_path(self, job_id: str) -> Path:
        return self.checkpoints / f"{job_id}.npz"

    # -- one job ---------------------------------------------------------------------------------
    def __call__(self, request: LoadedJob, ctx: RunContext) -> Any:
        """Run the job on the cluster and follow it until it ends; the outcome as :func:`run_engine`'s."""
        job_id = ctx.job_id or uuid.uuid4().hex
        path = self.checkpoint_path(job_id)
        interval = getattr(ctx.checkpoint, "interval_s", 30.0)
        bound = getattr(ctx.checkpoint, "bound", None)
        channel = JobChannel.options(**self._channel_place()).remote()
        task = _RENDER.options(max_retries=TASK_RETRIES, retry_exceptions=False,
                                                name=f"stylebridge-job-{job_id}", **self.options(request))
        ref = task.remote(request, channel, str(path), interval, bound, self.marker)
        follower = _Follower(channel, ctx)
        paused = False
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                follower.sync()
                if ready:
                    break
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:     # the job's own error: as itself, for its one line
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, BaseException) else exc) from None
            except ray.exceptions.RayError as exc:
                raise ClusterError(f"the job's task was lost {TASK_RETRIES + 1} times ({type(exc).__name__}); "
                                   "check the cluster's nodes (ray status)") from None
            follower.sync(final=True)
            paused = outcome is None and ctx.cancel.paused and not ctx.cancel.cancelled
            return outcome
        finally:
            if not paused:        # done, cancelled or failed: nothing will resume from it
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
            ray.kill(channel, no_restart=True)

    def close(self) -> None:
        ray.shutdown()


class _Follower:
    """The daemon's side of a job's channel: commands out (only when they change), progress, preview,
    phase and placement in (only what is new)."""

    def __init__(self, channel: Any, ctx: RunContext) -> None:
        self.channel, self.ctx = channel, ctx
        self.sent: tuple[bool, bool, bool] | None = None
        self.serial = self.preview_serial = 0
        self.phase: str | None = None
        self.runs: list[dict[str, Any]] = []
        self.last: Progress | None = None

    def sync(self, final: bool = False) -> None:
        ctx = self.ctx
        commands = (ctx.cancel.cancelled, ctx.cancel.paused, not ctx.wanted())
        if commands != self.sent and not final:
            self.channel.command.remote(*commands)
            self.sent = commands
        try:
            state = ray.get(self.channel.poll.remote(self.serial, self.preview_serial), timeout=30)
        except Exception:  # noqa: BLE001 - a slow poll: the next one catches up
            return
        if state["runs"] != self.runs:
            self.runs = state["runs"]
            ctx.placed(dict(self.runs[-1], attempts=len(self.runs)))
        if state["progress"] is not None:
            self.last = Progress(**state["progress"])
        if self.last is not None and (state["progress"] is not None or state["preview"] is not None):
            ctx.progress(dataclasses.replace(self.last, preview=state["preview"]))
        self.serial, self.preview_serial = state["serial"], state["preview_serial"]
        if state["phase"] != self.phase:
            self.phase = state["phase"]
            if self.phase:
                ctx.set_phase(self.phase)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """ClusterError at once when nothing listens at ``address`` (ray.init would retry for minutes)."""
    import socket
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address!r} is not HOST:PORT (the head's address, e.g. 10.0.0.2:6379) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} ({exc.strerror or exc}): start its head with "
                           "`ray start --head --port PORT` there, or check the address") from None


def connect(address: str, shared: Path) -> RayRunner:
    """Join the Ray cluster at ``address`` (``auto``: the one on this machine) as a driver, bound to loopback
    when the cluster's address is; then the shared folder. ClusterError in one line when it cannot."""
    host = address.rsplit(":", 1)[0] if address != "auto" else ""
    kwargs: dict[str, Any] = {"address": address, "namespace": "stylebridge", "log_to_driver": False,
                              "configure_logging": False}
    if host in ("127.0.0.1", "localhost"):
        kwargs["_node_ip_address"] = "127.0.0.1"
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, a version mismatch...: say which, one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot join the Ray cluster at {address}: {text} (start one with "
                           "`ray start --head`, and give its address)") from None
    runner = RayRunner(shared)
    try:
        runner.prepare()
    except ClusterError:
        ray.shutdown()
        raise
    return runner
