"""HTTP pieces the routes share: errors as ``{"error": ...}``, JSON answers, uploads stored and probed.

Uploads are copied to disk piece by piece and their headers read without decoding (the pixel limit is
checked before any decoder allocates); images are decoded by :mod:`bridge.imaging`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from fastapi import UploadFile
from fastapi.responses import Response
from PIL import Image, UnidentifiedImageError

from ..imaging import SUPPORTED, ImageError, Picture, load_image
from ..job import LimitError, limit_error
from ..settings import DocumentSettings, JsonLimitError, Limits, Settings, SettingsError, load_settings_json, \
    normalise_keys
from .memory import ImageShape

PNG = "image/png"


class ApiError(Exception):
    """An error answered as ``{"error": message, ...extra}`` with an HTTP status."""

    def __init__(self, code: int, message: str, **extra: Any) -> None:
        self.status = code
        self.message = message
        self.extra = extra
        super().__init__(message)



def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _clean_floats(value: Any) -> Any:
    """NaN/inf are not JSON: send them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_floats(v) for v in value]
    return value


def json_response(payload: Any, status: int = 200) -> Response:
    body = json.dumps(_clean_floats(json.loads(json.dumps(payload, default=_json_default))))
    return Response(body, status_code=status, media_type="application/json")


def form_limits(limits: Limits) -> dict[str, int]:
    """The multipart parser's caps on one request. Files under 1 MB stay in memory while the form is
    parsed, so their number is bounded: content, mask and styles, with room enough that a few styles
    too many still get max_styles's 422 with its value."""
    return {"max_files": 4 * limits.max_styles, "max_fields": 4 * limits.max_styles + 16}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COPY_CHUNK = 1 << 20                        # bytes copied at a time from an upload to the data folder
MAX_PNG_CHUNKS = 1_000_000                  # chunk headers walked to find IEND (the decoder checks the rest)


