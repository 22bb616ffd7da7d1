"""Resume after kill -9 (issue 12, item 4): work lost and the final result against an uninterrupted run.

    .venv/bin/python bench/bench_resume.py [--side 96] [--min-size 48] [--iterations 40] [--coarse 15]
                                          [--checkpoint-seconds 5] [--kill-at 0.6] [--seed 1] [--repeat]

A photo (the repository's coffee sample, long side ``--side``) and one style (Starry Night, 128 px) at
``size "native"``: a coarse-to-fine ladder from ``--min-size`` up to the photo's own size, the last stage
being the native one. Three runs of the real engine, each in its own process (same threads, same seed):

1. reference: uninterrupted, no checkpoint;
2. killed: with a :class:`FileCheckpoint` saved every ``--checkpoint-seconds`` (and at stage ends); the
   bench sends SIGKILL once the native stage is ``--kill-at`` of the way through;
3. resumed: the same command on the same checkpoint, to the end.

The checkpoint holds the optimiser's state (L-BFGS iterate and history) below ``RESUME_STATE_BYTES``, so the
resumed run should end exactly as the reference; the bench says what the checkpoint held.
Work lost = the killed run's optimisation seconds at the kill minus those its checkpoint had saved (the
engine's ``EngineState.elapsed_s``, counted the same way); also in iterations. The final loss is the total
loss of the last stage's best image (working size = native size here), resumed vs reference. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def child(args: argparse.Namespace) -> None:
    """One engine run; one JSON line per iteration on stdout, then the result line."""
    from bridge.engine import FileCheckpoint, stylize
    from bridge.engine.types import StyleInput
    from bridge.imaging import load_image
    from bridge.settings_parse import settings_from_mapping

    content = load_image(Path(args.photo).read_bytes(), name="photo")
    style = load_image(Path(args.style).read_bytes(), name="starry")
    settings, _, _ = settings_from_mapping({
        "size": "native", "min_size": args.min_size, "iterations": args.iterations,
        "coarse_iterations": args.coarse, "seed": args.seed, "device": "cpu", "preview_every": 0})
    checkpoint = FileCheckpoint(args.checkpoint, args.checkpoint_seconds) if args.checkpoint else None
    started = time.perf_counter()

    def progress(p) -> None:
        print(json.dumps({"t": time.perf_counter() - started, "stage": p.stage, "stages": p.stages,
                          "size": p.stage_size, "it": p.iteration, "its": p.stage_iterations,
                          "done": p.done_iterations, "total": p.total_iterations, "resumed": p.resumed}),
              flush=True)

    result = stylize(content, [StyleInput("starry", style)], settings, progress, checkpoint=checkpoint)
    print(json.dumps({"result": True, "wall": time.perf_counter() - started, "seconds": result.seconds,
                      "loss": result.images[0].losses["total"], "resumed": result.resumed,
                      "working": list(result.working_size)}), flush=True)


def run_child(base: list[str], extra: list[str], kill_at: float | None = None
              ) -> tuple[list[dict], dict | None, float]:
    """Run a child; with ``kill_at`` SIGKILL it once the last stage is that far through. Returns its
    progress lines, its result line (None when killed) and its wall time."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *base, *extra], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    lines: list[dict] = []
    result = None
    assert proc.stdout is not None
    for raw in proc.stdout:
        data = json.loads(raw)
        if data.get("result"):
            result = data
            continue
        lines.append(data)
        if kill_at is not None and data["stage"] == data["stages"] and data["it"] >= kill_at * data["its"]:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    return lines, result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--min-size", type=int, default=48)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--coarse", type=int, default=15)
    parser.add_argument("--checkpoint-seconds", type=float, default=5.0)
    parser.add_argument("--kill-at", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", action="store_true",
                        help="run the reference twice (its run-to-run spread, to compare the resumed loss with)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--photo", help=argparse.SUPPRESS)
    parser.add_argument("--style", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from PIL import Image

    from bridge.engine import FileCheckpoint
    sys.path.insert(0, str(REPO / "tests"))
    from testdata import SAMPLES
    work = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    photo, style = work / "photo.png", work / "style.png"
    for src, dst, side in ((SAMPLES["coffee"], photo, args.side), (SAMPLES["starry_night"], style, 128)):
        im = Image.open(src).convert("RGB")
        im.thumbnail((side, side), Image.LANCZOS)
        im.save(dst)
    base = ["--photo", str(photo), "--style", str(style), "--min-size", str(args.min_size),
            "--iterations", str(args.iterations), "--coarse", str(args.coarse), "--seed", str(args.seed),
            "--checkpoint-seconds", str(args.checkpoint_seconds)]
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    print(f"photo {Image.open(photo).size[0]}x{Image.open(photo).size[1]} (coffee), style starry 128 px, size native, "
          f"min_size {args.min_size}, iterations {args.iterations} (coarse {args.coarse}), checkpoint every "
          f"{args.checkpoint_seconds:g} s, kill at {args.kill_at:.0%} of the native stage; load {' '.join(load)}")

    ref_lines, ref, ref_wall = run_child(base, [])
    assert ref is not None
    stages = sorted({(l["stage"], l["size"], l["its"]) for l in ref_lines})
    print(f"stages: {', '.join(f'{s}: {size} px x {its} it' for s, size, its in stages)}")
    print(f"reference: {ref['seconds']:.1f} s optimising ({ref_wall:.1f} s wall), final loss {ref['loss']:.4g}")
    if args.repeat:
        _, again, _ = run_child(base, [])
        assert again is not None
        print(f"reference again: final loss {again['loss']:.4g} (x{again['loss'] / ref['loss']:.4f})")

    cp_path = work / "checkpoint.npz"
    killed_lines, killed, killed_wall = run_child(base, ["--checkpoint", str(cp_path)], kill_at=args.kill_at)
    assert killed is None, "the run ended before the kill"
    last = killed_lines[-1]
    state = FileCheckpoint(cp_path).load()
    assert state is not None, "no checkpoint was saved before the kill"
    done_at_save = sum(its for s, _, its in stages if s - 1 < state.stage) + state.iteration
    lost_s = last["t"] - state.elapsed_s
    print(f"killed at iteration {last['done']}/{last['total']} (stage {last['stage']}/{last['stages']}, "
          f"{last['it']}/{last['its']} of the native stage), {last['t']:.1f} s in; checkpoint at stage "
          f"{state.stage + 1} iteration {state.iteration} ({done_at_save} done), {state.elapsed_s:.1f} s in")
    print(f"work lost: {lost_s:.1f} s ({last['done'] - done_at_save} iterations), interval "
          f"{args.checkpoint_seconds:g} s")
    kept = ("with the optimiser's state (" + ", ".join(f"{k} {len(v)}" if isinstance(v, list) else k
                                                        for k, v in state.optimizer.items()) + ")"
            if state.optimizer is not None else "best image only (no optimiser state)")
    print(f"checkpoint file: {cp_path.stat().st_size / 1024:.0f} KB, {kept}")

    res_lines, resumed, res_wall = run_child(base, ["--checkpoint", str(cp_path)])
    assert resumed is not None
    first = res_lines[0] if res_lines else {}
    print(f"resumed: from iteration {first.get('done')} (resumed={first.get('resumed')}), "
          f"{res_wall:.1f} s wall to the end, final loss {resumed['loss']:.4g}")
    total = killed_wall + res_wall
    print(f"killed + resumed wall: {total:.1f} s vs reference {ref_wall:.1f} s (x{total / ref_wall:.2f}, "
          "the resumed process loads the weights again)")
    print(f"final loss resumed / reference: {resumed['loss'] / ref['loss']:.4f}")


if __name__ == "__main__":
    main()
