"""A contact sheet: the photo, then the photo's preview under each style with the style's thumbnail and name.

Used by ``stylebridge preview`` and meant for any front end that wants one image to choose styles from
(the hot folder may write one beside a job's PSD). Every tile is captioned as a preview and the header
says so: with ``method`` "instant" the sheet shows fast feed-forward impressions, not Gatys results; with
"faithful" small real Gatys runs with the job's settings (:mod:`.faithful`), captioned as such.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..imaging import Picture
from ..settings import DEFAULTS, PREVIEW, Settings
from .engine import DEFAULT_LONG_SIDE, StylePreview, previews, rgb8
from .models import PreviewModels

HEADER = "stylebridge preview: fast impressions of each style, not the final Gatys result"
HEADER_FAITHFUL = "stylebridge preview: small real runs of each style (the full result adds finer detail)"
NOTE = "preview (fast impression, not the result)"
NOTE_FAITHFUL = "faithful preview (small real run)"
MARGIN = 12
CAPTION = 64          # caption band under each tile: style thumbnail + name + "preview"
MAX_COLUMNS = 4
BACKGROUND = (245, 245, 245)
INK = (20, 20, 20)
GREY = (110, 110, 110)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)   # Pillow's scalable default (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _thumb(rgb: np.ndarray, box: tuple[int, int]) -> Image.Image:
    im = Image.fromarray(rgb)
    im.thumbnail(box, Image.LANCZOS)
    return im


def render_sheet(photo: Picture, styles: Sequence[Picture], items: Sequence[StylePreview], *,
                 tile: int = DEFAULT_LONG_SIDE) -> Picture:
    """Draw the sheet from previews already made (one per style, same order); 8-bit RGB."""
    if len(styles) != len(items):
        raise ValueError(f"{len(styles)} styles but {len(items)} previews")
    faithful = bool(items) and all(item.method == "gatys" for item in items)
    photo_rgb = rgb8(photo)
    scale = tile / max(photo.width, photo.height)
    tw, th = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
    cells = 1 + len(items)
    columns = min(MAX_COLUMNS, max(1, math.ceil(math.sqrt(cells))))
    rows = math.ceil(cells / columns)
    font, small, header_font = _font(16), _font(13), _font(18)
    header = 40
    width = MARGIN + columns * (tw + MARGIN)
    height = header + rows * (th + CAPTION + MARGIN) + MARGIN
    sheet = Image.new("RGB", (max(width, 360), height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, 12), _fit_text(draw, HEADER_FAITHFUL if faithful else HEADER, header_font, sheet.width - 2 * MARGIN), fill=INK,
              font=header_font)
    entries: list[tuple[np.ndarray, np.ndarray | None, str, str]] = [(photo_rgb, None, photo.name, "photo")]
    entries += [(item.picture.rgb, rgb8(style), item.style_name, "preview") for style, item in zip(styles, items)]
    for index, (image, style_rgb, name, kind) in enumerate(entries):
        row, col = divmod(index, columns)
        x = MARGIN + col * (tw + MARGIN)
        y = header + row * (th + CAPTION + MARGIN)
        shown = _thumb(image, (tw, th))
        sheet.paste(shown, (x + (tw - shown.width) // 2, y + (th - shown.height) // 2))
        text_x = x
        if style_rgb is not None:
            thumb = _thumb(style_rgb, (CAPTION - 8, CAPTION - 8))
            sheet.paste(thumb, (x, y + th + 4))
            draw.rectangle((x, y + th + 4, x + thumb.width - 1, y + th + 3 + thumb.height), outline=GREY)
            text_x = x + CAPTION
        room = x + tw - text_x
        draw.text((text_x, y + th + 8), _fit_text(draw, name, font, room), fill=INK, font=font)
        note = "the photo" if kind == "photo" else NOTE_FAITHFUL if faithful else NOTE
        draw.text((text_x, y + th + 32), _fit_text(draw, note, small, room), fill=GREY, font=small)
    return Picture(rgb=np.asarray(sheet), name=f"{photo.name} preview sheet")


def contact_sheet(photo: Picture, styles: Sequence[Picture], *, tile: int | None = None,
                  method: str = "auto", models: PreviewModels | None = None,
                  settings: Settings = DEFAULTS) -> Picture:
    """The photo and its preview under every style, on one 8-bit RGB picture (previews at ``tile`` px).

    ``method`` "faithful": small real Gatys runs with ``settings`` (tile default ``PREVIEW.faithful_size``);
    any other: the instant network (``auto``/``guided``/``tiles``; "instant" = "auto"; tile default 512)."""
    if method == "faithful":
        from .faithful import faithful_previews

        tile = tile or PREVIEW.faithful_size
        items = faithful_previews(photo, styles, settings=settings, long_side=tile)
    else:
        tile = tile or DEFAULT_LONG_SIDE
        items = previews(photo, styles, long_side=tile, method="auto" if method == "instant" else method,
                         models=models)
    return render_sheet(photo, styles, items, tile=tile)
