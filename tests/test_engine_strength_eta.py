"""Issue 14, engine side: the strength knob (0 = the photo, monotonic toward the style, real VGG-19 at tiny
sizes) and honest progress (stage-weighted percent, ETA from measured speed: a unit test of the cost
model with a fake clock, and a real small run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridge.engine import StyleInput, stylize
from bridge.engine.eta import CostModel, RunEstimator
from bridge.imaging import Picture, load_image
from bridge.settings import Settings

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FAST_LAYERS = Settings().style_layers


def small(name: str, long_side: int) -> Picture:
    """A repo sample (samples/, shipped) at ``long_side`` px."""
    pic = load_image(SAMPLES / name)
    scale = long_side / max(pic.width, pic.height)
    size = (max(1, round(pic.width * scale)), max(1, round(pic.height * scale)))
    return dataclasses.replace(pic, rgb=np.asarray(Image.fromarray(pic.rgb).resize(size, Image.LANCZOS)), alpha=None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- honest progress -----------------------------------------------------------------------------

def test_percent_weights_each_iteration_by_its_stage_cost() -> None:
    model = CostModel(seconds_per_pixel=1e-6, overhead_pixels=0.0)
    est = RunEstimator([128 * 128, 512 * 512], [50, 50], jobs=1, model=model, clock=FakeClock())
    est.start_stage(0, 0)
    for i in range(1, 51):
        e = est.iteration(i)
    est.end_stage()
    # half the iterations, but a 512 px iteration costs 16x a 128 px one: 1/17 of the work
    assert e.percent == pytest.approx(100.0 / 17.0)
    est.start_stage(0, 1)
    assert est.iteration(25).percent == pytest.approx(100.0 * (1 + 8) / 17.0)
    assert est.iteration(50).percent == pytest.approx(100.0)


def test_a_default_run_is_not_40_percent_done_after_its_coarse_stages() -> None:
    """The issue's run: 40% shown after the coarse stages of a default 512 px run, with most of it to go."""
    from bridge.engine.eta import DEVICE_MODELS
    from bridge.engine.plan import stage_dims, working_ladder

    defaults = Settings()
    ladder = working_ladder(defaults, 512, 341)
    pixels = [int(np.prod(stage_dims(512, 341, side))) for side in ladder]
    iterations = [defaults.coarse_iterations] * (len(ladder) - 1) + [defaults.iterations]
    assert ladder == [128, 181, 256, 362, 512] and sum(iterations[:-1]) / sum(iterations) == 0.4
    est = RunEstimator(pixels, iterations, jobs=1, model=DEVICE_MODELS["cpu"], clock=FakeClock())
    est.start_stage(0, len(ladder) - 1)
    assert 12.0 < est.percent < 16.0


def test_overhead_pixels_make_small_stages_cost_more_than_their_pixels() -> None:
    model = CostModel(seconds_per_pixel=1e-6, overhead_pixels=1000.0)
    assert model.units(1000) == 2000.0 and model.seconds(1000) == pytest.approx(2e-3)
    est = RunEstimator([1000, 9000], [10, 10], jobs=1, model=model, clock=FakeClock())
    est.start_stage(0, 0)
    est.iteration(10)
    assert est.percent == pytest.approx(100.0 * 2000 / (2000 + 10000))


def test_eta_predicts_later_stages_from_the_measured_speed_and_later_styles_from_each_stage() -> None:
    clock = FakeClock()
    # the prior says 1 s per iteration at 100 px; this machine is 3x slower than the prior
    model = CostModel(seconds_per_pixel=0.01, overhead_pixels=0.0)
    est = RunEstimator([100, 400], [10, 10], jobs=2, model=model, clock=clock)
    est.start_stage(0, 0)
    assert est.remaining_seconds() == pytest.approx(2 * (10 * 1 + 10 * 4))   # prior only
    for i in range(1, 11):
        clock.now += 3.0
        e = est.iteration(i)
    est.end_stage()
    # stage 2 (4x the pixels) predicted from the 3 s measured: 12 s/iteration; style 2 likewise
    assert e.eta_seconds == pytest.approx(10 * 12 + (10 * 3 + 10 * 12))
    est.start_stage(0, 1)
    for i in range(1, 11):
        clock.now += 10.0         # the big stage turns out cheaper per pixel than the small one
        e = est.iteration(i)
    est.end_stage()
    # the second style is predicted from each stage's own measured speed
    assert e.eta_seconds == pytest.approx(10 * 3 + 10 * 10)
    assert e.percent == pytest.approx(50.0)


