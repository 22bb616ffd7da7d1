"""Threads on a busy machine (issue 23, item 9): the adaptive engine against fixed thread counts, side by side.

    .venv/bin/python bench/bench_threads.py [--loads 0,1,2] [--configs adaptive,1,2,before] [--repeat 1]
                                            [--photo coffee] [--style the_scream] [--size 256] [--iterations 10]

For each load (0, 1, 2 competing busy processes: ``python -c 'while True: pass'``, started before and killed
after that load's runs) one draft run per config through the ``stylebridge stylize`` command (each its own
process, so OpenMP's wait policy is set as a user's run sets it):

- ``adaptive``: the default (``threads`` 0: bridge/engine/threads.py chooses and re-checks the count);
- ``1``, ``2``...: ``--threads N``, a fixed count;
- ``before``: the engine as it was: torch's default count (one per core) with OpenMP's default (spinning)
  waits (torch is imported before the command sets the passive policy, and ``--threads`` = the core count).

The configs run interleaved (their order rotates per repeat) so slow drifts of the machine's other load hit
each alike. Figures: the engine's seconds (the command's ``timings.engine_s``: the optimisation, without
start-up and file writing) and the process's wall seconds; the ratio adaptive / best fixed count per load
(issue 23's bar: <= 1.15). The thread counts the adaptive runs chose are read from their log. The machine's
other load is printed (load averages, and the cores others kept busy just before each load's runs).
Results: bench/results/threads.json (+ the table in threads.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import RESULTS, machine, sample  # noqa: E402
from bridge.engine import threads as engine_threads  # noqa: E402

BAR = 1.15
SPINNER = "while True: pass"
#: runs the stylebridge command with info logging (the adaptive choices) on stderr; "before": torch first, so
#: OpenMP starts with its default (spinning) waits, as before the command set the passive policy
_RUNNER = ("import logging, sys\n"
           "if sys.argv[1] == 'before':\n"
           "    import torch\n"
           "logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')\n"
           "from bridge.cli import main\n"
           "sys.exit(main(sys.argv[2:]))\n")


def others_now(seconds: float = 1.0) -> float:
    """Cores' worth of CPU other programs use now (this process sleeps meanwhile)."""
    cpus = engine_threads.affinity()
    a = engine_threads.read_sample(cpus)
    time.sleep(seconds)
    b = engine_threads.read_sample(cpus)
    return engine_threads.others_between(a, b, 1)


