"""How many CPU threads the engine's torch uses, on a machine other programs use too.

Why: on a busy desktop (GIMP, a browser, a build) torch's default (one thread per core, OpenMP's spinning waits)
made a draft run take 113 s where one thread took 65 s (issue 23): a thread whose core another program holds
makes the team wait, and the waiting threads burn the cores the others want. Measured since
(bench/README.md "Threads on a busy machine"), the waits were the cost, not the count: with waits that sleep,
every allowed core is the fastest count under 1 and 2 competing busy processes too (the scheduler shares the
cores per thread). So the engine

- makes OpenMP's waiting threads sleep: :func:`prepare_process` sets ``OMP_WAIT_POLICY=PASSIVE`` and
  ``KMP_BLOCKTIME=0`` (unless the user set them) before torch loads OpenMP (the ``stylebridge`` command does it
  first thing; a program embedding ``bridge.engine`` calls it before ``import torch``);
- counts the cores it may use: the CPUs of its affinity mask (``os.sched_getaffinity``), capped by a cgroup
  CPU quota (``cpu.max`` / ``cpu.cfs_quota_us``, a container's ``--cpus``);
- measures what other programs use of them: the busy time of those CPUs in ``/proc/stat`` (and of its cgroup
  under a quota) minus its own process's CPU time, per wall second; without ``/proc`` (macOS) the 1-minute
  load average minus its own recent share;
- re-checks at the start of a run, at each stage and every :data:`RECHECK_S` seconds (``watch``), logging each
  change once: with passive waits (:func:`waits_passive`) every allowed core; with spinning waits (torch loaded
  before the policy could be set) ``round(cores - others)`` threads, and while others hold cores (more than
  :data:`CONTENDED`) the model's count and one other are each timed for a window per stage (evaluations per
  second) and the faster kept, tried again every :data:`PROBE_EVERY_S`.

``Settings.threads = N`` fixes N threads; an ``OMP_NUM_THREADS`` set by the user is respected (torch has read it:
nothing is changed). On a GPU the CPU threads only feed the device: nothing is changed either.
``torch.set_num_threads`` changes the team size at run time; it is per OS thread (OpenMP's ``nthreads-var``), so
the engine calls it from the thread that runs the optimisation.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

log = logging.getLogger(__name__)

#: what the engine's process sets before torch starts OpenMP (a value the user set wins)
PASSIVE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
RECHECK_S = 5.0          # seconds between re-checks within a stage
MIN_SAMPLE_S = 0.25      # shortest interval a usage delta is taken over (shorter ones are noise)
HYSTERESIS = 0.2         # cores: a count changes only when the free share is this far past the rounding point
CONTENDED = 0.5          # cores others use above which the count is found by trial (see Governor)
PROBE_EVERY_S = 30.0     # a trial count's measured speed is trusted this long, then tried again
_USER_THREADS_ENV = ("OMP_NUM_THREADS",)
_passive: bool | None = None   # what prepare_process found (None: it did not run; the environment says)
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") and "SC_CLK_TCK" in os.sysconf_names else 100


def prepare_process(environ: dict[str, str] | None = None) -> bool:
    """Make OpenMP's waiting threads sleep instead of spinning (``PASSIVE_ENV``, values the user set are kept).
    Only useful before torch is imported; returns whether it was in time."""
    global _passive
    env = os.environ if environ is None else environ
    user_set = "OMP_WAIT_POLICY" in env
    for key, value in PASSIVE_ENV.items():
        env.setdefault(key, value)
    in_time = "torch" not in sys.modules
    if environ is None:
        _passive = _says_passive(env) and (in_time or user_set)
    return in_time


def _says_passive(env: Mapping[str, str]) -> bool:
    return env.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def waits_passive() -> bool:
    """OpenMP's waiting threads sleep (set before torch loaded OpenMP: by :func:`prepare_process`, or by the user
    from the start). Then every allowed core is the fastest count on a busy machine too: the scheduler shares
    the cores per thread, and a thread waiting for a descheduled one sleeps instead of burning a core
    (bench/README.md "Threads on a busy machine": 2 threads beat 1 under 1 and 2 busy processes, 1.16x and
    2.2x). Spinning waits are what made more threads slower under load: then the count follows the load."""
    return _passive if _passive is not None else _says_passive(os.environ)


def user_fixed() -> bool:
    """The user fixed OpenMP's team size in the environment (torch read it at start): leave it."""
    return any(os.environ.get(k, "").strip() for k in _USER_THREADS_ENV)


# --- the cores this process may use ------------------------------------------------------------------------

def affinity() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU quota in cores (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), None if none."""
    for path in _cgroup_dirs(root):
        try:
            quota, period = (path / "cpu.max").read_text().split()[:2]
            if quota != "max" and float(period) > 0:
                return float(quota) / float(period)
            return None
        except (OSError, ValueError):
            pass
    try:
        quota_us = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def _cgroup_dirs(root: Path) -> list[Path]:
    """This process's own cgroup v2 folder (from /proc/self/cgroup), then the root."""
    out = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip().lstrip("/")
                if rel:
                    out.append(root / rel)
    except OSError:
        pass
    return [*out, root]


