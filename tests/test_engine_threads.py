"""The engine's thread count (bridge/engine/threads.py): adapted to the cores it may use and the load others put
on them, re-checked during a run, fixed by the ``threads`` setting, left alone under OMP_NUM_THREADS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge.engine import StyleInput, stylize, threads
from bridge.engine.threads import Governor, Sample, allowed_cores, cgroup_quota, others_between, threads_for
from bridge.imaging import Picture
from bridge.settings import DEFAULTS, Settings, SettingsError
from bridge.settings_parse import settings_from_mapping

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _spinning_waits(monkeypatch) -> None:
    """The load model is what these tests check: pin "OpenMP waits spin" (an in-process CLI run earlier in the
    session may have called prepare_process, which would make every allowed core the count). Tests of the passive
    policy set it themselves."""
    monkeypatch.setattr(threads, "_passive", False)


def test_threads_for_rounds_free_cores_within_the_allowed_ones() -> None:
    assert threads_for(2.0, 2) == 2             # idle: every allowed core
    assert threads_for(1.9, 2) == 2             # a little background work: still all
    assert threads_for(1.0, 2) == 1             # another program holds one core
    assert threads_for(0.1, 2) == 1             # saturated: at least one thread
    assert threads_for(-3.0, 8) == 1
    assert threads_for(12.0, 8) == 8            # never more than allowed
    assert threads_for(5.4, 8) == 5


def test_threads_for_does_not_flap_around_the_rounding_point() -> None:
    assert threads_for(1.55, 2, current=1) == 1          # just past 1.5 from below: keep 1
    assert threads_for(1.45, 2, current=2) == 2          # just below from above: keep 2
    assert threads_for(1.8, 2, current=1) == 2           # clearly free: change
    assert threads_for(1.2, 2, current=2) == 1


def test_cgroup_quota_caps_the_allowed_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path) == pytest.approx(1.5)
    assert allowed_cores([0, 1, 2, 3], 1.5) == 2          # 1.5 cores of quota: 2 threads can run at once
    assert allowed_cores([0, 1, 2, 3], 1.0) == 1
    assert allowed_cores([0, 1], None) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(v1) == pytest.approx(3.0)


def test_others_are_the_busy_time_of_our_cpus_less_our_own() -> None:
    a = Sample(wall=10.0, own=5.0, busy=100.0, group=None, load1=3.0)
    b = Sample(wall=12.0, own=7.0, busy=104.0, group=None, load1=3.0)    # 2 cores busy, 1 of them ours
    assert others_between(a, b, 1) == pytest.approx(1.0)
    idle = Sample(wall=12.0, own=9.0, busy=104.0, group=None, load1=2.0)  # all the busy time is ours
    assert others_between(a, idle, 2) == pytest.approx(0.0)
    # under a quota, the cgroup's own usage counts too (the host's CPUs may be busy with other containers)
    ga = Sample(wall=0.0, own=0.0, busy=0.0, group=0.0, load1=None)
    gb = Sample(wall=1.0, own=1.0, busy=1.0, group=1.8, load1=None)
    assert others_between(ga, gb, 1) == pytest.approx(0.8)
    # no /proc/stat (macOS): the load average less our own share
    na = Sample(wall=0.0, own=0.0, busy=None, group=None, load1=None)
    nb = Sample(wall=2.0, own=2.0, busy=None, group=None, load1=2.5)
    assert others_between(na, nb, 1) == pytest.approx(1.5)


class Fake:
    """A clock-free governor rig: a scripted sampler and a recorded thread count."""

    def __init__(self, others: list[float], allowed_threads: int = 2) -> None:
        self.count = allowed_threads
        self.sets: list[int] = []
        self.others = list(others)
        self.t = 0.0
        self.busy = 0.0

    def sample(self) -> Sample:
        s = Sample(wall=self.t, own=0.0, busy=self.busy, group=None, load1=0.0)
        self.t += 1.0
        self.busy += self.others.pop(0) if self.others else 0.0
        return s

    def set(self, n: int) -> None:
        self.count = n
        self.sets.append(n)

    def governor(self) -> Governor:
        gov = Governor(recheck_s=0.0, set_threads=self.set, get_threads=lambda: self.count, sampler=self.sample)
        return gov


def test_governor_takes_fewer_threads_while_others_hold_cores_and_all_when_idle(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity", lambda: [0, 1])
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    rig = Fake(others=[0.1, 1.6, 1.7, 0.2, 0.0])
    gov = rig.governor()
    assert gov.begin(0, "cpu") == 2          # load average 0: both cores
    gov.check()                              # others used 0.1 core: keep 2
    gov.check()                              # 1.6 cores busy elsewhere: 1 thread
    assert rig.count == 1
    gov.tick()                               # still busy: 1
    gov.tick()                               # idle again: back to 2
    assert rig.sets == [1, 2]
    assert [n for _, n, _ in gov.choices] == [1, 2]


@pytest.mark.parametrize("fast", [1, 2])
def test_while_others_hold_cores_the_faster_count_is_found_by_trial(monkeypatch, fast: int) -> None:
    """Others keep 1.6 of 2 cores busy (the load model says 1 thread); the engine's measured speed decides: most
    of the run goes on the faster count, the other one is tried again now and then."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity", lambda: [0, 1])
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    rig = Fake(others=[1.6] * 10_000)
    now = {"t": 0.0}
    gov = Governor(recheck_s=5.0, set_threads=rig.set, get_threads=lambda: rig.count, sampler=rig.sample,
                   clock=lambda: now["t"])
    gov.begin(0, "cpu")
    gov.check(force=True)                    # a stage starts
    spent = {1: 0.0, 2: 0.0}
    for _ in range(3000):                    # evaluations: 10/s on the fast count, 5/s on the other
        dt = 0.1 if rig.count == fast else 0.2
        now["t"] += dt
        spent[rig.count] += dt
        gov.tick()
    assert set(rig.sets) == {1, 2}                       # both were tried
    assert spent[fast] / (spent[1] + spent[2]) > 0.7     # most of the time on the faster one
    assert gov.rates[fast][0] == pytest.approx(10.0, rel=0.05)


