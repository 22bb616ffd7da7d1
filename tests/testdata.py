"""Where the tests' pictures and Photoshop files are: all inside the repository (see tests/data/README.md).

The suite never reads ``../shared``; extra checks with material from there run only when ``.ci/run`` names it
explicitly in ``$STYLEBRIDGE_SHARED`` (see tests/psdreaders/check.py).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
PSD_DIR = DATA / "psd"                       # real Photoshop files from psd-tools' test suite (MIT)
#: the pictures by name: the content photo (coffee, CC0, samples/) and the paintings (public domain, tests/data/)
SAMPLES: dict[str, Path] = {"coffee": REPO / "samples" / "photo.jpg",
                            **{name: DATA / f"{name}.jpg" for name in ("starry_night", "the_scream", "shipwreck")}}
