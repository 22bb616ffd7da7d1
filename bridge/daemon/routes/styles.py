"""``/v1/styles``: the style library (list, thumbnails, add, remove)."""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Any, Callable, Iterator

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response, StreamingResponse

from ...imaging import ImageError
from ..context import DaemonDep
from ..library import LibraryError, check_name, name_from_filename
from ..web import PNG, ApiError, decode_upload, json_response, read_upload, strip_label

router = APIRouter(tags=["styles"])
CHUNK = 1 << 20


def _style_json(entry: Any) -> dict[str, Any]:
    path = f"/v1/styles/{urllib.parse.quote(entry.name, safe='')}"
    return {"name": entry.name, "width": entry.width, "height": entry.height, "bytes": entry.bytes,
            "thumbnail_url": f"{path}/thumbnail.png", "image_url": f"{path}/image"}


def _library_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A library call with its errors as the HTTP answer (404 unknown, 409 exists, 422 bad image)."""
    try:
        return fn(*args, **kwargs)
    except LibraryError as exc:
        raise ApiError(exc.status, str(exc)) from None
    except ImageError as exc:
        raise ApiError(422, strip_label(str(exc))) from None


@router.get("/v1/styles", summary="The style library")
def list_styles(d: DaemonDep) -> Response:
    return json_response({"styles": [_style_json(e) for e in d.library.list()]})


@router.get("/v1/styles/{name}/thumbnail.png", summary="A small PNG of a library style",
            response_class=Response, responses={200: {"content": {PNG: {}}}})
def style_thumbnail(name: str, d: DaemonDep) -> Response:
    return Response(_library_call(d.library.thumbnail, name), media_type=PNG)


@router.get("/v1/styles/{name}/image", summary="The library style's image file as stored",
            response_class=Response)
def style_image(name: str, d: DaemonDep) -> Response:
    entry, fh = _library_call(d.library.open, name)

    def chunks() -> Iterator[bytes]:
        """The very file the library checked (never the path again: it may have become a link meanwhile)."""
        left = entry.bytes                  # as checked: a file growing meanwhile does not break Content-Length
        with fh:
            while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk

    return StreamingResponse(chunks(), media_type=entry.media_type,
                             headers={"Content-Length": str(entry.bytes)})


@router.post("/v1/styles", status_code=201, summary="Add a style image to the library")
def add_style(d: DaemonDep, image: Annotated[UploadFile, File(description="the style image")],
              name: Annotated[str | None, Form(description="library name; default: the file's name")] = None,
              replace_existing: Annotated[bool, Form(alias="replace")] = False) -> Response:
    style_name = name if name is not None else name_from_filename(image.filename)
    _library_call(check_name, style_name)
    with d.style_upload_lock:     # the check decodes the whole image: one at a time bounds the memory
        data = read_upload(image, "image")
        decode_upload(data, "image", d.config.limits, name=style_name)   # 413 for too many pixels, like jobs
        entry = _library_call(d.library.add, style_name, data, replace=replace_existing)
        del data
    return json_response(_style_json(entry), 201)


@router.delete("/v1/styles/{name}", status_code=204, summary="Remove a style from the library",
               response_class=Response)
def remove_style(name: str, d: DaemonDep) -> Response:
    _library_call(d.library.remove, name)
    return Response(status_code=204)
