"""The result's layers in the image: which layer a run paints (a mask's layer, an earlier result's photo),
where the new stack goes (on top of the photo and every earlier result; helper layers reused; an earlier
group replaced or added to), and inserting the daemon's stack with masks and records. Split from
``stylebridge.py`` (the adapter over GIMP); the decisions without GIMP are in ``sb_desk.py``/``sb_logic.py``.
"""

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio  # noqa: E402

import sb_desk  # noqa: E402
import sb_logic  # noqa: E402

PROC_NAME = sb_logic.PROC_NAME
PARASITE_NAME = sb_logic.PARASITE_NAME
UserError = sb_logic.UserError


def channel_format(image):
    # Selections and masks hold linear coverage: read as "Y u8", a selection gives the same bytes as the mask
    # GIMP itself makes from it (Add Layer Mask > Selection), feathering included. Masks are written back in
    # the same format, so a mask from the selection is bit-identical to it.
    return "Y u8"


def load_gray(path):
    """A gray PNG's 8-bit values, read with GIMP's own loader (fast; any PNG depth)."""
    img = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))
    try:
        lay = img.get_layers()[0]
        w, h = lay.get_width(), lay.get_height()
        buf = lay.get_buffer()
        return w, h, buf.get(Gegl.Rectangle.new(0, 0, w, h), 1.0, "Y' u8", Gegl.AbyssPolicy.CLAMP)
    finally:
        img.delete()


def apply_mask(image, item, mask_path):
    w, h, data = load_gray(mask_path)
    mask = item.create_mask(Gimp.AddMaskType.WHITE)
    item.add_mask(mask)
    if (w, h) != (item.get_width(), item.get_height()):
        raise RuntimeError(f"mask of {item.get_name()} is {w}x{h}, layer is {item.get_width()}x{item.get_height()}")
    # Straight into the new mask's buffer: merge_shadow() would clip the write to the current selection.
    buf = mask.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, w, h), channel_format(image), data)
    buf.flush()
    mask.update(0, 0, w, h)


def make_parasite(record):
    data = sb_logic.record_bytes(record)
    return Gimp.Parasite.new(PARASITE_NAME, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(data))


def record_of(item):
    """The Stylebridge record on ``item`` (its parasite), or None."""
    try:
        parasite = item.get_parasite(PARASITE_NAME)
    except Exception:  # noqa: BLE001 - not an item with parasites
        return None
    return sb_logic.read_record(bytes(parasite.get_data())) if parasite is not None else None


def is_result(item):
    return sb_desk.is_result_record(record_of(item), PROC_NAME)


def siblings_of(image, item):
    parent = item.get_parent()
    return parent.get_children() if parent is not None else image.get_layers()


def earlier_results(image, layer):
    """[(position, item, record)] of earlier Stylebridge results beside ``layer`` (same parent)."""
    return [(image.get_item_position(it), it, record_of(it)) for it in siblings_of(image, layer) if is_result(it)]


def find_source(image, item):
    """The photo layer a result item was made from: the one its record names (tattoo), else the first pixel
    layer below its stack that is not a result; None when it is gone."""
    tattoo = (record_of(item) or {}).get("source")
    if isinstance(tattoo, int) and not isinstance(tattoo, bool):
        found = image.get_layer_by_tattoo(tattoo)
        if found is not None and found.is_valid() and not found.is_group():
            return found
    top = item
    while top.get_parent() is not None and is_result(top.get_parent()):
        top = top.get_parent()
    below = False
    for sib in siblings_of(image, top):
        if sib.get_id() == top.get_id():
            below = True
        elif below and not sib.is_group() and not is_result(sib) and record_of(sib) is None:
            return sib
    return None