def test_fixed_setting_and_user_env_and_gpu_are_not_adapted(monkeypatch) -> None:
    monkeypatch.setattr(threads, "affinity", lambda: [0, 1])
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rig = Fake(others=[1.9, 1.9, 1.9])
    gov = rig.governor()
    assert gov.begin(2, "cpu") == 2          # threads = 2: two, whatever the load
    gov.tick()
    gov.check()
    assert rig.count == 2 and rig.sets == []
    assert gov.begin(1, "cpu") == 1 and rig.sets == [1]
    rig2 = Fake(others=[1.9, 1.9])
    gov2 = rig2.governor()
    assert gov2.begin(0, "cuda") is None     # on a GPU the CPU threads only feed it: left alone
    gov2.tick()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert gov2.begin(0, "cpu") is None      # the user's OMP_NUM_THREADS wins
    gov2.check()
    assert rig2.sets == []


def test_threads_setting_is_validated_and_reaches_the_cli() -> None:
    assert DEFAULTS.threads == 0
    settings, _, _ = settings_from_mapping({"threads": "3"})
    assert settings.threads == 3
    with pytest.raises(SettingsError, match="threads"):
        Settings(threads=-1)
    from bridge.cli import build_parser
    from bridge.commands.stylize import given_options
    ns = build_parser().parse_args(["stylize", "c.jpg", "-s", "s.jpg", "-o", "o", "--threads", "1"])
    assert given_options(ns)["threads"] == "1"


def _photo(side: int = 40) -> Picture:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    return Picture(rgb=rgb, name="p")


def _tiny() -> Settings:
    return Settings(size=32, coarse_to_fine=False, iterations=3, seed=1, preview_every=0, device="cpu",
                    style_layers=("relu1_1",), content_layers=("relu1_1",))


