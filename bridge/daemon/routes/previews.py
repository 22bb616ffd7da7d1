"""``POST /v1/previews``: a photo and styles -> one quick preview per style, beside the job queue.

Previews are 8-bit PNGs for looking at, labelled "<style> (preview)": a feed-forward impression, not the
Gatys result. They come back inline (base64 in the JSON), so a client (GIMP's, standard library only)
needs one request and the daemon stores nothing. Same Guard (token, Origin, Host, body size), the same
limits on styles and pixels, and 422 for an image that cannot be read.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from ...imaging import ImageError, Picture, encode_png, load_image
from ...preview import PreviewModelError
from ..context import DaemonDep
from ..library import LibraryError, name_from_filename
from ..previews import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, STYLE_SIDE, PreviewBusy, reduced
from ..web import ApiError, decode_upload, json_response, read_upload, strip_label

router = APIRouter(tags=["previews"])
PREVIEW_PNG_LEVEL = 6       # small images, sent over the wire as base64: worth compressing


@router.post("/v1/previews", summary="Quick previews of styles on a photo (never waits behind jobs)")
def make_previews(
    d: DaemonDep,
    content: Annotated[UploadFile, File(description="the photo: PNG/TIFF/JPEG/WebP")],
    styles: Annotated[list[str] | None, Form(description="library style names (repeatable)")] = None,
    style_files: Annotated[list[UploadFile] | None, File(description="uploaded style images (repeatable)")] = None,
    size: Annotated[int, Form(ge=MIN_SIZE, le=MAX_SIZE, description="long side of the previews in pixels "
                                                                    "(never more than the photo's)")] = DEFAULT_SIZE,
) -> Response:
    limits = d.config.limits
    names = [n.strip() for n in (styles or []) if n is not None and n.strip()]
    files = [f for f in (style_files or []) if f is not None]
    count = len(names) + len(files)
    if count == 0:
        raise ApiError(422, "styles: no style: give library names in 'styles' and/or images in 'style_files'",
                       option="styles")
    if count > limits.max_styles:
        raise ApiError(422, f"styles: {count} styles is over the limit of {limits.max_styles} (max_styles)",
                       option="styles", limit="max_styles", value=count)
    library: list[tuple[str, Path]] = []
    for name in names:
        try:
            library.append((name, d.library.path(name)))
        except LibraryError as exc:
            raise ApiError(422, f"unknown style {name!r}: not in the library (GET /v1/styles lists them)"
                           if exc.status == 404 else str(exc), style=name) from None

    def load() -> tuple[Picture, list[tuple[str, Picture]]]:
        """Decode (in the preview worker, one request at a time) and reduce at once to what previews use."""
        photo = reduced(decode_upload(read_upload(content, "content"), "content", limits,
                                      name=name_from_filename(content.filename, "image")), size)
        chosen: list[tuple[str, Picture]] = []
        for name, path in library:
            try:
                chosen.append((name, reduced(load_image(path, max_pixels=limits.max_pixels, name=name), STYLE_SIDE)))
            except (ImageError, OSError) as exc:
                raise ApiError(422, f"style {name!r}: {strip_label(str(exc))}", style=name) from None
        for upload in files:
            label, what = name_from_filename(upload.filename), f"style file {upload.filename!r}"
            chosen.append((label, reduced(decode_upload(read_upload(upload, what), what, limits, name=label),
                                          STYLE_SIDE)))
        return photo, chosen

    try:
        rendered = d.previews.render(load, size)
    except PreviewBusy:
        raise ApiError(429, "the daemon is busy with other previews; try again in a moment",
                       limit="max_waiting_previews") from None
    except PreviewModelError as exc:
        raise ApiError(503, f"previews are not available on this daemon: {exc}") from None
    return json_response({"previews": [{
        "style": p.style_name, "label": p.label, "width": p.picture.width, "height": p.picture.height,
        "method": p.method, "seconds": round(p.seconds, 3), "media_type": "image/png",
        "png_base64": base64.b64encode(encode_png(p.picture, compress_level=PREVIEW_PNG_LEVEL)).decode("ascii"),
    } for p in rendered]})