def allowed_cores(cpus: list[int] | None = None, quota: float | None = None) -> int:
    """How many threads can run at once: the affinity mask's CPUs, capped by the quota (rounded up)."""
    n = len(cpus if cpus is not None else affinity())
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-6)))
    return max(1, n)


# --- what other programs use of them ------------------------------------------------------------------------

@dataclass
class Sample:
    """One reading: wall clock, this process's CPU seconds, the busy seconds of our CPUs (None without
    /proc/stat), the cgroup's CPU seconds (None without a quota), the 1-minute load average."""

    wall: float
    own: float
    busy: float | None
    group: float | None
    load1: float | None


def read_sample(cpus: list[int], group_stat: Path | None = None, stat: Path = Path("/proc/stat")) -> Sample:
    """The counters :func:`others_between` compares."""
    busy: float | None = None
    try:
        wanted = {f"cpu{c}" for c in cpus}
        busy = 0.0
        for line in stat.read_text().splitlines():
            parts = line.split()
            if parts and parts[0] in wanted:
                ticks = [int(v) for v in parts[1:9]]     # user nice system idle iowait irq softirq steal
                busy += (sum(ticks) - ticks[3] - ticks[4]) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        busy = None
    group = None
    if group_stat is not None:
        try:
            for line in group_stat.read_text().splitlines():
                if line.startswith("usage_usec"):
                    group = int(line.split()[1]) / 1e6
        except (OSError, ValueError, IndexError):
            group = None
    try:
        load1: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load1 = None
    return Sample(time.monotonic(), time.process_time(), busy, group, load1)


def others_between(a: Sample, b: Sample, own_threads: int) -> float:
    """Cores' worth of CPU that other programs used between two samples (on our CPUs; within our cgroup when
    it has a quota, the larger of the two). Without /proc/stat: the load average minus our own threads' share."""
    wall = b.wall - a.wall
    own = max(0.0, b.own - a.own) / wall if wall > 0 else 0.0
    if a.busy is not None and b.busy is not None and wall > 0:
        others = (b.busy - a.busy) / wall - own
        if a.group is not None and b.group is not None:
            others = max(others, (b.group - a.group) / wall - own)
        return max(0.0, others)
    if b.load1 is not None:
        return max(0.0, b.load1 - min(own, float(own_threads)))
    return 0.0


def threads_for(free: float, allowed: int, current: int | None = None, hysteresis: float = HYSTERESIS) -> int:
    """Threads for ``free`` cores: the nearest whole number in 1..allowed; with the ``current`` count, a change
    only when ``free`` is more than ``hysteresis`` past the rounding point (no flapping around x.5)."""
    target = max(1, min(allowed, math.floor(free + 0.5)))
    if current is not None and target != current and 1 <= current <= allowed:
        edge = current + 0.5 if target > current else current - 0.5
        if abs(free - edge) < hysteresis:
            return current
    return target


# --- the governor ----------------------------------------------------------------------------------------------

