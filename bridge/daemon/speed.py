"""How long a job takes on this daemon, before it runs: ``POST /v1/estimate`` and the speed it is computed at.

Why here: every front end (GIMP's dialog, the CLI, scripts) asks the daemon instead of keeping its own copy
of the schedule and a guessed speed. The estimate is

    work units (:func:`work_units`: over style runs and stages, iterations x cost_model.units(stage pixels x
    (TILED_COST if tiled))) x this daemon's seconds per unit

with the stages from the engine's ONE run plan (:func:`bridge.engine.plan.plan_run`: ``Settings.ladder``/``ladder_iterations``,
presets included; tiled stages and their cost weights as the engine runs them) and the engine's
:class:`~bridge.engine.eta.CostModel` for this device. The seconds per unit are MEASURED on this daemon: what
finished jobs took (engine seconds over their units, smoothed, :meth:`SpeedMeter.record`), and before the first
job one small forward+backward timed (:func:`measure`, about a second) when an estimate first needs it, not at
start: a daemon starts that much sooner, and one that is never asked never measures.

What finished jobs taught is kept in the daemon's data folder (``speed.json``: the learnt seconds per unit of
work on this device), so a restarted daemon (the GIMP plug-in's stops when idle) starts from it and needs no
probe; and a job is learnt from as it ends (``JobManager.on_done``), before a client deletes it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..settings import Settings
from ..settings_parse import settings_from_mapping

PROBE_SIDE = 128           # px: the start-up probe's image (square); ~0.1 s per evaluation on a quiet 2-core CPU
PROBE_REPEATS = 3          # timed evaluations after one untimed (the first pays allocation); the fastest counts
PROBE_SECONDS = 1.0        # ... fewer once the timed ones took this long (a busy machine: seconds each)
SMOOTHING = 0.5            # weight of the newest finished job in the learnt speed
FACTOR_RANGE = (0.1, 10.0) # a finished job's speed counts within this factor of the one known before (an outlier)
SPEED_FILE = "speed.json"  # in the daemon's data folder: what finished jobs taught, per device


@dataclass(frozen=True)
class JobEstimate:
    """The predicted optimisation time of one job on this daemon."""

    seconds: float
    working_size: tuple[int, int]                 # (w, h) of the last stage
    stages: list[tuple[int, int]]                 # (long side, iterations) per stage
    tiled: list[bool]                             # per stage: computed in blocks (costs TILED_COST more per px)
    runs: int                                     # optimisations: one per style, plus the blend
    device: str
    measured: bool                                # from this daemon's measured speed (else the device prior)

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 1), "working_size": list(self.working_size),
                "stages": [list(s) for s in self.stages], "tiled": list(self.tiled), "runs": self.runs,
                "device": self.device, "measured": self.measured}


@dataclass
class SpeedMeter:
    """This daemon's speed in seconds per unit of work (one iteration's pixel-equivalent, the engine's
    :class:`~bridge.engine.eta.CostModel` units): what finished jobs took, smoothed; before any, the probe's; without
    a probe, the device's prior. The probe is measured when an estimate first needs it (``probe``), not at start."""

    device: str                                   # "cpu", "cuda", "cuda:1", "mps"
    probe_spp: float | None = None                # seconds per unit from :func:`measure`
    learnt_spp: float | None = None               # seconds per unit finished jobs took, smoothed over them
    jobs: int = 0                                 # finished jobs folded into ``learnt_spp``
    seen: set[str] = field(default_factory=set)   # job ids already folded in
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    path: Path | None = None                      # where the learnt speed is kept (None: nowhere)
    probe: Callable[[], float | None] | None = field(default=None, repr=False)   # measures ``probe_spp``, once
    probe_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def device_type(self) -> str:
        return self.device.split(":", 1)[0]

    @property
    def measured(self) -> bool:
        """The speed is this daemon's own (a probe or finished jobs), not the device's prior guess."""
        return self.probe_spp is not None or self.learnt_spp is not None

    def probed_spp(self) -> float | None:
        """The probe's speed, measured now if it has not been (once: a failed probe is not retried)."""
        with self.probe_lock:
            if self.probe is not None:
                probe, self.probe = self.probe, None
                self.probe_spp = probe()
        return self.probe_spp

    def model(self, corrected: bool = True) -> Any:
        """The engine's cost model for this device at this daemon's speed: what finished jobs took (``corrected``),
        else the probe's (measuring it now if it has not been), else the device's prior."""
        from ..engine.eta import cost_model
        prior = cost_model(self.device_type)
        spp = self.learnt_spp if corrected else None
        if spp is None:
            spp = self.probed_spp()
        return dataclasses.replace(prior, seconds_per_pixel=prior.seconds_per_pixel if spp is None else spp)

    def record(self, units: float, actual_s: float) -> None:
        """A finished job took ``actual_s`` engine seconds for ``units`` of work (:func:`work_units`); its speed
        counts within :data:`FACTOR_RANGE` of the speed known before it (learnt, else the probe's if measured)."""
        if not (units > 0 and actual_s > 0):
            return
        spp = actual_s / units
        with self.lock:
            known = self.learnt_spp if self.learnt_spp is not None else self.probe_spp
            if known is not None:
                spp = min(FACTOR_RANGE[1] * known, max(FACTOR_RANGE[0] * known, spp))
            self.learnt_spp = spp if self.learnt_spp is None else SMOOTHING * spp + (1 - SMOOTHING) * self.learnt_spp
            self.jobs += 1

    def save(self) -> None:
        """Keep what finished jobs taught in :attr:`path` (per device; other devices' entries kept)."""
        if self.path is None or self.learnt_spp is None:
            return
        data = _read(self.path)
        data[self.device] = {"seconds_per_unit": self.learnt_spp, "jobs": self.jobs}
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)   # an estimate is a convenience: never fail a job over it

    def load(self) -> bool:
        """Start from what an earlier daemon learnt on this device (then no probe is needed). True when there was
        something to load."""
        entry = _read(self.path).get(self.device) if self.path is not None else None
        try:
            spp, jobs = float(entry["seconds_per_unit"]), int(entry["jobs"])
        except (TypeError, KeyError, ValueError):
            return False
        if not (spp > 0 and jobs > 0 and math.isfinite(spp)):
            return False
        with self.lock:
            self.learnt_spp, self.jobs = spp, jobs
        return True