def test_the_overhead_is_fitted_to_the_stages_measured_so_far() -> None:
    """Two stages measured (2.4 s at 10880 px, 3.36 s at 21901 px: a busy machine's figures) give the
    overhead that predicts the third; the device model's own overhead would say 6.1 s, not 5.24 s."""
    clock = FakeClock()
    model = CostModel(seconds_per_pixel=1e-4, overhead_pixels=4000.0)
    est = RunEstimator([10880, 21901, 43520], [10, 10, 10], jobs=1, model=model, clock=clock)
    for stage, per in ((0, 2.4), (1, 3.36)):
        est.start_stage(0, stage)
        for i in range(1, 11):
            clock.now += per
            est.iteration(i)
        est.end_stage()
    overhead = (2.4 * 21901 - 3.36 * 10880) / (3.36 - 2.4)
    assert est._overhead(exclude=2) == pytest.approx(overhead)
    assert est.seconds_per_iteration(2) == pytest.approx(3.36 * (43520 + overhead) / (21901 + overhead))
    assert est.seconds_per_iteration(2) == pytest.approx(5.24, abs=0.01)


def test_eta_follows_the_machine_when_it_slows_down(monkeypatch) -> None:
    """With the recent-speed factor on (off by default: bench/README.md), a machine that gets busier
    mid-stage makes the ETA follow the recent speed, not the stage average."""
    from bridge.engine import eta
    monkeypatch.setattr(eta, "RECENT", 0.1)
    clock = FakeClock()
    est = RunEstimator([100], [40], jobs=1, model=CostModel(0.01, 0.0), clock=clock)
    est.start_stage(0, 0)
    for i in range(1, 31):
        clock.now += 1.0 if i <= 10 else 2.0
        e = est.iteration(i)
    average = (10 * 1.0 + 20 * 2.0) / 30
    assert e.eta_seconds > 10 * 1.85 > 10 * average      # 10 left at ~2 s, not at the average 1.67 s
    assert e.eta_seconds <= 10 * 2.0 + 1e-9


def test_an_iteration_in_flight_counts_in_part() -> None:
    """A tiled stage's first iteration (minutes at 24 MP): its blocks move the percent by the fraction done,
    never past the iteration's own event, and its seconds so far correct the prediction of the stage's speed."""
    clock = FakeClock()
    model = CostModel(seconds_per_pixel=0.01, overhead_pixels=0.0)
    est = RunEstimator([100, 400], [10, 10], jobs=1, model=model, clock=clock)
    est.start_stage(0, 0)
    for i in range(1, 11):
        clock.now += 1.0                              # stage 1 as the prior says: 1 s per iteration
        est.iteration(i)
    est.end_stage()
    est.start_stage(0, 1)                             # predicted 4 s per iteration; it takes 40
    before = est.percent
    clock.now += 20.0
    half = est.partial(0.5)
    assert half.percent == pytest.approx(before + 0.5 * (100.0 - before) / 10)
    # 0.5 iteration in 20 s, blended with the 4 s prediction for the rest of PRIOR_ITERATIONS (3)
    rate = (20.0 + 2.5 * 4.0) / 3.0
    assert half.eta_seconds == pytest.approx(9.5 * rate)
    assert half.eta_seconds > 10 * 4.0                # the prediction alone would say 40 s left
    clock.now += 20.0
    assert est.partial(2.0).percent == pytest.approx(before + (100.0 - before) / 10)   # at most the iteration
    assert est.partial(0.2).percent == pytest.approx(before + (100.0 - before) / 10)   # never back
    assert est.iteration(1).percent == pytest.approx(before + (100.0 - before) / 10)


def test_a_stage_that_stops_early_counts_as_done() -> None:
    est = RunEstimator([100, 100], [10, 10], jobs=1, model=CostModel(1e-3, 0.0), clock=FakeClock())
    est.start_stage(0, 0)
    est.iteration(3)
    est.end_stage()
    est.start_stage(0, 1)
    assert est.iteration(1).percent == pytest.approx(55.0)


