"""24 MP budget: build_stack + write_psd of a 6000x4000 photo with 4 styles (slow; pytest -m slow).

Runs in a fresh interpreter so the peak RSS is this job's alone (the independent readers check it afterwards).
Pixels are noise, the worst case for RLE (the file is as big as the raw layers).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from psdreaders import check_psd


BENCH = r"""
import json, resource, sys, time
import numpy as np
from bridge.imaging import Picture
from bridge.engine.types import StylizeResult, StyledImage
from bridge.settings import Settings, DocumentSettings
from bridge.document.stack import build_stack
from bridge.document.psd import write_psd
depth, out = int(sys.argv[1]), sys.argv[2]
dt = np.uint16 if depth == 16 else np.uint8
rng = np.random.default_rng(0)
def pic(name):
    return Picture(rgb=rng.integers(0, np.iinfo(dt).max, (4000, 6000, 3), dtype=dt), name=name)
result = StylizeResult(pic("photo"), [StyledImage(n, pic(n), {}) for n in ("a", "b", "c", "d")],
                       Settings(), (512, 341))
t0 = time.perf_counter()
stack = build_stack(result, DocumentSettings())
t1 = time.perf_counter()
write_psd(stack, out)
t2 = time.perf_counter()
print(json.dumps({"stack_s": t1 - t0, "write_s": t2 - t1,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("depth", [8, 16])
def test_24_megapixel_document_within_budget(tmp_path, depth):
    out = tmp_path / "big.psd"
    res = subprocess.run([sys.executable, "-c", BENCH, str(depth), str(out)], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"\n24 MP, {depth}-bit, 4 styles: {figures}")
    assert figures["peak_mb"] < 4000, figures
    check = check_psd(out)
    assert check.returncode == 0, check.stdout[-2000:]
