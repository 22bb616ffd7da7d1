"""bridge/engine/step.py: an L-BFGS optimisation (the default) never imports torch's compiler (torch._dynamo, ~1.2 s
of CPU in every engine process). That the marked optimisers still behave as torch's own is what the exact-resume tests show
(tests/test_engine_checkpoint.py: a resumed run, its L-BFGS state saved and loaded, equals an uninterrupted one)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A fresh Python (the test process may have imported the compiler already): what the engine calls on its
# optimisers, from creating them to saving and loading their state, then whether the compiler was imported.
_FRESH = textwrap.dedent("""
    import sys
    import torch
    import bridge.engine.step
    x = torch.ones(4, requires_grad=True)
    opt = torch.optim.LBFGS([x], max_iter=1, history_size=3)
    def closure():
        opt.zero_grad()
        loss = (x ** 2).sum()
        loss.backward()
        return loss
    for _ in range(2):
        opt.step(closure)
    opt.load_state_dict(opt.state_dict())
    print("torch._dynamo" in sys.modules)
""")


def test_an_optimisation_does_not_import_the_compiler() -> None:
    run = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False"], "torch._dynamo was imported: see step._optimisers_without_dynamo"