def resolve_target(image, drawables):
    """(the pixel layer to paint, why that one (None: it was chosen), the chosen item, the earlier result group
    it belongs to or None). A selected mask means its layer; an earlier result (its group, a style or helper
    layer) means the photo it was made from. UserError says what to select instead."""
    if len(drawables) != 1:
        raise UserError("Stylebridge paints one layer: select a single layer.")
    chosen = drawables[0]
    item, why = chosen, None
    if isinstance(item, Gimp.LayerMask):
        item, why = Gimp.Layer.from_mask(item), "the layer of the selected mask"
    if not isinstance(item, Gimp.Layer):
        raise UserError("Stylebridge paints a layer: select a layer (not a channel or a path).")
    if is_result(item):
        group = item if item.is_group() else item.get_parent()
        group = group if group is not None and is_result(group) else None
        source = find_source(image, item)
        if source is None:
            raise UserError("Stylebridge: the photo this result was made from is gone: select the photo's layer.")
        return source, "the photo of the selected result", item, group
    if item.is_group():
        raise UserError("Stylebridge paints a pixel layer: select a layer inside the group, not the group.")
    return item, why, item, None


def stack_place(image, layer):
    """(parent, position) of the new result and the live preview: above the photo and every earlier result."""
    earlier = [pos for pos, _, _ in earlier_results(image, layer)]
    return layer.get_parent(), sb_desk.top_position(image.get_item_position(layer), earlier)


def insert_stack(image, layer, opts, result, files, job_id, used, inserted, group=None):
    """Insert the daemon's layer stack (sb_logic.layer_plan) on top of the photo and its earlier results
    (caller holds the undo group); helper layers an earlier run left beside it are reused. ``group``: the
    earlier result group chosen with ``opts.rerun`` "replace" (the new one takes its place) or "add" (the new
    style layers go into it).

    New items are appended to ``inserted`` as they go in (so a caller can take them out on failure).
    Returns a list of warnings.
    """
    parent, position = stack_place(image, layer)
    rerun = opts.rerun if group is not None and group.is_valid() else "new"
    if rerun == "replace":
        parent, position = group.get_parent(), image.get_item_position(group)
    _, ox, oy = layer.get_offsets()
    steps, warnings = sb_logic.layer_plan(result)
    reused = {rec.get("role"): item for _, item, rec in earlier_results(image, layer)
              if rec.get("role") in sb_desk.HELPER_ROLES}
    skip = sb_desk.helpers_to_skip(reused, [s.role for s in steps])
    base = dict(sb_logic.base_record(opts, result, job_id, used), source=layer.get_tattoo())
    created, new_group = {}, None
    for step in steps:
        if step.role in skip:
            continue
        if step.group and rerun == "add":
            created[step.index] = new_group = group
            continue
        new = _new_item(image, layer, step, files)
        if step.parent is not None and step.parent in created:
            image.insert_layer(new, created[step.parent], 0)        # bottom to top: each on top of the group
        else:
            image.insert_layer(new, parent, position)               # bottom to top at a fixed index
        inserted.append(new)
        created[step.index] = new
        new_group = new if step.group and new_group is None else new_group
        _dress(image, new, step, ox, oy, files, base)
    _raise_helpers(image, [reused[s.role] for s in reversed(steps) if s.role in skip], new_group)
    if rerun == "replace" and group.is_valid():
        image.remove_layer(group)
    return warnings


def _new_item(image, layer, step, files):
    if step.group:
        return Gimp.GroupLayer.new(image, step.name)
    image_path = files.get(step.index, (None, None))[0]
    if image_path:
        new = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(image_path))
        new.set_name(step.name)
        return new
    image_type = Gimp.ImageType.GRAYA_IMAGE if image.get_base_type() == Gimp.ImageBaseType.GRAY \
        else Gimp.ImageType.RGBA_IMAGE
    new = Gimp.Layer.new(image, step.name, step.width or layer.get_width(), step.height or layer.get_height(),
                         image_type, 100, Gimp.LayerMode.NORMAL)
    new.fill(Gimp.FillType.TRANSPARENT)
    return new