def _bomb_pixels(exc: Exception) -> int | None:
    """Pillow's decompression-bomb message carries the pixel count: 'Image size (N pixels) exceeds...'."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    return int(match.group(1)) if match else None


def _probe_pixels(data: bytes) -> tuple[int, int] | int | None:
    """Width and height from the header only (PNG IHDR or Pillow's lazy open); the pixel count
    alone when Pillow refused it as a bomb; None if unknown."""
    if data[:8] == PNG_SIGNATURE and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError as exc:
        return _bomb_pixels(exc)
    except Exception:  # noqa: BLE001 - the real decoder gives the message
        return None


def _too_many_pixels(what: str, size: tuple[int, int] | int, limits: Limits) -> ApiError:
    value = size if isinstance(size, int) else size[0] * size[1]
    dims = "" if isinstance(size, int) else f"{size[0]}x{size[1]} is "
    return ApiError(413, f"{what}: {dims}{value:,} pixels, over the daemon's limit of {limits.max_pixels:,} "
                         "(max_pixels); scale it down first", limit="max_pixels", value=value)


def save_upload(upload: UploadFile, folder: Path, stem: str, what: str) -> Path:
    """Copy an upload into the job's folder piece by piece, complete or not at all.

    Starlette spooled the part to a temporary file while the body streamed in (the Guard stops the
    body at ``max_upload_bytes``); here it moves on in 1 MB pieces, so no upload is ever whole in
    memory. A full disk -> 507."""
    target = folder / stem
    part = folder / f".{stem}.part"
    size = 0
    try:
        upload.file.seek(0)
        with open(part, "wb") as out:
            while chunk := upload.file.read(COPY_CHUNK):
                out.write(chunk)
                size += len(chunk)
        if size == 0:
            raise ApiError(422, f"{what}: the uploaded file is empty")
        os.replace(part, target)
    except OSError as exc:
        raise ApiError(507, f"{what}: cannot store the upload in the daemon's data folder "
                            f"({exc.strerror or exc}); free some disk space and submit again") from None
    finally:
        part.unlink(missing_ok=True)
    return target


def _png_chunk_types(fh: BinaryIO, size: int) -> set[bytes] | None:
    """The chunk types of a PNG, read from the chunk headers alone; None when they do not lead to
    IEND within the file (a cut upload). Only the first MAX_PNG_CHUNKS are walked."""
    types: set[bytes] = set()
    pos = 8
    for _ in range(MAX_PNG_CHUNKS):
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            return None
        pos += 12 + int.from_bytes(head[:4], "big")
        if pos > size:
            return None
        types.add(head[4:8])
        if head[4:8] == b"IEND":
            break
    return types


def probe_file(path: Path, what: str, limits: Limits) -> ImageShape:
    """What a file's header says (size, alpha, depth), without decoding: 413 over ``max_pixels``,
    422 when it is no image or visibly cut short. Damage deeper inside shows when the job starts."""
    with open(path, "rb") as fh:
        return probe_stream(fh, what, limits)


def probe_stream(fh: BinaryIO, what: str, limits: Limits) -> ImageShape:
    """:func:`probe_file` for an open file (an upload's spooled file, a library style opened once): the
    checks jobs and previews share. The file is left open, at its start."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    head = fh.read(32)
    damaged = ApiError(422, f"{what}: cannot read the image; the file may be truncated or damaged, export it again")
    if size == 0:
        raise ApiError(422, f"{what}: the uploaded file is empty")
    if head[:8] == PNG_SIGNATURE and len(head) >= 26 and head[12:16] == b"IHDR":
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        types: set[bytes] | None = set()
        if 0 < width * height <= limits.max_pixels:
            types = _png_chunk_types(fh, size)
            if types is None:
                raise ApiError(422, f"{what}: the PNG is truncated (it ends before its last chunk); export it again")
        shape = ImageShape(width, height, alpha=head[25] in (4, 6) or b"tRNS" in types,
                           bit_depth=16 if head[24] == 16 else 8, file_bytes=size)
    else:
        try:
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(fh) as im:
                    bands = im.getbands()
                    bits = im.tag_v2.get(258, (8,)) if im.format == "TIFF" else (8,)
                    deep = im.mode.startswith("I") or im.mode == "F" or max(tuple(bits) or (8,)) > 8
                    shape = ImageShape(im.size[0], im.size[1], alpha="A" in bands or "transparency" in im.info,
                                       bit_depth=16 if deep else 8, file_bytes=size)
        except Image.DecompressionBombError as exc:
            pixels = _bomb_pixels(exc)
            raise _too_many_pixels(what, pixels if pixels is not None else limits.max_pixels + 1, limits) from None
        except UnidentifiedImageError:
            raise ApiError(422, f"{what}: not an image file this program can read "
                                f"({SUPPORTED} are supported)") from None
        except Exception:  # noqa: BLE001 - any decoder complaint about the header
            raise damaged from None
    fh.seek(0)
    if shape.width <= 0 or shape.height <= 0:
        raise ApiError(422, f"{what}: the image has no pixels ({shape.width}x{shape.height}); export it again")
    if shape.pixels > limits.max_pixels:
        raise _too_many_pixels(what, (shape.width, shape.height), limits)
    return shape


def over_memory(needs: str, estimate: int, budget: int, advice: str) -> ApiError:
    """The 413 for a request whose memory estimate (from headers) is over ``max_job_memory``: one wording
    and the same ``limit``/``value`` fields for every route that checks it (``needs``: "this preview would
    need" ...; ``advice``: what to change)."""
    return ApiError(413, f"{needs} about {gib(estimate)} of memory, over the daemon's limit of {gib(budget)} per job "
                         f"(max_job_memory): {advice}, or start the daemon with a larger --max-job-memory-mb",
                    limit="max_job_memory", value=estimate)


def gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MB"


def read_upload(upload: UploadFile, what: str) -> bytes:
    upload.file.seek(0)
    data = upload.file.read()
    if not data:
        raise ApiError(422, f"{what}: the uploaded file is empty")
    return data


def decode_upload(data: bytes, what: str, limits: Limits, name: str | None = None) -> Picture:
    """Decode an uploaded image; pixel limit -> 413, anything unreadable -> 422 with imaging's message."""
    size = _probe_pixels(data)
    if size is not None and (size if isinstance(size, int) else size[0] * size[1]) > limits.max_pixels:
        raise _too_many_pixels(what, size, limits)
    try:
        return load_image(data, max_pixels=limits.max_pixels, name=name)
    except ImageError as exc:
        raise ApiError(422, f"{what}: {strip_label(str(exc))}") from None


def strip_label(message: str) -> str:
    return message[len("upload: "):] if message.startswith("upload: ") else message


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def run_name(name: str | None) -> str | None:
    if name is None:
        return None
    name = _CONTROL.sub(" ", str(name)).strip()
    if len(name) > 120:
        raise ApiError(422, "name: at most 120 characters")
    return name or None

def load_json(text: str, option: str, limits: Limits) -> Any:
    """The guarded JSON parser (size, nesting, digits) with its errors as 4xx."""
    try:
        return load_settings_json(text, option=option, limits=limits)
    except SettingsError as exc:
        raise settings_error(exc, None, limits) from None


def settings_error(exc: SettingsError, raw: Any, limits: Limits) -> ApiError:
    """4xx for a bad setting: a :class:`LimitError` with its status, ``limit`` and ``value``; a value the parse
    refused that is also over the daemon's own limit names that limit; one outside a field's range gets
    ``<option>.maximum``/``.minimum``."""
    extra: dict[str, Any] = {"option": exc.option}
    if isinstance(exc, (JsonLimitError, LimitError)):
        extra.update(limit=exc.limit, value=exc.value)
        status = exc.status if isinstance(exc, LimitError) else 413 if exc.limit == "max_settings_bytes" else 422
        return ApiError(status, str(exc), **extra)
    value = None
    if isinstance(raw, dict):
        try:
            value = normalise_keys(raw).get(exc.option)
        except SettingsError:
            value = None
    over = limit_error(exc.option, value, limits)
    if over is not None:
        return settings_error(over, None, limits)
    meta = next((f.metadata for cls in (Settings, DocumentSettings) for f in dataclasses.fields(cls)
                 if f.name == exc.option), None)
    if meta and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if meta.get("max") is not None and value > meta["max"]:
            extra.update(limit=f"{exc.option}.maximum", value=value, maximum=meta["max"])
        elif meta.get("min") is not None and value < meta["min"]:
            extra.update(limit=f"{exc.option}.minimum", value=value, minimum=meta["min"])
    return ApiError(422, str(exc), **extra)
