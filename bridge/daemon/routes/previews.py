"""``POST /v1/previews``: a photo and styles -> one quick preview per style, beside the job queue.

Previews are 8-bit PNGs for looking at, labelled "<style> (preview)": a feed-forward impression, not the
Gatys result. They come back inline (base64 in the JSON), so a client (GIMP's, standard library only)
needs one request and the daemon stores nothing. Same Guard (token, Origin, Host, body size), the same
limits on styles, pixels and memory as jobs (checked from the headers before anything is decoded), and
422 for an image that cannot be read. A request has a time budget (``PREVIEW.request_seconds``): styles
it leaves no time for come back with ``"skipped": true``, ``"reason": "timeout"`` and an ``error`` text.

``method``: ``"instant"`` (default: the feed-forward network, items' ``method`` "guided"/"tiles") or
``"faithful"`` (a small real Gatys run with the job's own ``settings``, a JSON object parsed exactly as a job's;
items' ``method`` "gatys"; ``size`` defaults to ``PREVIEW.faithful_size`` and is at most
:data:`bridge.preview.faithful.MAX_SIZE`). How faithful previews share the machine with jobs:
:mod:`bridge.daemon.previews`. The route is async only to watch the client while the worker renders: a client
that goes away cancels the request (the run in progress stops within an iteration, the rest is skipped).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ...imaging import ImageError, Picture, encode_png
from ...job import FIXED_BY_DAEMON
from ...preview import PreviewModelError
from ...preview import faithful as preview_faithful
from ...settings import PREVIEW, SERVICE, Settings, SettingsError
from ...settings_parse import settings_from_mapping
from ..context import Daemon, DaemonDep
from ..memory import default_job_memory
from ..library import LibraryError, name_from_filename
from ..previews import (DEFAULT_SIZE, MAX_SIZE, METHODS, MIN_SIZE, STYLE_SIDE, PreviewBusy, PreviewImage,
                        SkippedPreview, decode_reduced, preview_memory)
from ..web import ApiError, json_response, load_json, over_memory, probe_stream, settings_error, strip_label

router = APIRouter(tags=["previews"])
PREVIEW_PNG_LEVEL = 6       # small images, sent over the wire as base64: worth compressing
JPEG_MAGIC = b"\xff\xd8\xff"
DISCONNECT_POLL_S = 0.5     # how often a waiting request checks that its client is still there


def preview_settings(raw: str | None, d: Daemon) -> Settings:
    """The ``settings`` field (JSON object) parsed as a job's settings on the daemon's defaults: 422 naming the
    setting for an unknown name or a bad value, as ``POST /v1/jobs`` answers; device and weights are the
    daemon's (fixed when it starts)."""
    limits = d.config.limits
    data = load_json(raw, "settings", limits) if raw is not None and raw.strip() else {}
    if not isinstance(data, dict):
        raise ApiError(422, "settings: must be a JSON object of setting names and values", option="settings")
    try:
        engine, _document, _extra = settings_from_mapping(data, base=d.base_settings)
    except SettingsError as exc:
        raise settings_error(exc, data, limits) from None
    for option in FIXED_BY_DAEMON:
        value = getattr(engine, option)
        if value != getattr(d.base_settings, option) and not (option == "device" and value == SERVICE.device):
            raise ApiError(422, f"{option}: fixed when the daemon starts ({getattr(d.base_settings, option)!r}); "
                                f"restart it with --{option} to change it", option=option)
        engine = dataclasses.replace(engine, **{option: getattr(d.base_settings, option)})
    return engine


def _image(what: str, name: str, fh: Any, long_side: int, d: Daemon) -> PreviewImage:
    """Probe one image from its header (413 over max_pixels, 422 unreadable), as jobs do; nothing decoded."""
    shape = probe_stream(fh, what, d.config.limits)
    jpeg = fh.read(3) == JPEG_MAGIC
    fh.seek(0)
    return PreviewImage(what, name, fh, shape, long_side, jpeg)


def _check_costs(images: list[PreviewImage], d: Daemon) -> None:
    """Refuse, before decoding anything, what would take too much memory (max_job_memory, like jobs) or
    too long to decode for a quick preview (PREVIEW.max_decode_pixels)."""
    budget = int(d.config.limits.max_job_memory or default_job_memory())
    estimate = preview_memory(images)
    if estimate > budget:
        big = max(images, key=lambda i: i.memory)
        raise over_memory(f"this preview ({big.what}: {big.shape.width}x{big.shape.height}, decoded at full size) "
                          "would need", estimate, budget, "scale the image down (or send a JPEG, which decodes "
                          "reduced)")
    for image in images:
        if image.decoded_pixels > PREVIEW.max_decode_pixels:
            w, h = image.shape.width, image.shape.height
            raise ApiError(413, f"{image.what}: {w}x{h} is {w * h:,} pixels, over the limit of "
                                f"{PREVIEW.max_decode_pixels:,} a quick preview decodes (max_preview_pixels); "
                                "send a smaller copy (or a JPEG, which decodes reduced), or run a job",
                           limit="max_preview_pixels", value=w * h)


@router.post("/v1/previews", summary="Previews of styles on a photo: instant, or a small real Gatys run "
                                    "(never waits behind jobs)")
