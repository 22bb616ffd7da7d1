"""Print resolution (issue 12): size "native" and the print preset, tiled stages inside a real stylize run,
style Grams in blocks, the style-resolution warning, and the memory budget's errors. Real VGG-19, tiny
images; tiling is forced on them by a small budget and WHOLE_FACTOR (the switch a 24 MP stage makes by
itself)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bridge.engine import StyleInput, StyleResolutionWarning, stylize, tiled
from bridge.engine import plan, targets
from bridge.engine.pixels import picture_tensor, resize
from bridge.engine.plan import working_ladder
from bridge.engine.targets import style_grams
from bridge.settings import LIMITS, NATIVE_SIZE, PRESETS, Settings, SettingsError
from bridge.settings_parse import coerce_value, settings_from_mapping

FAST = dict(size=96, iterations=5, coarse_to_fine=False, seed=7)


def run(photo, styles, **kw):
    settings = Settings(**{**FAST, **kw})
    return stylize(photo, [StyleInput(f"s{i}", p) for i, p in enumerate(styles)], settings)


# --- settings: the word "native", the ladder above base_size, the print preset -----------------------------

def test_native_is_a_size_word_everywhere() -> None:
    s, _, _ = settings_from_mapping({"size": "native"})
    assert s.size == NATIVE_SIZE and s.native and s.to_dict()["size"] == "native"
    assert settings_from_mapping({"size": " Native "})[0].native
    assert settings_from_mapping(s.to_dict())[0] == s                       # recorded settings read back
    assert coerce_value(Settings, "size", "768") == 768
    with pytest.raises(SettingsError, match="size: 8 is below the minimum 16 .or 'native'"):
        settings_from_mapping({"size": 8})
    with pytest.raises(SettingsError, match="size: 'huge' is not a valid value"):
        settings_from_mapping({"size": "huge"})
    assert coerce_value(Settings, "large_iterations", "40, 12") == (40, 12)
    with pytest.raises(SettingsError, match="large-iterations"):
        settings_from_mapping({"large_iterations": []})
    assert LIMITS.max_native_pixels >= 24_000_000 and LIMITS.max_size == 4096


def test_ladders_and_print_preset() -> None:
    normal = Settings()
    assert normal.stage_sizes == [128, 181, 256, 362, 512]                  # unchanged below base_size
    assert normal.ladder_iterations(normal.stage_sizes) == [25, 25, 25, 25, 150]
    best, _, _ = settings_from_mapping({"preset": "best"})
    assert best.stage_sizes[-1] == 1024 and best.ladder_iterations(best.stage_sizes)[-1] == 200
    big = normal.replace(size=2048)                                         # doubles above base_size 1024
    assert big.stage_sizes[-3:] == [724, 1024, 2048]
    assert big.ladder_iterations(big.stage_sizes)[-2:] == [150, 60]

    p, _, _ = settings_from_mapping({"preset": "print"})
    assert p.native and PRESETS["print"]["size"] == NATIVE_SIZE and p.base_size == 512
    ladder = working_ladder(p, 6000, 4000)
    assert ladder == [128, 181, 256, 362, 512, 1024, 2048, 4096, 6000]
    assert p.ladder_iterations(ladder) == [25, 25, 25, 25, 150, 60, 25, 10, 10]
    assert working_ladder(p, 3000, 2000)[-3:] == [1024, 2048, 3000]
    assert working_ladder(p, 2100, 1400)[-3:] == [512, 1024, 2100]          # 2048 is too close to 2100
    assert working_ladder(p, 300, 200)[-1] == 300                           # never above the photo
    assert working_ladder(p.replace(size=512), 6000, 4000)[-1] == 512       # a working size stays one


# --- tiled stages in a run -----------------------------------------------------------------------------------

@pytest.fixture
def forced_tiles(monkeypatch):
    """Every optimisation stage is tiled (as a 24 MP one is by itself); returns the count of tiled evaluations."""
    monkeypatch.setattr(plan, "WHOLE_FACTOR", 1e9)
    calls = []
    real = tiled.TiledObjective.loss_and_grad

    def spy(self, x, grad=None):
        calls.append(len(self.blocks))
        return real(self, x, grad)

    monkeypatch.setattr(tiled.TiledObjective, "loss_and_grad", spy)
    return calls


def test_tiled_run_matches_the_whole_image_run(photo, starry, forced_tiles) -> None:
    settings = dict(size=NATIVE_SIZE, iterations=2, coarse_to_fine=True, min_size=48, scale_step=2.0,
                    coarse_iterations=2, block_memory=250)
    tiled_result = run(photo, [starry], **settings)
    assert forced_tiles == [1] * 2 + [2] * 2       # every evaluation tiled: 48 px in one block, 96 px in 2
    assert tiled_result.working_size == (photo.width, photo.height)                 # native: no upsampling
    plan.WHOLE_FACTOR = 2.0                          # (monkeypatch restores it after the test)
    whole = run(photo, [starry], **settings)
    assert len(forced_tiles) == 4                                                   # not tiled this time
    a, b = tiled_result.images[0], whole.images[0]
    assert abs(a.losses["total"] - b.losses["total"]) <= 1e-3 * b.losses["total"]
    diff = np.abs(a.picture.rgb.astype(int) - b.picture.rgb.astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.2     # of 255: L-BFGS amplifies float rounding a little (seen: 2, 0.05)


def test_a_tiled_iteration_reports_its_blocks(photo, starry, forced_tiles) -> None:
    """Progress within a tiled iteration (minutes each at 24 MP): an event per block of each pass, percent
    never going back, the ETA counting the iteration in flight; one event per iteration as before."""
    events = []
    settings = Settings(**{**FAST, "size": NATIVE_SIZE, "iterations": 3, "block_memory": 250, "preview_every": 1})
    stylize(photo, [StyleInput("s0", starry)], settings, progress=events.append)
    assert forced_tiles == [2] * 3                       # 96 x 72 in 2 blocks, one evaluation per iteration
    ends = [e for e in events if e.block is None]
    assert [e.iteration for e in ends] == [1, 2, 3] and all(e.loss is not None and e.preview is not None for e in ends)
    within = [e for e in events if e.block is not None]
    # per iteration: 2 blocks of pass 1, then 2 of pass 2, with the iterations done so far
    assert [(e.iteration, e.block) for e in within] == [(i, (p, d, 2)) for i in range(3) for p in (1, 2)
                                                        for d in range(1, 3)]
    assert all(e.loss is None and e.preview is None and e.done_iterations == e.iteration for e in within)
    percents = [e.percent for e in events]
    assert percents == sorted(percents) and percents[-1] == 100.0
    # the first iteration's blocks move the percent from 0 towards 1/3 (its own event), in pass-1/pass-2 shares
    first = [e.percent for e in within if e.iteration == 0]
    assert 0.0 < first[0] < first[1] < first[2] < first[-1] <= ends[0].percent == pytest.approx(100.0 / 3)
    assert first[1] == pytest.approx(100.0 / 3 * tiled.PASS1_SHARE)
    assert all(e.eta_seconds is not None and e.eta_seconds >= 0 for e in events)
    # within an iteration the time left goes down with its blocks, not frozen at the last iteration's value
    second = [e.eta_seconds for e in within if e.iteration == 1]
    assert second[-1] < second[0]
    assert [e.best_loss for e in within if e.iteration == 2] == [ends[1].best_loss] * 4


def test_budget_too_small_for_a_stage_is_a_clear_error(photo, starry, forced_tiles) -> None:
    with pytest.raises(SettingsError, match=r"block-memory: 100 MB is too small for the 96x72 stage: .* give at "
                                            r"least \d+ MB \(or 0 to size it from free memory\)"):
        run(photo, [starry], block_memory=100)
    assert not forced_tiles                                  # refused before any optimisation
    with pytest.raises(SettingsError, match="normalize-gradients: is not available at a 96x72 stage"):
        run(photo, [starry], block_memory=400, normalize_gradients=True)
    with pytest.raises(SettingsError, match="too small for one block"):
        tiled.inner_side(50 << 20, 80, 70)


# --- style images at high resolution -------------------------------------------------------------------------

def test_style_grams_in_blocks_equal_the_whole_image(vgg, sample_pictures) -> None:
    """2 x 2 blocks of 96 px (the smallest frame cut at relu5_1's receptive field in both directions)."""
    scan = resize(picture_tensor(sample_pictures["starry_night"]), (132, 140)) * 255.0
    layers = Settings().style_layers
    whole = style_grams(vgg, scan, layers)
    assert tiled.block_count(vgg, tuple(layers), 132, 140, 96) == 4
    blocks = tiled.tiled_grams(vgg, scan, tuple(layers), 96)
    for k in layers:
        assert float((blocks[k] - whole[k]).norm() / whole[k].norm()) < 1e-5, k


def test_a_run_computes_large_style_grams_in_blocks(photo, starry, monkeypatch) -> None:
    monkeypatch.setattr(targets, "STYLE_FACTOR", 1e9)      # as a 50 MP scan at a native stage
    seen = []
    real = tiled.tiled_grams
    monkeypatch.setattr(tiled, "tiled_grams", lambda *a, **k: (seen.append(a[-1]), real(*a, **k))[1])
    r = run(photo, [starry], iterations=2, block_memory=300)
    plain = run(photo, [starry], iterations=2)
    assert seen and all(inner >= 16 for inner in seen)
    assert abs(r.images[0].losses["total"] - plain.images[0].losses["total"]) <= 1e-4 * plain.images[0].losses["total"]


def test_a_style_smaller_than_the_stage_needs_is_reported(photo, starry, shrink, sample_pictures) -> None:
    small = shrink(sample_pictures["starry_night"], 40)
    with pytest.warns(StyleResolutionWarning, match=r"style 's0' is 40x\d+ px; the last stage uses it at 96 px"):
        r = run(photo, [small], iterations=1)
    assert len(r.warnings) == 1 and "no finer than the style image" in r.warnings[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", StyleResolutionWarning)
        assert run(photo, [starry], iterations=1).warnings == []          # 128 px covers 96 px


def test_plan_at_24_megapixels_fits_the_budget(vgg) -> None:
    """The plan the engine makes for a 6000x4000 print stage with the CPU's default 4 GB budget: tiled,
    3 history pairs (1.7 GB) and blocks from the rest; and it refuses a budget that cannot hold it."""
    s = Settings(size=NATIVE_SIZE, block_memory=4096)
    plans = plan.plan_stages(vgg, s, [(4000, 6000), (341, 512)], [10, 150], torch.device("cpu"))
    top, low = plans
    assert low.inner is None and low.history == int(plan.LBFGS_HISTORY_BYTES // (8 * 3 * 341 * 512))
    assert top.inner is not None and top.history == 3
    assert top.history * 8 * 3 * 6000 * 4000 + tiled.block_bytes(top.inner + 150) <= 4096 << 20
    assert plan.plan_stages(None, s, [(4000, 6000), (341, 512)], [10, 150], torch.device("cpu")) == plans
    assert plan.VGG19_MARGINS == tiled.margins(vgg, tuple(dict.fromkeys([*s.content_layers, *s.style_layers])))
    assert 6 << 30 < plan.tiled_stage_bytes(top, s) < 8 << 30          # what a daemon would count (+ torch)
    with pytest.raises(SettingsError, match="history needs 1648 MB"):
        plan.plan_stages(vgg, s.replace(block_memory=1500), [(4000, 6000)], [10], torch.device("cpu"))
