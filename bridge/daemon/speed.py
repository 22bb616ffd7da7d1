"""How long a job takes on this daemon, before it runs: ``POST /v1/estimate`` and the start-up measurement.

Why here: every front end (GIMP's dialog, the CLI, scripts) asks the daemon instead of keeping its own copy
of the schedule and a guessed speed. The estimate is

    sum over style runs, stages: iterations x cost_model.seconds(stage pixels x (TILED_COST if tiled))

with the stages from the engine's ONE run plan (:func:`bridge.engine.plan.plan_run`: ``Settings.ladder``/``ladder_iterations``,
presets included; tiled stages and their cost weights as the engine runs them), and the engine's
:class:`~bridge.engine.eta.CostModel` for this device with ``seconds_per_pixel`` replaced by this daemon's
MEASURED speed: one small forward+backward timed when the daemon starts (:func:`measure`), then corrected
by finished jobs (engine seconds against the estimate at the probe's speed, :meth:`SpeedMeter.record`).

What finished jobs taught is kept in the daemon's data folder (``speed.json``: the learnt seconds per unit of
work on this device), so a restarted daemon (the GIMP plug-in's stops when idle) starts from it, not from the
probe alone; and a job is learnt from as it ends (``JobManager.on_done``), before a client deletes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..settings import Settings
from ..settings_parse import settings_from_mapping

PROBE_SIDE = 128           # px: the start-up probe's image (square); ~0.1 s per evaluation on a quiet 2-core CPU
PROBE_REPEATS = 3          # timed evaluations after one untimed (the first pays allocation); the fastest counts
PROBE_SECONDS = 1.0        # ... fewer once the timed ones took this long (a busy machine: seconds each)
SMOOTHING = 0.5            # weight of the newest finished job in the correction factor
FACTOR_RANGE = (0.1, 10.0) # a finished job may correct the probe's speed by at most this (a stray outlier)
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
    """This daemon's speed: the probe's seconds per pixel-equivalent, times a factor learnt from finished jobs."""

    device: str                                   # "cpu", "cuda", "cuda:1", "mps"
    probe_spp: float | None = None                # seconds per (pixel + overhead) from :func:`measure`
    factor: float = 1.0                           # actual / predicted engine seconds, smoothed over jobs
    jobs: int = 0                                 # finished jobs folded into ``factor``
    seen: set[str] = field(default_factory=set)   # job ids already folded in
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    path: Path | None = None                      # where the learnt speed is kept (None: nowhere)

    @property
    def device_type(self) -> str:
        return self.device.split(":", 1)[0]

    @property
    def measured(self) -> bool:
        return self.probe_spp is not None or self.jobs > 0

    def model(self, corrected: bool = True) -> Any:
        """The engine's cost model for this device, at the measured speed (``corrected``: with the factor)."""
        from ..engine.eta import cost_model
        prior = cost_model(self.device_type)
        spp = self.probe_spp if self.probe_spp is not None else prior.seconds_per_pixel
        return dataclasses.replace(prior, seconds_per_pixel=spp * (self.factor if corrected else 1.0))

    def record(self, predicted_s: float, actual_s: float) -> None:
        """A finished job took ``actual_s`` engine seconds where the uncorrected model said ``predicted_s``."""
        if not (predicted_s > 0 and actual_s > 0):
            return
        ratio = min(FACTOR_RANGE[1], max(FACTOR_RANGE[0], actual_s / predicted_s))
        with self.lock:
            self.factor = ratio if self.jobs == 0 else SMOOTHING * ratio + (1 - SMOOTHING) * self.factor
            self.jobs += 1

    def learnt_spp(self) -> float | None:
        """Seconds per unit of work as finished jobs measured it (None before any)."""
        if self.jobs == 0:
            return None
        return self.model(corrected=True).seconds_per_pixel

    def save(self) -> None:
        """Keep what finished jobs taught in :attr:`path` (per device; other devices' entries kept)."""
        spp = self.learnt_spp()
        if self.path is None or spp is None:
            return
        data = _read(self.path)
        data[self.device] = {"seconds_per_unit": spp, "jobs": self.jobs}
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)   # an estimate is a convenience: never fail a job over it

    def load(self) -> bool:
        """Start from what an earlier daemon learnt on this device: the factor that turns this start's probe
        (or the device prior) into the learnt speed. True when there was something to load."""
        entry = _read(self.path).get(self.device) if self.path is not None else None
        try:
            spp, jobs = float(entry["seconds_per_unit"]), int(entry["jobs"])
        except (TypeError, KeyError, ValueError):
            return False
        base = self.model(corrected=False).seconds_per_pixel
        if not (spp > 0 and base > 0 and jobs > 0):
            return False
        with self.lock:
            self.factor = min(FACTOR_RANGE[1], max(FACTOR_RANGE[0], spp / base))
            self.jobs = jobs
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


def estimate(settings: Settings, width: int, height: int, styles: int, meter: SpeedMeter,
             corrected: bool = True) -> JobEstimate:
    """Seconds of optimisation for a ``width`` x ``height`` photo with ``styles`` styles, as the engine will
    run it (same ladder, same tiled stages, same per-stage cost weights as its RunEstimator)."""
    import torch

    from ..engine.plan import plan_run

    # the engine's own plan: which stages are tiled, and a SettingsError where the budget cannot hold one
    plan = plan_run(settings, width, height, torch.device(meter.device))
    model = meter.model(corrected)
    runs = style_runs(styles, settings)
    per_run = sum(stage.iterations * model.seconds(int(stage.cost_pixels)) for stage in plan.stages)
    return JobEstimate(seconds=runs * per_run, working_size=plan.working_size,
                       stages=list(zip(plan.ladder, plan.iterations)), tiled=[s.tiled for s in plan.stages],
                       runs=runs, device=meter.device, measured=meter.measured)


def record_finished(meter: SpeedMeter, settings: Settings, width: int, height: int, styles: int,
                    engine_s: float) -> None:
    """The hook for a finished job (not partial): fold its engine seconds into the meter's factor."""
    meter.record(estimate(settings, width, height, styles, meter, corrected=False).seconds, engine_s)


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
