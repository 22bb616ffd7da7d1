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
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from fastapi import UploadFile
from fastapi.responses import Response

from ..imaging import ImageError, Picture, load_image, probe
from ..imaging.probe import ProbeError, TooManyPixels
from ..job import LimitError, limit_error
from ..settings import DocumentSettings, Limits, Settings, SettingsError
from ..settings_parse import JsonLimitError, load_settings_json, normalise_keys
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


COPY_CHUNK = 1 << 20                        # bytes copied at a time from an upload to the data folder


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


def probe_file(path: Path, what: str, limits: Limits) -> ImageShape:
    """What a file's header says (size, alpha, depth), without decoding: 413 over ``max_pixels``,
    422 when it is no image or visibly cut short. Damage deeper inside shows when the job starts."""
    with open(path, "rb") as fh:
        return probe_stream(fh, what, limits)


def probe_stream(fh: BinaryIO, what: str, limits: Limits) -> ImageShape:
    """:func:`probe_file` for an open file (an upload's spooled file, a library style opened once): the
    checks jobs and previews share, on :func:`bridge.imaging.probe`. The file is left open, at its start."""
    try:
        info = probe(fh)
    except TooManyPixels as exc:
        raise _too_many_pixels(what, exc.pixels if exc.pixels is not None else limits.max_pixels + 1, limits) from None
    except ProbeError as exc:
        if exc.reason == "empty":
            raise ApiError(422, f"{what}: the uploaded file is empty") from None
        raise ApiError(422, f"{what}: {exc}") from None
    if info.kind == "png" and 0 < info.pixels <= limits.max_pixels and not info.complete:
        raise ApiError(422, f"{what}: the PNG is truncated (it ends before its last chunk); export it again")
    if info.width <= 0 or info.height <= 0:
        raise ApiError(422, f"{what}: the image has no pixels ({info.width}x{info.height}); export it again")
    if info.pixels > limits.max_pixels:
        raise _too_many_pixels(what, (info.width, info.height), limits)
    return ImageShape(info.width, info.height, alpha=info.alpha, bit_depth=info.bit_depth, file_bytes=info.file_bytes)


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
    try:
        info = probe(io.BytesIO(data))
    except TooManyPixels as exc:
        if exc.pixels is not None and exc.pixels > limits.max_pixels:
            raise _too_many_pixels(what, exc.pixels, limits) from None
    except ImageError:
        pass                                 # the decoder below says what is wrong
    else:
        if info.pixels > limits.max_pixels:
            raise _too_many_pixels(what, (info.width, info.height), limits)
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
