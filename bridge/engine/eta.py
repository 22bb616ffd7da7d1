"""Percent done and time left for a whole run, weighted by what each stage really costs.

Why: iterations are not equal. One L-BFGS iteration costs about (pixels + a fixed overhead) x the
device's speed, so a 512 px iteration costs ~16x a 128 px one; counting iterations as equal showed 40%
and "2:40 left" with 11 minutes to go. Every front end (CLI bar, daemon ``percent``/``eta_s``, GIMP)
shows the numbers computed here, carried by :class:`bridge.engine.types.Progress`.

- **percent** = cost done / cost of the run, with each iteration weighted by the device's cost model
  (:class:`CostModel`: ``pixels + overhead_pixels``). Fixed at the start, so it never goes backwards.
- **eta_seconds** = predicted seconds for the iterations left. A stage that has run (in this or an
  earlier style of the same job: every style goes through the same ladder) is predicted from its own
  measured seconds per iteration; a stage not run yet from the speed measured at the latest stage run,
  scaled by the ratio of the two stages' (pixels + overhead), the overhead fitted to the stages run so
  far once two have (the device model's until then); before anything has run, from the model's prior
  speed. The stage now running blends its measured speed with that prediction for its first
  ``PRIOR_ITERATIONS`` iterations (the first one also pays the stage's set-up and an extra evaluation).
  Optionally (``RECENT`` > 0, off: see there) every prediction is scaled by the recent speed over the
  running stage's average speed.
- **within an iteration** (:meth:`RunEstimator.partial`: a tiled iteration at 24 MP takes ~13 min on a CPU),
  the iteration in flight counts as done by the fraction its blocks give, in the percent and in the time
  left; its seconds so far count as that fraction of a measured iteration, so a stage's first, slow iteration
  corrects a wrong prediction before it ends. Nothing of it is kept: the iteration's own event measures it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class CostModel:
    """Seconds per optimisation iteration on a device: ``(pixels + overhead_pixels) * seconds_per_pixel``.

    ``overhead_pixels`` is the per-iteration cost that does not grow with the image (Python, L-BFGS
    bookkeeping, small kernels), in pixel-equivalents; ``seconds_per_pixel`` is only the prior speed
    used before the run has measured its own (machines differ and are shared: the measured speed wins).
    """

    seconds_per_pixel: float
    overhead_pixels: float

    def units(self, pixels: int) -> float:
        """The relative cost of one iteration at ``pixels`` pixels."""
        return float(pixels) + self.overhead_pixels

    def seconds(self, pixels: int) -> float:
        return self.units(pixels) * self.seconds_per_pixel


# cpu: seconds_per_pixel from 0.98 s/iteration at 512x341 (2 threads, quiet; bench/README.md target 2);
# overhead_pixels from bench/bench_eta.py --model (64..256 px fit, busy machine; bench/README.md).
# cuda/mps were not measured (no such machine was lent): guesses, corrected by the run's own measured
# speed from its first iterations on.
DEVICE_MODELS: dict[str, CostModel] = {
    "cpu": CostModel(seconds_per_pixel=5.6e-6, overhead_pixels=4000.0),
    "cuda": CostModel(seconds_per_pixel=2.0e-8, overhead_pixels=150_000.0),
    "mps": CostModel(seconds_per_pixel=2.0e-7, overhead_pixels=50_000.0),
}

PRIOR_ITERATIONS = 3.0   # a stage's speed is its own measured one from this many iterations on
# Scaling the predictions by the recent speed (smoothing RECENT, ~1/RECENT iterations) did not help on
# the recorded busy-machine runs (bench/README.md, replays: mean error 12-14% with it, 11.8% without:
# the load there comes in bursts, not trends), so it is off; bench_eta.py --replay compares settings.
RECENT = 0.0
SPEED_SWING = 2.0        # the recent speed may scale the predictions by at most this (either way)


def cost_model(device_type: str) -> CostModel:
    return DEVICE_MODELS.get(device_type, DEVICE_MODELS["cpu"])


@dataclass(frozen=True)
class Estimate:
    percent: float            # 0..100, stage-weighted, never decreasing during a run
    eta_seconds: float | None # predicted seconds left (None before the first iteration)


class RunEstimator:
    """Tracks one run: ``jobs`` optimisations (styles, then the blend) over the same stage ladder.

    Call :meth:`start_stage` before a stage's first iteration, :meth:`iteration` after each one (it
    returns the current :class:`Estimate`), and :meth:`end_stage` when a stage stops (early or not).
    """

    def __init__(self, stage_pixels: list[int], stage_iterations: list[int], jobs: int, model: CostModel,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if len(stage_pixels) != len(stage_iterations):
            raise ValueError("one iteration count per stage is needed")
        self.pixels, self.iterations, self.jobs = list(stage_pixels), list(stage_iterations), jobs
        self.model, self.clock = model, clock
        self.unit = [model.units(p) for p in self.pixels]
        self.total_units = jobs * sum(u * n for u, n in zip(self.unit, self.iterations))
        self.done_units = 0.0
        self._measured_s = [0.0] * len(self.pixels)     # per stage: seconds measured, all jobs
        self._measured_n = [0] * len(self.pixels)       # per stage: iterations measured, all jobs
        self._latest: int | None = None                 # the last stage that measured anything
        self._job = self._stage = 0
        self._mark = 0.0                                # clock at the stage's start or its last iteration
        self._stage_done = 0
        self._stage_units_start = 0.0
        self._recent: float | None = None               # smoothed seconds per iteration, this stage
        self._factor = 1.0                              # recent speed / the stage's average speed

    # -- events ------------------------------------------------------------------------------------
    def start_stage(self, job: int, stage: int, done: int = 0) -> None:
        """``done``: iterations of this stage already done (a run resumed from a checkpoint): they count
        as done but are not measured."""
        self._job, self._stage, self._stage_done, self._recent = job, stage, done, None
        self._stage_units_start = self._units_before(job, stage)
        self.done_units = max(self.done_units, self._stage_units_start + self.unit[stage] * min(
            done, self.iterations[stage]))
        self._mark = self.clock()

    def iteration(self, iteration: int) -> Estimate:
        """The stage's ``iteration``-th iteration (1-based) has finished."""
        now = self.clock()
        k = self._stage
        steps = max(0, iteration - self._stage_done)
        self._measured_s[k] += now - self._mark
        self._measured_n[k] += steps
        if RECENT > 0 and steps and self._stage_done > 0:   # not a stage's first iteration (set-up, extra evaluation)
            per = (now - self._mark) / steps
            self._recent = per if self._recent is None else self._recent + RECENT * (per - self._recent)
        n = self._measured_n[k]
        if self._recent is not None and n >= PRIOR_ITERATIONS and self._measured_s[k] > 0:
            self._factor = min(SPEED_SWING, max(1.0 / SPEED_SWING, self._recent * n / self._measured_s[k]))
        self._mark, self._stage_done, self._latest = now, iteration, k
        self.done_units = max(self.done_units, self._stage_units_start + self.unit[k] * min(iteration,
                                                                                          self.iterations[k]))
        return self._estimate()

    def partial(self, fraction: float) -> Estimate:
        """The iteration in flight (the stage's next) is ``fraction`` (0..1) done: percent and time left with
        it counted in part. The percent never goes back and never passes the iteration's own event."""
        f = min(1.0, max(0.0, fraction))
        k = self._stage
        done = min(self._stage_done + f, float(self.iterations[k]))
        self.done_units = max(self.done_units, self._stage_units_start + self.unit[k] * done)
        elapsed = max(0.0, self.clock() - self._mark)
        return Estimate(self.percent, self.remaining_seconds(in_flight=(f, elapsed)))

    def end_stage(self) -> None:
        """The stage stopped: its remaining iterations count as done (a stage may end early)."""
        k = self._stage
        self.done_units = max(self.done_units, self._stage_units_start + self.unit[k] * self.iterations[k])

    # -- estimates ---------------------------------------------------------------------------------
    @property
    def percent(self) -> float:
        return 100.0 if self.total_units <= 0 else min(100.0, 100.0 * self.done_units / self.total_units)

    def seconds_per_iteration(self, stage: int, in_flight: tuple[float, float] = (0.0, 0.0)) -> float:
        """Predicted seconds of one iteration at ``stage`` from what was measured so far; ``in_flight``
        (fraction, seconds): part of an iteration running now, counted as measured."""
        k = stage
        predicted, from_measured = self._predicted(k)
        n = self._measured_n[k] + in_flight[0]
        seconds = self._measured_s[k] + in_flight[1]
        if n <= 0:
            return predicted
        if not from_measured:      # the device prior is only a guess for this machine: trust the clock
            return seconds / n
        prior = max(0.0, PRIOR_ITERATIONS - n)    # fills in for the stage's first, noisy iterations only
        return (seconds + prior * predicted) / (n + prior)

    def remaining_seconds(self, in_flight: tuple[float, float] = (0.0, 0.0)) -> float:
        """``in_flight``: (fraction done, seconds so far) of the running stage's next iteration."""
        k, job = self._stage, self._job
        rate = [self.seconds_per_iteration(s, in_flight if s == k else (0.0, 0.0)) for s in range(len(self.pixels))]
        left = max(0.0, self.iterations[k] - self._stage_done - in_flight[0]) * rate[k]
        left += sum(self.iterations[s] * rate[s] for s in range(k + 1, len(self.pixels)))
        left += (self.jobs - job - 1) * sum(n * r for n, r in zip(self.iterations, rate))
        return left * self._factor

    # -- internals ---------------------------------------------------------------------------------
    def _estimate(self) -> Estimate:
        return Estimate(self.percent, self.remaining_seconds())

    def _units_before(self, job: int, stage: int) -> float:
        per_job = sum(u * n for u, n in zip(self.unit, self.iterations))
        return job * per_job + sum(u * n for u, n in zip(self.unit[:stage], self.iterations[:stage]))

    def _predicted(self, stage: int) -> tuple[float, bool]:
        """Speed of a stage from another stage's measured speed (the latest, else the nearest in size that
        measured anything), scaled by the cost model, and True; the model's prior and False when no other
        stage has measured anything."""
        ref = self._latest if self._latest is not None and self._latest != stage else None
        if ref is None or self._measured_n[ref] == 0:
            others = [s for s in range(len(self.pixels)) if s != stage and self._measured_n[s] > 0]
            ref = min(others, key=lambda s: abs(self.unit[s] - self.unit[stage])) if others else None
        if ref is None:
            return self.model.seconds(self.pixels[stage]), False
        measured = self._measured_s[ref] / self._measured_n[ref]
        overhead = self._overhead(exclude=stage)
        return measured * (self.pixels[stage] + overhead) / (self.pixels[ref] + overhead), True

    def _overhead(self, exclude: int) -> float:
        """The per-iteration overhead in pixel-equivalents, fitted through the two largest stages measured
        (``exclude`` aside) when they give a sensible line; the device model's otherwise. (On the busy
        machine of bench/README.md it came out at ~17000, against the cpu model's 4000.)"""
        done = sorted((s for s in range(len(self.pixels))
                       if s != exclude and self._measured_n[s] >= PRIOR_ITERATIONS), key=lambda s: self.pixels[s])
        if len(done) >= 2:
            a, b = done[-2], done[-1]
            ra, rb = (self._measured_s[s] / self._measured_n[s] for s in (a, b))
            pa, pb = self.pixels[a], self.pixels[b]
            if pb > pa and rb > ra:
                fitted = (ra * pb - rb * pa) / (rb - ra)
                if 0.0 <= fitted <= 4.0 * pb:
                    return fitted
        return self.model.overhead_pixels