@dataclass
class Governor:
    """The thread count of one engine thread: :meth:`begin` at a run's start, :meth:`check` at each stage and
    :meth:`tick` as often as convenient (it re-checks every ``recheck_s``)."""

    recheck_s: float = RECHECK_S
    set_threads: Callable[[int], None] | None = None
    get_threads: Callable[[], int] | None = None
    sampler: Callable[[], Sample] | None = None
    allowed: int = 0
    fixed: int | None = None          # a fixed count (Settings.threads); None = adaptive
    active: bool = False              # False: leave torch as it is (GPU, OMP_NUM_THREADS)
    last: Sample | None = None
    next_check: float = 0.0
    choices: list[tuple[float, int, float]] = field(default_factory=list)   # (time, threads, others) per change
    explore: bool = True              # find the count by trial while others hold cores
    clock: Callable[[], float] = time.monotonic
    rates: dict[int, tuple[float, float]] = field(default_factory=dict)     # count -> (ticks per second, when)
    trying: int | None = None         # the count the current window measures
    win_first: float | None = None    # the window's first and last tick, and ticks after the first
    win_last: float = 0.0
    win_n: int = 0

    def begin(self, threads_setting: int, device_type: str) -> int | None:
        """A run starts: fix or adapt the count (returns the count set, None when torch is left alone)."""
        cpus = affinity()
        quota = cgroup_quota()
        self.allowed = allowed_cores(cpus, quota)
        if self.sampler is None:
            group = _group_stat() if quota is not None else None
            self.sampler = lambda: read_sample(cpus, group)
        if threads_setting > 0:
            self.active, self.fixed = True, threads_setting
            return self._apply(threads_setting, None, "set by the threads setting", announce=True)
        self.fixed = None
        self.active = device_type == "cpu" and not user_fixed()
        if not self.active:
            return None
        now = self.sampler()
        if self.last is None or now.wall - self.last.wall > 60.0:     # no recent reading: the load average
            others = max(0.0, (now.load1 or 0.0) - 0.0)
            self.last = now
            count = self.allowed if waits_passive() else threads_for(self.allowed - others, self.allowed,
                                                                      self._current())
            return self._apply(count, others, announce=True)
        return self.check(force=True, announce=True)

    def check(self, force: bool = False, announce: bool = False) -> int | None:
        """Re-check now (a stage starts): the count for what others used since the last reading."""
        if not self.active or self.fixed is not None or self.sampler is None:
            return None
        now = self.sampler()
        self.next_check = self.clock() + self.recheck_s
        if self.last is None:
            self.last = now
            return None
        if now.wall - self.last.wall < MIN_SAMPLE_S and not force:
            return None
        if now.wall - self.last.wall < MIN_SAMPLE_S:       # too short to measure: keep the count
            return self._apply(self._current(), None, "too soon to measure again", announce)
        current = self._current()
        others = others_between(self.last, now, current)
        self.last = now
        if waits_passive():                  # every allowed core: see waits_passive
            return self._apply(self.allowed, others, f"waits are passive; other programs use {others:.1f} cores",
                               announce=announce)
        model = threads_for(self.allowed - others, self.allowed, current)
        if not self.explore or others < CONTENDED or self.allowed < 2:
            self.rates.clear()
            self.trying = None
            self._reset_window()
            return self._apply(model, others, announce=announce)
        pick = self._trial(model, current, new_stage=force)
        why = f"other programs use {others:.1f} of them; " + ", ".join(
            f"{n} threads: {r:.2f}/s" for n, (r, _) in sorted(self.rates.items()))
        return self._apply(pick, others, why, announce=announce)

    def _trial(self, model: int, current: int, new_stage: bool) -> int:
        """The count for the next window while others hold cores: the model's and one other, each measured
        over a window (per stage: an evaluation's cost changes with the stage), then the faster one."""
        now = self.clock()
        if new_stage:
            self.rates.clear()
        elif self.trying == current:
            if self.win_first is None or self.win_n < 2 or self.win_last <= self.win_first:
                return current                   # too few ticks to measure yet: the window goes on
            self.rates[current] = (self.win_n / (self.win_last - self.win_first), now)
        self._reset_window()
        step = max(1, model // 2)
        other = model + step if model < self.allowed else model - step
        candidates = list(dict.fromkeys([model, max(1, min(self.allowed, other))]))
        if new_stage and self.trying in candidates:      # a stage starts on the count that won the last one
            candidates = [self.trying] + [c for c in candidates if c != self.trying]
        stale = [c for c in candidates if c not in self.rates or now - self.rates[c][1] > PROBE_EVERY_S]
        self.trying = stale[0] if stale else max(candidates, key=lambda c: self.rates[c][0])
        return self.trying

    def _reset_window(self) -> None:
        self.win_first, self.win_last, self.win_n = None, 0.0, 0

    def tick(self) -> None:
        """Cheap enough for every iteration (and tiled block): counts it for the speed of the current count, and
        re-checks once ``recheck_s`` has passed."""
        if not self.active or self.fixed is not None:
            return
        now = self.clock()
        if self.win_first is None:
            self.win_first = now
        else:
            self.win_n += 1
            self.win_last = now
        if now >= self.next_check:
            self.check()

    def _current(self) -> int:
        return (self.get_threads or _torch_get)()

    def _apply(self, n: int, others: float | None, why: str = "", announce: bool = False) -> int:
        """Set ``n`` threads; logged at info when it changes the count or a run starts, else at debug."""
        changed = n != self._current()
        if changed:
            (self.set_threads or _torch_set)(n)
            self.choices.append((time.monotonic(), n, others if others is not None else float("nan")))
        if changed or announce:
            log.info("engine threads: %d of %d allowed cores (%s)", n, self.allowed,
                     why or f"other programs use {others:.1f} of them")
        else:
            log.debug("engine threads: keeping %d (%s)", n, why or f"others use {others:.1f} cores")
        return n


def _group_stat() -> Path | None:
    for path in _cgroup_dirs(Path("/sys/fs/cgroup")):
        if (path / "cpu.stat").is_file():
            return path / "cpu.stat"
    return None


def _torch_get() -> int:
    import torch
    return torch.get_num_threads()


def _torch_set(n: int) -> None:
    import torch
    torch.set_num_threads(n)


_local = threading.local()


def governor() -> Governor:
    """This OS thread's governor (torch's thread count is per thread; a daemon's worker keeps its readings
    from one job to the next)."""
    gov = getattr(_local, "governor", None)
    if gov is None:
        gov = _local.governor = Governor()
    return gov


def begin(threads_setting: int, device_type: str) -> int | None:
    """A run starts on this thread: see :meth:`Governor.begin`."""
    return governor().begin(threads_setting, device_type)


def watch(reporter: object) -> None:
    """A stage starts: re-check now, and every ``RECHECK_S`` from the reporter's per-iteration (and per-block)
    stop check (``reporter.check``), without touching the loop itself."""
    gov = governor()
    gov.check(force=True)
    if not gov.active or gov.fixed is not None:
        return
    inner = reporter.check       # type: ignore[attr-defined]

    def check() -> None:
        gov.tick()
        inner()

    reporter.check = check       # type: ignore[attr-defined]
