"""Remake docs/images/samples.jpg, the README's picture, with the engine as it is now.

Runs README command 1's job (samples/photo.jpg with style_swirls and style_glass, ``--preset draft``) through the
real CLI into a temporary folder, then lays out photo, style, result, style, result at one height:

    .venv/bin/python docs/images/make_samples.py      # about 2 minutes on a 2-core CPU
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
STYLES = ("style_swirls", "style_glass")
HEIGHT = 300
GAP = 8


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "bridge.cli", "stylize", str(REPO / "samples/photo.jpg"),
               *[a for s in STYLES for a in ("-s", str(REPO / f"samples/{s}.jpg"))],
               "--preset", "draft", "--seed", "1", "--quiet", "-o", tmp + "/"]
        subprocess.run(cmd, check=True, cwd=REPO)
        tiles = [Image.open(REPO / "samples/photo.jpg")]
        for style in STYLES:
            tiles += [Image.open(REPO / f"samples/{style}.jpg"), Image.open(Path(tmp) / f"photo_{style}.png")]
        tiles = [t.convert("RGB").resize((round(t.width * HEIGHT / t.height), HEIGHT), Image.LANCZOS) for t in tiles]
        sheet = Image.new("RGB", (sum(t.width for t in tiles) + GAP * (len(tiles) - 1), HEIGHT), "white")
        x = 0
        for tile in tiles:
            sheet.paste(tile, (x, 0))
            x += tile.width + GAP
        out = REPO / "docs/images/samples.jpg"
        sheet.save(out, quality=88, optimize=True)
        print(out, sheet.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