def speed_file(data_dir: Path | str) -> Path:
    return Path(data_dir) / SPEED_FILE


def _read(path: Path | None) -> dict:
    try:
        data = json.loads(Path(path).read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def style_runs(styles: int, settings: Settings) -> int:
    """Optimisations of a job: one per style, plus the blend when ``style_blend_weights`` are given."""
    return styles + (1 if settings.style_blend_weights is not None else 0)


def work_units(settings: Settings, width: int, height: int, styles: int, device: str) -> tuple[float, Any]:
    """The units of work of a job on ``device`` (iterations x cost-model units, over every stage and style run,
    as the engine will run it), and the engine's run plan they come from."""
    import torch

    from ..engine.eta import cost_model
    from ..engine.plan import plan_run

    # the engine's own plan: which stages are tiled, and a SettingsError where the budget cannot hold one
    plan = plan_run(settings, width, height, torch.device(device))
    model = cost_model(device.split(":", 1)[0])
    per_run = sum(stage.iterations * model.units(int(stage.cost_pixels)) for stage in plan.stages)
    return style_runs(styles, settings) * per_run, plan


def estimate(settings: Settings, width: int, height: int, styles: int, meter: SpeedMeter,
             corrected: bool = True) -> JobEstimate:
    """Seconds of optimisation for a ``width`` x ``height`` photo with ``styles`` styles, as the engine will
    run it (same ladder, same tiled stages, same per-stage cost weights as its RunEstimator)."""
    units, plan = work_units(settings, width, height, styles, meter.device)
    model = meter.model(corrected)
    return JobEstimate(seconds=units * model.seconds_per_pixel, working_size=plan.working_size,
                       stages=list(zip(plan.ladder, plan.iterations)), tiled=[s.tiled for s in plan.stages],
                       runs=style_runs(styles, settings), device=meter.device, measured=meter.measured)


def record_finished(meter: SpeedMeter, settings: Settings, width: int, height: int, styles: int,
                    engine_s: float) -> None:
    """The hook for a finished job (not partial): fold its engine seconds into the meter's speed."""
    meter.record(work_units(settings, width, height, styles, meter.device)[0], engine_s)


def learn_from_jobs(meter: SpeedMeter, jobs: Iterable[Any], save: bool = False) -> None:
    """Fold in the daemon's finished, complete jobs not seen yet (``bridge.daemon.store.Job``: its size, styles,
    the settings it ran with and the engine seconds of its result); ``save``: keep the result (:meth:`save`)."""
    names = {f.name for f in dataclasses.fields(Settings)}
    learnt = meter.jobs
    for job in jobs:
        result = getattr(job, "result", None)
        if job.id in meter.seen or str(getattr(job, "status", "")) != "done" or result is None or job.partial:
            continue
        meter.seen.add(job.id)
        engine_s = ((getattr(result.stack, "meta", None) or {}).get("timings") or {}).get("engine_s")
        try:
            settings, _, _ = settings_from_mapping({k: v for k, v in result.settings.items() if k in names})
            record_finished(meter, settings, job.width, job.height, len(job.styles), float(engine_s))
        except (TypeError, ValueError):       # an odd job (a test's stand-in runner): nothing to learn
            continue
    if save and meter.jobs != learnt:
        meter.save()


def measure(vgg: Any, device: Any, settings: Settings, side: int = PROBE_SIDE, repeats: int = PROBE_REPEATS
            ) -> float:
    """Seconds per pixel-equivalent of one optimisation step on ``device``: the fastest of ``repeats`` timed
    forward+backward passes of a ``side`` x ``side`` image through the content and style layers (Gram
    losses), over the cost model's ``pixels + overhead_pixels``. About a second (more on a busy machine)."""
    import torch

    from ..engine.eta import cost_model
    from ..engine.losses import gram_matrix

    device = torch.device(device)
    layers = tuple(dict.fromkeys([*settings.content_layers, *settings.style_layers]))
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, side, side, generator=generator) * 255.0).to(device)
    best, spent = float("inf"), 0.0
    for k in range(repeats + 1):
        x = image.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        feats = vgg(x, layers)
        loss = sum(gram_matrix(f).square().mean() + f.square().mean() for f in feats.values())
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        took = time.perf_counter() - started
        if k:
            best = min(best, took)
            spent += took
            if spent >= PROBE_SECONDS:
                break
    return best / cost_model(device.type).units(side * side)
