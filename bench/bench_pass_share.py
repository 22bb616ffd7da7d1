"""Share of a tiled evaluation's time spent in pass 1 (tiled.PASS1_SHARE: progress within an iteration).

    PYTHONPATH=$PWD .venv/bin/python bench/bench_pass_share.py [--side 256] [--block-memory 260] [--repeat 2]

The coffee photo and Starry Night at ``--side`` x 3/4 side, one :class:`bridge.engine.tiled.TiledObjective`
evaluation with the blocks ``--block-memory`` MB gives, timed at each block's ``on_block`` call. Prints the
seconds of pass 1, of the whole evaluation and their ratio per repeat (the first includes warm-up); asserts
nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--block-memory", type=int, default=260, help="MB per block")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import torch

    from bridge.engine import tiled
    from bridge.engine.pixels import picture_tensor, resize
    from bridge.engine.targets import style_grams
    from bridge.engine.vgg import load_vgg
    from bridge.imaging import load_image
    from bridge.settings import Settings
    from testdata import SAMPLES

    s = Settings(block_memory=args.block_memory)
    vgg = load_vgg(s.weights, s.pooling, torch.device("cpu"))
    dims = (args.side * 3 // 4, args.side)
    photo = resize(picture_tensor(load_image(SAMPLES["coffee"])), dims) * 255.0
    style = resize(picture_tensor(load_image(SAMPLES["starry_night"])), dims) * 255.0
    grams = style_grams(vgg, style, s.style_layers)
    before, after = tiled.margins(vgg, tuple(dict.fromkeys([*s.content_layers, *s.style_layers])))
    inner = tiled.inner_side(args.block_memory << 20, before, after)
    targets = tiled.tiled_features(vgg, photo, tuple(s.content_layers), inner)
    objective = tiled.TiledObjective(vgg, photo, grams, s, inner=inner, targets=targets)
    marks: list[tuple[int, float]] = []
    start = 0.0
    objective.on_block = lambda p, _d, _n: marks.append((p, time.perf_counter() - start))
    print(f"{dims[1]}x{dims[0]}, inner {inner} px, {len(objective.blocks)} blocks, {torch.get_num_threads()} threads")
    for i in range(args.repeat):
        marks.clear()
        start = time.perf_counter()
        objective.loss_and_grad(photo.clone())
        total = time.perf_counter() - start
        first = max(t for p, t in marks if p == 1)
        print(f"evaluation {i + 1}: {total:.2f} s, pass 1 {first:.2f} s, share {first / total:.3f} "
              f"(tiled.PASS1_SHARE {tiled.PASS1_SHARE:.3f})")


if __name__ == "__main__":
    main()