def _dress(image, new, step, ox, oy, files, base):
    """Offsets, mode, opacity, visibility, mask and record of a new item. Original colours comes visible
    (its mask black): one white stroke on the mask shows the photo's colours there."""
    if not new.is_group():
        if not new.has_alpha():
            new.add_alpha()
        new.set_offsets(ox + step.left, oy + step.top)
    new.set_mode(getattr(Gimp.LayerMode, step.mode))
    new.set_opacity(step.opacity)
    new.set_visible(True if step.role == "colors" else step.visible)
    mask_path = files.get(step.index, (None, None))[1]
    if mask_path:
        apply_mask(image, new, mask_path)
    new.attach_parasite(make_parasite(sb_logic.layer_record(base, step)))


def _id(item):
    return item.get_id() if item is not None else None


def _raise_helpers(image, helpers_top_first, new_group):
    """Reused helper layers below the new group go back above it, in their order (they act on what is below
    them); those already above it stay."""
    if new_group is None or not helpers_top_first:
        return
    for helper in helpers_top_first:
        if helper.is_valid() and _id(helper.get_parent()) == _id(new_group.get_parent()) \
                and image.get_item_position(helper) > image.get_item_position(new_group):
            image.reorder_item(helper, new_group.get_parent(), image.get_item_position(new_group))


# ------------------------------------------------------------------------------------------------
# regions (issue #22): channels, layer masks and the selection, read in the painted layer's frame
# ------------------------------------------------------------------------------------------------

def _masked_layers(image, layer):
    """(name, layer) of every layer with a mask, topmost first (groups walked), the painted layer left out."""
    out = []

    def walk(items):
        for item in items:
            if item.is_group():
                walk(item.get_children())
            elif item.get_id() != layer.get_id() and item.get_mask() is not None:
                out.append((item.get_name(), item))
    walk(image.get_layers())
    return out


def _read_in_frame(buffer, x, y, w, h, image):
    """``w`` x ``h`` grey bytes of ``buffer`` from (x, y) in its own coordinates; outside it = 0."""
    return buffer.get(Gegl.Rectangle.new(x, y, w, h), 1.0, channel_format(image), Gegl.AbyssPolicy.NONE)


def read_regions(image, layer, opts):
    """The regions this run sends: (found, masks, covered). ``found``: style -> sb_logic.RegionSource;
    ``masks``: style -> grey bytes at the painted layer's size and place (outside the canvas / the masked
    layer = 0); ``covered``: style -> share of the layer. A layer mask the same everywhere on its own layer
    (the plug-in's own "first"/"all"/"none" masks of an earlier result) says nothing about where: left out."""
    styles = sb_logic.style_names(opts)
    _, ox, oy = layer.get_offsets()
    w, h = layer.get_width(), layer.get_height()
    has_selection = not Gimp.Selection.is_empty(image)
    channels = {}
    masked = {}
    if opts.use_regions:
        for ch in image.get_channels():
            channels.setdefault(ch.get_name(), ch)
        for name, item in _masked_layers(image, layer):
            if name in masked:
                continue
            mask = item.get_mask()
            own = _read_in_frame(mask.get_buffer(), 0, 0, mask.get_width(), mask.get_height(), image)
            if not own or own.count(own[0]) == len(own):
                continue                    # the same everywhere on its own layer: says nothing about where
            _, lx, ly = item.get_offsets()
            masked[name] = _read_in_frame(mask.get_buffer(), ox - lx, oy - ly, w, h, image)
    found = sb_logic.match_regions(styles, channels, masked, opts.region_selection or None, has_selection)
    masks = {}
    for style, source in found.items():
        if source.kind == "selection":
            masks[style] = _read_in_frame(image.get_selection().get_buffer(), ox, oy, w, h, image)
        elif source.kind == "channel":
            masks[style] = _read_in_frame(channels[source.name].get_buffer(), ox, oy, w, h, image)
        else:
            masks[style] = masked[source.name]
    covered = {style: sb_logic.coverage(data) for style, data in masks.items()}
    return found, masks, covered
