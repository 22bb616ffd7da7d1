"""bridge/engine/plan.py: one RunPlan per run, and the engine, its ETA and the daemon's estimates all use it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bridge.daemon import memory as daemon_jobs
from bridge.daemon import speed
from bridge.engine import plan as run_plan
from bridge.engine import tiled
from bridge.settings import NATIVE_SIZE, PRESETS, Settings, SettingsError


def test_a_run_plan_is_its_stages():
    settings = Settings()
    plan = run_plan.plan_run(settings, 1024, 683)
    ladder, dims, iterations = run_plan.ladder_dims(settings, 1024, 683)
    assert list(plan.ladder) == ladder and plan.dims == dims and plan.iterations == iterations
    assert plan.working_size == (dims[-1][1], dims[-1][0]) == (512, 342)
    assert not any(s.tiled for s in plan.stages)
    assert [s.cost_pixels for s in plan.stages] == [h * w for h, w in dims]
    assert plan.stages[-1].history == run_plan.whole_history(512 * 341)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.budget = 0                                        # type: ignore[misc]


def test_a_print_stage_is_tiled_and_weighted():
    settings = Settings(**PRESETS["print"], block_memory=2000)
    plan = run_plan.plan_run(settings, 6000, 4000)
    top = plan.stages[-1]
    assert top.dims == (4000, 6000) and top.tiled and run_plan.TILED_HISTORY[0] <= top.history
    assert top.cost_pixels == pytest.approx(6000 * 4000 * run_plan.TILED_COST)
    assert plan.budget == tiled.budget_bytes(settings, torch.device("cpu"))
    assert plan.peak_bytes(settings) == max(run_plan.stage_bytes(s, settings) for s in plan.stages)
    assert plan.peak_bytes(settings) == run_plan.tiled_stage_bytes(top, settings)


def test_the_budget_is_sampled_once_per_plan(monkeypatch):
    calls = []
    real = tiled.budget_bytes
    monkeypatch.setattr(tiled, "budget_bytes", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_plan.plan_run(Settings(), 1024, 683)
    assert len(calls) == 1


def test_the_daemon_counts_the_engines_plan():
    """The daemon's memory refusal and its time estimate read the same plan the engine runs."""
    settings = Settings(size=NATIVE_SIZE, block_memory=2000)
    shape = daemon_jobs.ImageShape(6000, 4000, False, 8, 1000)
    plan = run_plan.plan_run(settings, 6000, 4000)
    assert daemon_jobs.optimisation_bytes(shape, settings) == plan.peak_bytes(settings)
    assert daemon_jobs.working_size(shape, settings) == plan.working_size
    meter = speed.SpeedMeter("cpu")
    est = speed.estimate(settings, 6000, 4000, 1, meter)
    assert est.tiled == [s.tiled for s in plan.stages] and est.stages == list(zip(plan.ladder, plan.iterations))
    assert est.working_size == plan.working_size


def test_a_budget_too_small_says_what_to_give():
    with pytest.raises(SettingsError, match="give at least"):
        run_plan.plan_run(Settings(size=NATIVE_SIZE, block_memory=1500), 6000, 4000)
