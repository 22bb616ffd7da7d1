"""Write a :class:`LayerStack` as a layered PSD (or PSB above 30000 px) with psd-tools 1.26.

psd-tools builds the records and RLE channels; this module adds what it lacks (see
../shared/notes/psd.md): masks on groups (the divider gets its own channel list), Unicode names
(``luni``), PSB, masks at 16 bits, mask default colour, ICC profile (resource 1039) and
resolution (1005), and our own banded composite as the merged image, because psd-tools'
save-time compositing takes minutes and ~10 GB at 24 MP.  The file appears atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from psd_tools import PSDImage
from psd_tools.api import pil_io
from psd_tools.api import utils as psd_utils
from psd_tools.api.layers import PixelLayer
from psd_tools.constants import BlendMode, ChannelID, Compression, Resource
from psd_tools.psd.image_resources import ImageResource, ResoulutionInfo
from psd_tools.psd.layer_and_mask import ChannelData, ChannelDataList, ChannelInfo, MaskData, MaskFlags

from ..imaging import convert_depth
from ..outputs import output_file
from .blend import iter_composite
from .model import Group, Layer, LayerStack

#: Our mode names (bridge.settings.BLEND_MODES + pass_through) -> Photoshop's keys.
BLEND_MODE_MAP: dict[str, BlendMode] = {
    "normal": BlendMode.NORMAL,
    "multiply": BlendMode.MULTIPLY,
    "screen": BlendMode.SCREEN,
    "overlay": BlendMode.OVERLAY,
    "soft_light": BlendMode.SOFT_LIGHT,
    "hard_light": BlendMode.HARD_LIGHT,
    "linear_light": BlendMode.LINEAR_LIGHT,
    "color": BlendMode.COLOR,
    "luminosity": BlendMode.LUMINOSITY,
    "darken": BlendMode.DARKEN,
    "lighten": BlendMode.LIGHTEN,
    "difference": BlendMode.DIFFERENCE,
    "pass_through": BlendMode.PASS_THROUGH,
}

PSD_MAX_SIDE = 30000          # above this the file must be PSB (version 2)
_COMPRESSIONS = {"rle": Compression.RLE, "zip": Compression.ZIP, "raw": Compression.RAW}


def _plane(arr: np.ndarray, channel: int) -> bytes:
    """One big-endian channel plane of an H x W x C uint8/uint16 array."""
    fmt = ">u2" if arr.dtype == np.uint16 else ">u1"
    return arr[:, :, channel].astype(fmt).tobytes()


def _channel(data: bytes, width: int, height: int, depth: int, version: int,
             compression: Compression) -> ChannelData:
    cd = ChannelData(compression)
    cd.set_data(data, width, height, depth, version)
    return cd


def _set_mask(psd_layer, mask: np.ndarray, left: int, top: int, depth: int, version: int,
              compression: Compression) -> None:
    """Attach a user mask (channel -2) from an array at the document's depth (psd-tools only takes PIL 8-bit)."""
    h, w = mask.shape
    mask = convert_depth(mask, np.uint16 if depth == 16 else np.uint8)   # exact x257 / round(/257)
    data = _plane(mask[:, :, None], 0)
    cd = _channel(data, w, h, depth, version, compression)
    full = np.iinfo(mask.dtype).max
    # default colour = what lies outside the mask's rectangle: follow the mask's edge
    default = 255 if (h and w and int(mask[0, 0]) >= full // 2 and int(mask[-1, -1]) >= full // 2) else 0
    record = psd_layer._record
    record.mask_data = MaskData(top=top, left=left, bottom=top + h, right=left + w,
                                background_color=default, flags=MaskFlags())
    record.channel_info.append(ChannelInfo(id=ChannelID.USER_LAYER_MASK, length=cd._length))
    psd_layer._channels.append(cd)
    if hasattr(psd_layer, "_mask"):
        del psd_layer._mask


def _ascii_name(name: str) -> str:
    return name.encode("ascii", "replace").decode("ascii")[:255] or "Layer"


def _finish(psd_layer, item: Layer | Group) -> None:
    """Name (Unicode via luni), opacity, visibility; psd-tools' create_* only takes ASCII names."""
    psd_layer.name = item.name[:255] or "Layer"     # Photoshop's limit; psd-tools refuses longer
    psd_layer.opacity = int(round(max(0.0, min(1.0, item.opacity)) * 255))
    psd_layer.visible = bool(item.visible)


def _mode(name: str) -> BlendMode:
    try:
        return BLEND_MODE_MAP[name]
    except KeyError:
        raise ValueError(f"blend mode {name!r} cannot be written to PSD "
                         f"(known: {', '.join(BLEND_MODE_MAP)})") from None


def _pixel_layer(parent, px: np.ndarray, name: str, left: int, top: int, depth: int, version: int,
                 compression: Compression) -> PixelLayer:
    """psd-tools' ``create_pixel_layer_from_array`` without its float32 copy of the whole layer.

    Planes are packed straight from the uint8/uint16 array one at a time (psd-tools keeps only
    the compressed ones), which halves the time and the peak memory at 24 MP.
    """
    h, w, c = px.shape
    transparency = _plane(px, 3) if c == 4 else pil_io.encode_opaque_channel(w, h, depth)
    colors = (_plane(px, i) for i in range(3))
    record, channels = PixelLayer._assemble(transparency, colors, name, left, top, w, h, compression,
                                            version, depth)
    layer = PixelLayer(parent, record, channels)
    parent.append(layer)
    return layer


def _add_layer(parent, layer: Layer, depth: int, version: int, compression: Compression) -> None:
    if layer.pixels is None:
        raise ValueError(f"layer {layer.name!r} has no pixels")
    px = layer.pixels
    if px.ndim != 3 or px.shape[2] not in (3, 4):
        raise ValueError(f"layer {layer.name!r}: expected H x W x 3 or 4 pixels, got {px.shape}")
    target = np.uint16 if depth == 16 else np.uint8
    if px.dtype != target:
        raise ValueError(f"layer {layer.name!r} is {px.dtype}, the document is {depth}-bit")
    psd_layer = _pixel_layer(parent, px, _ascii_name(layer.name), layer.left, layer.top, depth, version,
                             compression)
    psd_layer.blend_mode = _mode(layer.mode)
    if layer.mask is not None:
        if layer.mask.shape != px.shape[:2]:
            raise ValueError(f"layer {layer.name!r}: mask {layer.mask.shape} != pixels {px.shape[:2]}")
        _set_mask(psd_layer, layer.mask, layer.left, layer.top, depth, version, compression)
    _finish(psd_layer, layer)


def _add_group(psd: PSDImage, group: Group, stack: LayerStack, version: int,
               compression: Compression) -> None:
    g = psd.create_group(name=_ascii_name(group.name), blend_mode=_mode(group.mode))
    # psd-tools gives the folder record and its divider ONE channel list; a mask appended to
    # one then corrupts the other.  Give the divider its own.
    g._bounding_channels = ChannelDataList(
        [ChannelData(compression=Compression.RAW, data=b"") for _ in g._bounding_channels])
    for child in group.children:
        _add_layer(g, child, stack.depth, version, compression)
    if group.mask is not None:
        if group.mask.shape != (stack.height, stack.width):
            raise ValueError(f"group {group.name!r}: mask must have the document's size")
        _set_mask(g, group.mask, 0, 0, stack.depth, version, compression)
    _finish(g, group)


def build_psd(stack: LayerStack, *, compression: str = "rle", large_format: bool = False) -> PSDImage:
    """The psd-tools document for ``stack``, merged image included (not yet saved).

    ``large_format`` forces PSB (version 2) at any size; above 30000 px it is PSB anyway.
    """
    if stack.depth not in (8, 16):
        raise ValueError(f"document depth must be 8 or 16, not {stack.depth}")
    if stack.width < 1 or stack.height < 1:
        raise ValueError(f"document size {stack.width}x{stack.height} is empty")
    try:
        comp = _COMPRESSIONS[compression]
    except KeyError:
        raise ValueError(f"compression {compression!r}: use rle, zip or raw") from None
    bottom = stack.items[0] if stack.items else None
    has_alpha = isinstance(bottom, Layer) and bottom.pixels is not None and bottom.pixels.shape[2] == 4
    mode = "RGBA" if has_alpha else "RGB"
    big = max(stack.width, stack.height) > PSD_MAX_SIDE
    if big and psd_utils.MAX_DIMENSION_PSD < max(stack.width, stack.height):
        psd_utils.MAX_DIMENSION_PSD = 300_000          # PSB limit; psd-tools applies the PSD one
    psd = PSDImage.new(mode, (stack.width, stack.height), color=0, depth=stack.depth, compression=comp)
    if large_format:
        psd._record.header.version = 2     # before any channel is encoded (4-byte RLE counts)
    version = psd._record.header.version
    for item in stack.items:
        if isinstance(item, Group):
            _add_group(psd, item, stack, version, comp)
        else:
            _add_layer(psd, item, stack.depth, version, comp)
    _set_resources(psd, stack)
    _set_merged(psd, stack, comp, has_alpha)
    return psd


def _set_resources(psd: PSDImage, stack: LayerStack) -> None:
    res = psd.image_resources
    if stack.icc_profile:
        res[Resource.ICC_PROFILE] = ImageResource(key=Resource.ICC_PROFILE, data=bytes(stack.icc_profile))
    if stack.dpi:
        hx, vy = (int(round(float(v) * 65536)) for v in stack.dpi)
        res[Resource.RESOLUTION_INFO] = ImageResource(
            key=Resource.RESOLUTION_INFO,
            data=ResoulutionInfo(horizontal=hx, horizontal_unit=1, width_unit=1,
                                 vertical=vy, vertical_unit=1, height_unit=1))


def _set_merged(psd: PSDImage, stack: LayerStack, comp: Compression, has_alpha: bool) -> None:
    """Store our banded composite as the merged image and stop psd-tools recompositing at save."""
    depth = stack.depth
    dtype = np.dtype(">u2" if depth == 16 else ">u1")
    top = 65535.0 if depth == 16 else 255.0
    nch = 4 if has_alpha else 3
    planes = [np.empty((stack.height, stack.width), dtype) for _ in range(nch)]
    for y0, y1, color, alpha in iter_composite(stack):
        for c in range(3):
            planes[c][y0:y1] = np.rint(np.clip(color[:, :, c], 0, 1) * top).astype(dtype)
        if has_alpha:
            planes[3][y0:y1] = np.rint(np.clip(alpha[:, :, 0], 0, 1) * top).astype(dtype)
    psd._record.image_data.set_data([p.tobytes() for p in planes], psd._record.header)
    del planes
    if has_alpha:
        # negative layer count: the 4th merged channel is the composite's transparency
        info = psd._record._get_layer_info()
        info.layer_count = -abs(info.layer_count)
        psd._merged_alpha = True
    psd._updated = False                # our composite is current; don't let save() redo it


def write_psd(stack: LayerStack, path: str | os.PathLike, *, compression: str = "rle",
              unique: bool = False) -> Path:
    """Write ``stack`` to ``path`` atomically: PSB when ``path`` ends in .psb or a side exceeds 30000 px.

    The file is written under a temporary name in the same folder, fsynced and renamed, so a
    crash never leaves a half-written file under ``path``, and no temporary file survives a failure.
    With ``unique`` nothing is replaced: the document goes to ``path`` or its first free ``stem-N``
    name, claimed atomically (:func:`bridge.outputs.publish`); without it ``path`` is replaced.
    Returns the path really written.
    """
    path = Path(path)
    psd = build_psd(stack, compression=compression, large_format=path.suffix.lower() == ".psb")
    with output_file(path, unique=unique) as out:
        psd.save(out.file)
    assert out.path is not None
    return out.path


def psd_suffix(width: int, height: int) -> str:
    """'.psb' when a side exceeds 30000 px (Photoshop's Large Document Format), else '.psd'."""
    return ".psb" if max(width, height) > PSD_MAX_SIDE else ".psd"