def test_percent_is_stage_weighted_in_a_real_run(vgg) -> None:
    photo = small("photo.jpg", 64)
    style = StyleInput("glass", small("style_glass.jpg", 64))
    events = []
    settings = Settings(size=64, min_size=32, scale_step=2.0, iterations=4, coarse_iterations=4, seed=3,
                        preview_every=0, device="cpu")
    result = stylize(photo, [style], settings, progress=events.append)
    assert not result.cancelled and [e.stage for e in events] == [1] * 4 + [2] * 4
    percents = [e.percent for e in events]
    assert percents == sorted(percents) and percents[-1] == pytest.approx(100.0)
    from bridge.engine.eta import DEVICE_MODELS
    model = DEVICE_MODELS["cpu"]
    from bridge.engine.plan import stage_dims
    small_px, big_px = (int(np.prod(stage_dims(64, 43, side))) for side in (32, 64))
    expected = 100.0 * model.units(small_px) / (model.units(small_px) + model.units(big_px))
    # after the first stage: its share of the cost, not half of the iterations
    assert events[3].percent == pytest.approx(expected, rel=1e-6)
    assert events[3].fraction == pytest.approx(expected / 100.0)
    assert abs(expected - 50.0) > 5.0
    assert all(e.eta_seconds is not None and e.eta_seconds >= 0 for e in events)
    assert events[-1].eta_seconds == pytest.approx(0.0)
    # the best loss so far never rises within a stage, and is never above the step's own loss
    for stage in (1, 2):
        best = [e.best_loss for e in events if e.stage == stage]
        assert best == sorted(best, reverse=True)
    assert all(e.best_loss <= e.loss for e in events)


# --- the strength knob ---------------------------------------------------------------------------

FAST = dict(size=48, iterations=7, coarse_to_fine=False, seed=5, device="cpu")


def _distance(a: Picture, b: Picture) -> float:
    return float(np.abs(a.rgb.astype(np.float32) - b.rgb.astype(np.float32)).mean())


def test_strength_zero_returns_the_photo_exactly() -> None:
    photo = small("photo.jpg", 40)
    styles = [StyleInput("glass", small("style_glass.jpg", 40)), StyleInput("bands", small("style_bands.jpg", 40))]
    events = []
    result = stylize(photo, styles, Settings(style_strength=0.0, style_blend_weights=(1.0, 1.0), seed=1),
                     progress=events.append)
    assert [i.name for i in result.images] == ["glass", "bands", "blend"]
    for image in result.images:
        assert np.array_equal(image.picture.rgb, photo.rgb) and image.picture.rgb is not photo.rgb
        assert image.picture.name == image.name
    assert not result.cancelled and events == []


def test_strength_is_monotonic_from_the_photo_to_fully_painted(vgg) -> None:
    """Real VGG-19: more strength = further from the photo and nearer the style, in roughly even steps;
    the progress previews already show the strength the result will have."""
    from bridge.engine.losses import style_distance
    from bridge.engine.pixels import picture_tensor, resize
    from bridge.engine.plan import stage_dims
    from bridge.engine.targets import style_grams

    photo = small("photo.jpg", 48)
    style = small("style_glass.jpg", 48)
    target = style_grams(vgg, resize(picture_tensor(style), stage_dims(style.width, style.height, 48)) * 255,
                         FAST_LAYERS)
    distances, losses, preview_distances = [], [], []
    for s in (0.0, 0.25, 0.5, 0.75, 1.0):
        previews = []
        out = stylize(photo, [StyleInput("glass", style)], Settings(style_strength=s, preview_every=7, **FAST),
                      progress=lambda p: previews.append(p.preview) if p.preview is not None else None)
        picture = out.images[0].picture
        distances.append(_distance(picture, photo))
        with torch.no_grad():
            losses.append(style_distance(vgg(picture_tensor(picture) * 255, FAST_LAYERS), target))
        if previews:
            preview_distances.append(float(np.abs(previews[-1] * 255 - photo.rgb.astype(np.float32)).mean()))
    assert distances[0] == 0.0
    assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    steps = np.diff(distances)
    assert steps.min() > 0.6 * steps.max(), distances                 # even steps of distance
    assert distances[-1] > 10.0                                       # and 1 is visibly painted
    assert all(a < b for a, b in zip(preview_distances, preview_distances[1:])), preview_distances


def test_strength_above_one_keeps_its_old_meaning() -> None:
    photo = small("photo.jpg", 32)
    style = [StyleInput("glass", small("style_glass.jpg", 32))]
    settings = Settings(size=32, iterations=3, coarse_to_fine=False, seed=2, device="cpu")
    old = stylize(photo, style, dataclasses.replace(settings, style_strength=3.0)).images[0].picture
    same = stylize(photo, style, dataclasses.replace(settings, style_weight=300.0)).images[0].picture
    assert np.array_equal(old.rgb, same.rgb)