async def make_previews(
    request: Request,
    d: DaemonDep,
    content: Annotated[UploadFile, File(description="the photo: PNG/TIFF/JPEG/WebP")],
    styles: Annotated[list[str] | None, Form(description="library style names (repeatable)")] = None,
    style_files: Annotated[list[UploadFile] | None, File(description="uploaded style images (repeatable)")] = None,
    size: Annotated[int | None, Form(ge=MIN_SIZE, le=MAX_SIZE, description=(
        f"long side of the previews in pixels (never more than the photo's); default {DEFAULT_SIZE} (instant), "
        f"{PREVIEW.faithful_size} (faithful, at most {preview_faithful.MAX_SIZE})"))] = None,
    method: Annotated[str, Form(description="'instant' (the fast network, default) or 'faithful' (a small real "
                                            "Gatys run with the job's settings; items' method 'gatys')")] = "instant",
    settings: Annotated[str | None, Form(description="faithful: JSON object of the job's settings (as a job's "
                                                     "'settings'), e.g. {\"style_strength\": 0.5}")] = None,
) -> Response:
    if method not in METHODS:
        raise ApiError(422, f"method: {method[:40]!r} is not one of {', '.join(METHODS)}", option="method")
    faithful = method == "faithful"
    engine = preview_settings(settings, d)
    if size is None:
        size = PREVIEW.faithful_size if faithful else DEFAULT_SIZE
    elif faithful and size > preview_faithful.MAX_SIZE:
        raise ApiError(422, f"size: {size} px is over the limit of {preview_faithful.MAX_SIZE} px of a faithful "
                            "preview (a small real run); ask for a smaller size, or run a job", option="size",
                       limit="size.maximum", value=size, maximum=preview_faithful.MAX_SIZE)
    opened: list[Any] = []          # library files, open from the check to the decoding: the same file
    future = None
    cancel = None
    try:
        load = await run_in_threadpool(_prepare, d, content, styles, style_files, size, opened)
        if faithful:
            from ...engine.types import CancelToken
            cancel = CancelToken()
        try:
            future = d.previews.submit(load, size, method=method, settings=engine, cancel=cancel)
        except PreviewBusy:
            raise ApiError(429, "the daemon is busy with other previews; try again in a moment",
                           limit="max_waiting_previews") from None
        waiting = asyncio.wrap_future(future)
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_S)
            if done:
                break
            if cancel is not None and not cancel.cancelled and await request.is_disconnected():
                cancel.cancel()        # nobody will read the answer: stop the run, skip the rest
        try:
            rendered = waiting.result()
        except PreviewModelError as exc:
            raise ApiError(503, f"previews are not available on this daemon: {exc}") from None
    finally:
        if future is not None and not future.done():
            if cancel is not None:
                cancel.cancel()
            await asyncio.wrap_future(future)    # the worker still reads the uploads: close them after it
        for fh in opened:
            fh.close()
    return json_response({"previews": [_answer(p) for p in rendered]})


def _prepare(d: Daemon, content: UploadFile, styles: list[str] | None, style_files: list[UploadFile] | None,
             size: int, opened: list[Any]) -> Any:
    """In a thread (file reads): the request's images checked from their headers (413/422 as jobs), and the
    function the preview worker calls to decode them. Library files opened here are added to ``opened``."""
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
    photo = _image("content", name_from_filename(content.filename, "image"), content.file, size, d)
    chosen: list[PreviewImage] = []
    for name in names:
        try:
            entry, fh = d.library.open(name)
        except LibraryError as exc:
            raise ApiError(422, f"unknown style {name!r}: not in the library (GET /v1/styles lists them)"
                           if exc.status == 404 else str(exc), style=name) from None
        opened.append(fh)
        chosen.append(_image(f"style {name!r}", entry.name, fh, STYLE_SIDE, d))
    for upload in files:
        chosen.append(_image(f"style file {upload.filename!r}", name_from_filename(upload.filename),
                             upload.file, STYLE_SIDE, d))
    _check_costs([photo, *chosen], d)

    def decode(image: PreviewImage) -> Picture:
        try:
            return decode_reduced(image, limits.max_pixels)
        except ImageError as exc:
            raise ApiError(422, f"{image.what}: {strip_label(str(exc))}") from None
        except MemoryError:
            raise ApiError(413, f"{image.what}: not enough memory to decode it; scale it down first") from None
        except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError...
            raise ApiError(422, f"{image.what}: cannot read the image ({type(exc).__name__}: "
                                f"{str(exc)[:120]}); the file may be truncated or damaged, export it again"
                           ) from None

    def load() -> tuple[Picture, list[tuple[str, Any]]]:
        """In the preview worker: the photo now, each style when its turn comes (within the time budget)."""
        return decode(photo), [(image.name, lambda image=image: decode(image)) for image in chosen]

    return load


def _answer(item: Any) -> dict[str, Any]:
    if isinstance(item, SkippedPreview):
        return {"style": item.style_name, "label": item.label, "skipped": True, "reason": item.reason,
                "error": item.message, "width": None, "height": None, "method": None, "seconds": None,
                "media_type": None, "png_base64": None}
    return {"style": item.style_name, "label": item.label, "skipped": False, "width": item.picture.width,
            "height": item.picture.height, "method": item.method, "seconds": round(item.seconds, 3),
            "media_type": "image/png",
            "png_base64": base64.b64encode(encode_png(item.picture, compress_level=PREVIEW_PNG_LEVEL)).decode("ascii")}