@pytest.mark.skipif(len(threads.affinity()) < 2, reason="needs two allowed cores")
def test_stylize_runs_on_the_threads_the_load_leaves(monkeypatch) -> None:
    """Inside a real stylize() on the CPU: others holding 1.6 of 2 cores -> torch runs its iterations on 1 thread;
    the ``threads`` setting wins over the load."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    monkeypatch.setattr(threads, "affinity", lambda: [0, 1])
    before = torch.get_num_threads()
    busy = {"others": 1.6}
    clock = {"t": 0.0, "busy": 0.0}

    def sample() -> Sample:
        clock["t"] += 1.0
        clock["busy"] += busy["others"]
        return Sample(wall=clock["t"], own=0.0, busy=clock["busy"], group=None, load1=busy["others"])

    gov = Governor(sampler=sample, recheck_s=1e9)     # re-checked at each stage only (no trial windows)
    monkeypatch.setattr(threads, "governor", lambda: gov)
    seen: list[int] = []
    style = [StyleInput("s", _photo(36))]
    try:
        torch.set_num_threads(2)
        stylize(_photo(), style, _tiny(), progress=lambda p: seen.append(torch.get_num_threads()))
        assert seen and set(seen) == {1}
        busy["others"] = 0.0
        seen.clear()
        stylize(_photo(), style, _tiny(), progress=lambda p: seen.append(torch.get_num_threads()))
        assert set(seen) == {2}                       # idle again: both cores
        busy["others"] = 1.9
        seen.clear()
        stylize(_photo(), style, _tiny().replace(threads=2), progress=lambda p: seen.append(torch.get_num_threads()))
        assert set(seen) == {2}                       # fixed by the setting
    finally:
        torch.set_num_threads(before)


def test_the_command_makes_openmp_wait_passively_before_torch_loads() -> None:
    """``stylebridge`` sets OMP_WAIT_POLICY=PASSIVE / KMP_BLOCKTIME=0 before any command imports torch (OpenMP
    reads them once, when torch loads it), and keeps a value the user set."""
    code = ("import os, sys\nfrom bridge import cli\ntry:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('KMP_BLOCKTIME'), 'torch' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env["PYTHONPATH"] = str(REPO)
    py = os.environ.get("STYLEBRIDGE_PYTHON", sys.executable)
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.split()[-3:] == ["PASSIVE", "0", "False"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert out.stdout.split()[-3:] == ["ACTIVE", "0", "False"]


def test_prepare_process_keeps_user_values() -> None:
    env = {"KMP_BLOCKTIME": "200"}
    threads.prepare_process(env)
    assert env == {"KMP_BLOCKTIME": "200", "OMP_WAIT_POLICY": "PASSIVE"}


def test_with_passive_waits_every_allowed_core_even_while_others_hold_cores(monkeypatch) -> None:
    """Waits that sleep (OMP_WAIT_POLICY=PASSIVE before torch loaded): the scheduler shares a busy machine per
    thread, so every allowed core stays the fastest count (bench/README.md); spinning waits follow the load."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "affinity", lambda: [0, 1])
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    monkeypatch.setattr(threads, "_passive", True)
    rig = Fake(others=[1.6] * 20)
    gov = rig.governor()
    assert gov.begin(0, "cpu") == 2
    for _ in range(5):
        gov.check()
        gov.tick()
    assert rig.count == 2 and rig.sets == []
    monkeypatch.setattr(threads, "_passive", False)          # spinning waits: the load model
    gov.check()
    assert rig.count == 1


def test_prepare_process_says_whether_waits_are_passive(monkeypatch) -> None:
    monkeypatch.setattr(threads, "_passive", None)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert threads.waits_passive() is False                  # nothing set, prepare_process not run
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert threads.waits_passive() is True                   # the user's own setting, from the start
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert threads.waits_passive() is False
