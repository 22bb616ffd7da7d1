"""Issue #23 items 7-8 on the daemon: the estimate learns from a job the client deletes at once (as the GIMP
plug-in does) and keeps it in the data folder for the next daemon; ``serve --idle-exit`` stops an idle daemon;
``serve --stop`` stops one. Real ``stylebridge serve`` processes (two starts: a fresh one, then one forked from this process, tests/inprocess.py
Forked; ``serve --stop`` itself runs in this process), tiny jobs."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from bridge.cli import main
from bridge.daemon import idle, speed
from bridge.daemon.client import DaemonClient
from bridge.engine.eta import cost_model
from inprocess import forked_serve
from test_daemon_api import png_of, start_daemon, stop_daemon
from testdata import SAMPLES

TINY = {"size": 48, "iterations": 3, "coarse_to_fine": False}


def test_idle_watch_counts_requests_and_jobs():
    now = [0.0]
    busy = [False]
    watch = idle.IdleWatch(10, lambda: busy[0], clock=lambda: now[0])
    now[0] = 9.9
    assert not watch.due()
    busy[0] = True
    now[0] = 30
    assert not watch.due()          # a job running is activity
    busy[0] = False
    now[0] = 39
    assert not watch.due()
    now[0] = 40
    assert watch.due()
    watch.touch()
    assert not watch.due()
    assert not idle.IdleWatch(0, lambda: False, clock=lambda: 1e9).due()      # 0 = never


def test_speed_file_round_trip(tmp_path):
    meter = speed.SpeedMeter("cpu", probe_spp=2e-6, path=tmp_path / "speed.json")
    meter.record(1e6, 6.0)                         # a job took three times the probe's speed: 6e-6 s per unit
    meter.save()
    probed = []
    again = speed.SpeedMeter("cpu", path=tmp_path / "speed.json", probe=lambda: probed.append(1) or 4e-6)
    assert again.load() and again.jobs == 1
    assert again.model().seconds_per_pixel == pytest.approx(6e-6)                  # the learnt speed wins ...
    assert probed == [] and again.measured                                          # ... and needs no probe
    assert again.model(corrected=False).seconds_per_pixel == pytest.approx(4e-6) and probed == [1]
    other = speed.SpeedMeter("cuda", probe_spp=1e-8, path=tmp_path / "speed.json")
    assert not other.load() and other.learnt_spp is None                            # per device
    (tmp_path / "speed.json").write_text("not json")
    assert not speed.SpeedMeter("cpu", path=tmp_path / "speed.json").load()


def test_the_probe_runs_once_when_first_needed_and_jobs_count_within_a_factor():
    calls = []
    meter = speed.SpeedMeter("cpu", probe=lambda: calls.append(1) or 2e-6)
    assert not meter.measured and calls == []                                       # nothing measured at start
    meter.record(1e6, 1.0)                          # a finished job before any estimate: no probe for it
    assert calls == [] and meter.learnt_spp == pytest.approx(1e-6) and meter.measured
    meter.record(1e6, 1000.0)                       # a stray outlier: 10x the speed known before at most
    assert meter.learnt_spp == pytest.approx(0.5 * 1e-5 + 0.5 * 1e-6)
    assert meter.model(corrected=False).seconds_per_pixel == pytest.approx(2e-6) and calls == [1]
    meter.model(corrected=False)
    assert calls == [1]                                                             # measured once
    failed = speed.SpeedMeter("cpu", probe=lambda: None)                            # a probe that failed
    assert failed.model().seconds_per_pixel == cost_model("cpu").seconds_per_pixel and not failed.measured


def test_learns_from_a_deleted_job_keeps_it_and_stops_when_idle(tmp_path, capsys):
    def cli(*args: str) -> subprocess.CompletedProcess:
        """``stylebridge ARGS`` by the command line's own ``main``, in this process (no start-up to pay)."""
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    data = tmp_path / "data"
    # A fresh process: its start-up speed probe runs cold, as a real first start's does (a daemon forked from this
    # warm process probes so well that the learning may not show in the estimate's 0.05 s steps)
    proc, url = start_daemon(data, "--idle-exit", "6")
    port = int(url.rsplit(":", 1)[1])
    try:
        client = DaemonClient(url, token="", timeout=60)
        content, style = png_of(SAMPLES["coffee"], 64), png_of(SAMPLES["starry_night"], 64)
        before = client.estimate(64, 43, 1, TINY)["seconds"]
        job = client.submit_job(content, {"styles": [{"upload": 0, "name": "s"}], "settings": TINY},
                                style_files=[("s.png", style)])
        client.wait(job["id"], poll=0.2)
        engine_s = client.result(job["id"])["timings"]["engine_s"]
        client.delete(job["id"])                   # as the plug-in does once it has the layers
        after = client.estimate(64, 43, 1, TINY)["seconds"]
        assert abs(after - engine_s) <= 0.06, (before, after, engine_s)   # learnt: the job's own time (0.1 s steps)
        assert abs(after - engine_s) <= abs(before - engine_s), (before, after, engine_s)
        kept = json.loads((data / "speed.json").read_text())
        assert kept["cpu"]["jobs"] == 1 and kept["cpu"]["seconds_per_unit"] > 0
        assert idle.pid_path(port).read_text().strip() == str(proc.pid)
        proc.wait(timeout=40)                      # nothing to do for 6 s: it stops by itself
        out = proc.stdout.read()
        assert proc.returncode == 0 and "idle for 6 s: stopping" in out and "Traceback" not in out, out
        assert not idle.pid_path(port).exists()
    finally:
        if proc.poll() is None:
            stop_daemon(proc)
    # the next daemon in this folder starts from what the first learnt; `serve --stop` stops it
    proc, url = forked_serve(data)
    port = int(url.rsplit(":", 1)[1])
    try:
        restarted = DaemonClient(url, token="", timeout=60).estimate(64, 43, 1, TINY)["seconds"]
        assert abs(restarted - after) <= 0.1 + 0.05 * after, (restarted, after, before)
        stop = cli("serve", "--stop", "--port", str(port))          # signals the real daemon's process
        assert stop.returncode == 0 and "stopped the stylebridge daemon" in stop.stdout, stop
        proc.wait(timeout=20)
        again = cli("serve", "--stop", "--port", str(port))
        assert again.returncode == 0 and "no stylebridge daemon runs" in again.stdout, again
    finally:
        if proc.poll() is None:
            stop_daemon(proc)
    started = time.monotonic()
    bad = cli("serve", "--idle-exit", "-1", "--port", "0")
    assert bad.returncode != 0 and "--idle-exit must be >= 0" in bad.stderr and time.monotonic() - started < 30