def run_once(config: str, photo: Path, style: Path, out: Path, args: argparse.Namespace) -> dict:
    cores = len(engine_threads.affinity())
    mode = "before" if config == "before" else "now"
    cmd = [sys.executable, "-c", _RUNNER, mode, "stylize", str(photo), "-s", str(style), "-o", str(out),
           "--size", str(args.size), "--iterations", str(args.iterations), "--seed", "1", "--json",
           "--preview-every", "0", "--device", "cpu"]
    if args.coarse_iterations is not None:
        cmd += ["--coarse-iterations", str(args.coarse_iterations)]
    if config == "before":
        cmd += ["--threads", str(cores)]
    elif config != "adaptive":
        cmd += ["--threads", config]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                           "OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env["PYTHONPATH"] = str(REPO)
    load = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"bench_threads: {config} run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout[proc.stdout.find("{"):])
    chosen = [int(n) for n in re.findall(r"engine threads: (\d+) of", proc.stderr)]
    return {"config": config, "engine_s": summary["timings"].get("engine_s", summary["seconds"]), "wall_s": wall,
            "load_before": load, "threads_chosen": chosen}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", default="0,1,2", help="numbers of competing busy processes")
    ap.add_argument("--configs", default="adaptive,1,2,before",
                    help="adaptive, a fixed count (1, 2, ...) and/or before (torch's default, spinning waits)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per config and load (the median is compared)")
    ap.add_argument("--photo", default="coffee")
    ap.add_argument("--style", default="the_scream")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=10, help="final-stage iterations")
    ap.add_argument("--coarse-iterations", type=int, default=None,
                    help="iterations of each coarse stage (default: the engine's; fewer for a shorter bench)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--save", action="store_true", help="write bench/results/threads.json and threads.txt")
    args = ap.parse_args(argv)
    loads = [int(v) for v in args.loads.split(",")]
    configs = args.configs.split(",")
    photo, style = sample(args.photo), sample(args.style)
    work = Path(tempfile.mkdtemp(prefix="bench_threads_"))
    info = machine()
    info["allowed_cores"] = engine_threads.allowed_cores(engine_threads.affinity(), engine_threads.cgroup_quota())
    print(f"{info['cpu']}, {info['allowed_cores']} allowed cores, torch {info['torch']}; {args.photo} + "
          f"{args.style}, --size {args.size} --iterations {args.iterations} --coarse-iterations "
          f"{args.coarse_iterations or 'default'}; configs {configs}, {args.repeat} "
          f"repeat(s); load {os.getloadavg()}", flush=True)
    rows: list[dict] = []
    for n in loads:
        background = others_now()
        spinners = [subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(n)]
        try:
            time.sleep(1.0 if n else 0.0)
            for r in range(args.repeat):
                order = configs[r % len(configs):] + configs[:r % len(configs)]
                for config in order:
                    row = run_once(config, photo, style, work / f"{config}_{n}_{r}", args)
                    row.update(busy=n, repeat=r, background_cores=background)
                    rows.append(row)
                    print(f"  {n} busy  {config:>8}: engine {row['engine_s']:6.1f} s, wall {row['wall_s']:6.1f} s"
                          f"{'  threads ' + str(row['threads_chosen']) if row['threads_chosen'] else ''}; load "
                          f"before {' '.join(f'{v:.2f}' for v in row['load_before'])}", flush=True)
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    table, summary = _table(rows, loads, configs, background_of={r["busy"]: r["background_cores"] for r in rows})
    print(table)
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "threads.json").write_text(json.dumps({"machine": info, "args": vars(args), "rows": rows,
                                                          "summary": summary, "load_after": os.getloadavg()},
                                                         indent=1) + "\n")
        (RESULTS / "threads.txt").write_text(table + "\n")
    missed = [s for s in summary if s["ratio"] is not None and s["ratio"] > BAR]
    return 1 if missed else 0


def _table(rows: list[dict], loads: list[int], configs: list[str], background_of: dict[int, float]
           ) -> tuple[str, list[dict]]:
    """Median engine seconds per (load, config), and adaptive / best fixed count per load."""
    fixed = [c for c in configs if c.isdigit()]
    head = f"{'busy procs':>10} {'others before':>13} " + " ".join(f"{c:>10}" for c in configs) + \
        f" {'adaptive/best fixed':>20} {'adaptive chose':>15}"
    lines = ["engine seconds (median of the repeats)", head, "-" * len(head)]
    summary = []
    for n in loads:
        med = {c: statistics.median([r["engine_s"] for r in rows if r["busy"] == n and r["config"] == c])
               for c in configs if any(r["busy"] == n and r["config"] == c for r in rows)}
        best = min((med[c] for c in fixed if c in med), default=None)
        ratio = med["adaptive"] / best if best and "adaptive" in med else None
        chose = sorted({t for r in rows if r["busy"] == n and r["config"] == "adaptive" for t in r["threads_chosen"]})
        summary.append({"busy": n, "median_engine_s": med, "best_fixed_s": best, "ratio": ratio, "chose": chose,
                        "background_cores": background_of.get(n)})
        lines.append(f"{n:>10} {background_of.get(n, 0.0):>13.2f} " +
                     " ".join(f"{med.get(c, float('nan')):>10.1f}" for c in configs) +
                     f" {('%.2f' % ratio) if ratio else '-':>20} {','.join(map(str, chose)) or '-':>15}")
    lines.append(f"bar: adaptive within {BAR}x of the best fixed count at every load; 'others before' = cores other "
                 "programs kept busy just before that load's spinners started")
    return "\n".join(lines), summary


if __name__ == "__main__":
    sys.exit(main())
