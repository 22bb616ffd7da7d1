"""The daemon's HTTP API (docs/protocol.md) as a FastAPI application.

Routes only translate HTTP to the job manager and the style library and back; every default and
validation rule comes from :mod:`bridge.settings`, images are decoded by :mod:`bridge.imaging`,
and the :class:`~bridge.daemon.security.Guard` has already checked Origin, Host, token and body
size before a route runs. Routes are plain ``def`` so FastAPI runs them in its thread pool:
decoding and encoding big images never blocks the event loop.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shutil
import threading
import time
import urllib.parse
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..document.model import Group
from ..imaging import SUPPORTED, ImageError, Picture, load_image
from ..job import FIXED_BY_DAEMON, PROTOCOL_VERSION, JobSpec, LimitError, Source, check, limit_error, mask_word
from ..settings import DEFAULTS, LIMITS, SERVICE, DocumentSettings, JsonLimitError, Limits, Settings, SettingsError, \
    load_settings_json, normalise_keys, settings_from_mapping
from .jobs import ImageShape, Job, JobFiles, JobManager, QueueFull, Runner, default_job_memory, \
    estimate_job_memory, iter_array_png, run_engine
from .library import LibraryError, StyleLibrary, check_name, name_from_filename
from .security import Guard, allowed_host_names

PNG = "image/png"


class ApiError(Exception):
    """An error answered as ``{"error": message, ...extra}`` with an HTTP status."""

    def __init__(self, code: int, message: str, **extra: Any) -> None:
        self.status = code
        self.message = message
        self.extra = extra
        super().__init__(message)


@dataclass
class DaemonConfig:
    """How one daemon runs; built by ``stylebridge serve`` from its options."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    device: str = "cpu"                    # already resolved (cpu, cuda, mps)
    weights: str = DEFAULTS.weights
    weights_path: str | None = None
    preset: str | None = None              # default preset for jobs that name none
    retention_s: float = 3600.0
    limits: Limits = field(default_factory=lambda: LIMITS)
    extra_hosts: tuple[str, ...] = ()
    png_level: int | None = None           # zlib level of layer PNGs; None = per layer (0 or 1)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

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


def _save_upload(upload: UploadFile, folder: Path, stem: str, what: str) -> Path:
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


def _png_chunk_types(path: Path, size: int) -> set[bytes] | None:
    """The chunk types of a PNG, read from the chunk headers alone; None when they do not lead to
    IEND within the file (a cut upload). Only the first MAX_PNG_CHUNKS are walked."""
    types: set[bytes] = set()
    with open(path, "rb") as fh:
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


def _probe_file(path: Path, what: str, limits: Limits) -> ImageShape:
    """What a file's header says (size, alpha, depth), without decoding: 413 over ``max_pixels``,
    422 when it is no image or visibly cut short. Damage deeper inside shows when the job starts."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(32)
    damaged = ApiError(422, f"{what}: cannot read the image; the file may be truncated or damaged, export it again")
    if head[:8] == PNG_SIGNATURE and len(head) >= 26 and head[12:16] == b"IHDR":
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        types: set[bytes] | None = set()
        if 0 < width * height <= limits.max_pixels:
            types = _png_chunk_types(path, size)
            if types is None:
                raise ApiError(422, f"{what}: the PNG is truncated (it ends before its last chunk); export it again")
        shape = ImageShape(width, height, alpha=head[25] in (4, 6) or b"tRNS" in types,
                           bit_depth=16 if head[24] == 16 else 8, file_bytes=size)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as im:
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
    if shape.width <= 0 or shape.height <= 0:
        raise ApiError(422, f"{what}: the image has no pixels ({shape.width}x{shape.height}); export it again")
    if shape.pixels > limits.max_pixels:
        raise _too_many_pixels(what, (shape.width, shape.height), limits)
    return shape


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:.1f} GB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MB"


def _read_upload(upload: UploadFile, what: str) -> bytes:
    upload.file.seek(0)
    data = upload.file.read()
    if not data:
        raise ApiError(422, f"{what}: the uploaded file is empty")
    return data


def _decode(data: bytes, what: str, limits: Limits, name: str | None = None) -> Picture:
    """Decode an uploaded image; pixel limit -> 413, anything unreadable -> 422 with imaging's message."""
    size = _probe_pixels(data)
    if size is not None and (size if isinstance(size, int) else size[0] * size[1]) > limits.max_pixels:
        raise _too_many_pixels(what, size, limits)
    try:
        return load_image(data, max_pixels=limits.max_pixels, name=name)
    except ImageError as exc:
        raise ApiError(422, f"{what}: {_strip_label(str(exc))}") from None


def _strip_label(message: str) -> str:
    return message[len("upload: "):] if message.startswith("upload: ") else message


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _run_name(name: str | None) -> str | None:
    if name is None:
        return None
    name = _CONTROL.sub(" ", str(name)).strip()
    if len(name) > 120:
        raise ApiError(422, "name: at most 120 characters")
    return name or None


def _style_json(entry: Any) -> dict[str, Any]:
    path = f"/v1/styles/{urllib.parse.quote(entry.name, safe='')}"
    return {"name": entry.name, "width": entry.width, "height": entry.height, "bytes": entry.bytes,
            "thumbnail_url": f"{path}/thumbnail.png", "image_url": f"{path}/image"}


#: Added to the answer of a job sent with protocol 1's fields.
LEGACY_NOTE = ("the fields styles, settings, mask_mode and name are protocol 1 and work for one more release; "
               "send the job as one 'job' field (protocol 2, docs/protocol.md)")
LEGACY_EXTRA = ("mask_mode", "name")      # protocol 1 also took these inside its settings JSON


def _load_json(text: str, option: str, limits: Limits) -> Any:
    """The guarded JSON parser (size, nesting, digits) with its errors as 4xx."""
    try:
        return load_settings_json(text, option=option, limits=limits)
    except SettingsError as exc:
        raise _settings_error(exc, None, limits) from None


def legacy_job(names: list[str], uploads: int, settings: str | None, mask_mode: str | None, name: str | None,
               has_mask: bool, limits: Limits) -> dict[str, Any]:
    """Protocol 1's fields as the job JSON of protocol 2, so both go through one parse (JobSpec.from_json).

    Library names come first, then the uploads, as protocol 1 ordered them; ``mask_mode`` first|all|none is
    the job's ``reveal``, ``mask`` (or a mask without a mode) uses the uploaded mask for every style.
    """
    raw = _load_json(settings or "{}", "settings", limits)
    if not isinstance(raw, dict):
        raise ApiError(422, "settings: must be a JSON object", option="settings")
    options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        word = str(key).replace("-", "_")
        (extra if word in LEGACY_EXTRA else options)[key if word not in LEGACY_EXTRA else word] = value
    mode = mask_mode if mask_mode is not None else extra.get("mask_mode")
    run_name = name if name is not None else extra.get("name")
    if run_name is not None and not isinstance(run_name, str):
        raise ApiError(422, "name: must be text", option="name")
    job: dict[str, Any] = {"protocol": 1, "settings": options,
                           "styles": [{"library": n.strip()} for n in names if n is not None and str(n).strip()]
                           + [{"upload": i} for i in range(uploads)]}
    if mode is not None:
        if mode == "mask":
            if not has_mask:
                raise ApiError(422, "mask_mode 'mask' needs a mask file", option="mask_mode")
            job["mask"] = {"upload": 0}
        else:
            try:
                options["reveal"] = mask_word(mode) if isinstance(mode, str) else mask_word("?")
            except SettingsError:
                raise ApiError(422, f"mask_mode: {str(mode)[:40]!r} is not one of first, all, none, mask",
                               option="mask_mode") from None
    elif has_mask:
        job["mask"] = {"upload": 0}
    if run_name:
        job["name"] = run_name
    return job


def _parse_job(data: Any, base: Settings, limits: Limits) -> JobSpec:
    """The one parse (JobSpec.from_json on the daemon's defaults), then what the daemon fixes at start."""
    try:
        spec = JobSpec.from_json(data, base=base)
    except SettingsError as exc:
        raw = data.get("settings") if isinstance(data, dict) else None
        raise _settings_error(exc, raw, limits) from None
    for option in FIXED_BY_DAEMON:
        if option not in spec.options:
            continue
        value = getattr(spec.settings, option)
        if option == "device" and value == SERVICE.device:      # 'auto' means: whatever the daemon uses
            spec = dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, device=base.device))
        elif value != getattr(base, option):
            raise ApiError(422, f"{option}: fixed when the daemon starts ({getattr(base, option)!r}); "
                                f"restart it with --{option} to change it", option=option)
    return spec


def _named(source: Source, files: list[UploadFile]) -> Source:
    """An uploaded style without a name is named after its file (protocol 1 did the same)."""
    if source.upload is None or source.name or not 0 <= source.upload < len(files):
        return source
    return dataclasses.replace(source, name=name_from_filename(files[source.upload].filename))


def _check_uploads(spec: JobSpec, styles: int, mask: bool, style_masks: int) -> None:
    """Every ``{"upload": i}`` of the job names a file that came with it; masks are uploads only."""
    for source in spec.styles:
        if source.upload is not None and source.upload >= styles:
            raise ApiError(422, f"styles: upload {source.upload} named, but {styles} style_files were sent "
                                "(uploads count from 0)", option="styles")
    if spec.mask is not None:
        if spec.mask.upload != 0:
            raise ApiError(422, "mask: the mask is an upload: {\"upload\": 0} with the file in 'mask'", option="mask")
        if not mask:
            raise ApiError(422, "mask: the job names a mask but no 'mask' file was sent", option="mask")
    for style, source in spec.style_masks:
        if source.upload is None:
            raise ApiError(422, f"style_masks: the mask of {style!r} must be an upload ({{\"upload\": i}} with "
                                "the i-th 'style_mask_files')", option="style_masks")
        if source.upload >= style_masks:
            raise ApiError(422, f"style_masks: upload {source.upload} named for {style!r}, but {style_masks} "
                                "style_mask_files were sent (uploads count from 0)", option="style_masks")


def _settings_error(exc: SettingsError, raw: Any, limits: Limits) -> ApiError:
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
        return _settings_error(over, None, limits)
    meta = next((f.metadata for cls in (Settings, DocumentSettings) for f in dataclasses.fields(cls)
                 if f.name == exc.option), None)
    if meta and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if meta.get("max") is not None and value > meta["max"]:
            extra.update(limit=f"{exc.option}.maximum", value=value, maximum=meta["max"])
        elif meta.get("min") is not None and value < meta["min"]:
            extra.update(limit=f"{exc.option}.minimum", value=value, minimum=meta["min"])
    return ApiError(422, str(exc), **extra)


# ------------------------------------------------------------------------------------------------
# the application
# ------------------------------------------------------------------------------------------------

def create_app(config: DaemonConfig, runner: Runner = run_engine) -> FastAPI:
    """The FastAPI app for ``config``; its lifespan starts and stops the engine worker."""
    data_dir = Path(config.data_dir)
    if config.limits.max_job_memory is None:    # half the machine's RAM, found once
        config.limits = replace(config.limits, max_job_memory=default_job_memory())
    library = StyleLibrary(data_dir / "styles", max_pixels=config.limits.max_pixels)
    manager = JobManager(runner, data_dir / "jobs", retention_s=config.retention_s,
                         memory_budget=config.limits.memory_budget)
    base_values: dict[str, Any] = {"device": config.device, "weights": config.weights}
    if config.preset:
        base_values["preset"] = config.preset
    base_settings, _, _ = settings_from_mapping(base_values)
    started = time.time()
    style_upload_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.start()
        try:
            yield
        finally:
            manager.stop()

    app = FastAPI(title="stylebridge daemon", version=__version__, lifespan=lifespan,
                  description="Gatys neural style transfer for image editors. See docs/protocol.md.",
                  docs_url=None, redoc_url=None, form_limits=form_limits(config.limits))
    app.state.config = config
    app.state.manager = manager
    app.state.library = library
    app.add_middleware(Guard, token=config.token,
                       allowed_hosts=allowed_host_names(config.host, config.extra_hosts),
                       max_body=config.limits.max_upload_bytes)

    # -- errors as {"error": ...} ----------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return json_response({"error": exc.message, **exc.extra}, exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        payload: dict[str, Any] = {"error": str(exc.detail)}
        if exc.status_code == 413:
            payload = {"error": f"the request body is over the limit of {config.limits.max_upload_bytes:,} bytes",
                       "limit": "max_upload_bytes", "value": None}
        elif exc.status_code == 404 and exc.detail == "Not Found":
            payload["error"] = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 400 and str(exc.detail).startswith("Too many "):   # the multipart parser's caps
            kind = "files" if "files" in str(exc.detail) else "fields"
            limit = form_limits(config.limits)[f"max_{kind}"]
            return JSONResponse({"error": f"too many {kind} in one request: at most {limit} (max_form_{kind}); "
                                          f"a job takes a content, a mask and up to {config.limits.max_styles} styles",
                                 "limit": f"max_form_{kind}", "value": None}, 413)
        elif exc.status_code == 400 and "maximum size" in str(exc.detail):   # the multipart parser's cap
            return JSONResponse({"error": f"a form field (job, settings, name, styles) is over the multipart parser's "
                                          f"limit of 1 MB (max_form_field_bytes); job and settings JSON may be at most "
                                          f"{config.limits.max_settings_bytes:,} bytes",
                                 "limit": "max_form_field_bytes", "value": None}, 413)
        elif exc.status_code == 400:
            payload["error"] = f"malformed request: {exc.detail}"
        return JSONResponse(payload, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        extra: dict[str, Any] = {}
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
            bounds = err.get("ctx") or {}
            for key, side in (("le", "maximum"), ("lt", "maximum"), ("ge", "minimum"), ("gt", "minimum")):
                if key in bounds and not extra:     # a range limit (e.g. ?level=0..9): say which, and what came
                    extra = {"limit": f"{loc}.{side}", "value": err.get("input"), side: bounds[key]}
        return json_response({"error": "; ".join(parts) or "invalid request", **extra}, 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}: {exc})"}, 500)

    def _job(job_id: str) -> Job:
        job = manager.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} (finished jobs are kept {config.retention_s / 60:.0f} min)")
        return job

    def _result(job_id: str):
        job = _job(job_id)
        if job.result is None:
            if job.status in ("queued", "running"):
                raise ApiError(409, f"job {job_id} is {job.status}; the result is not ready yet",
                               status=job.status)
            raise ApiError(409 if job.status == "cancelled" else 422 if job.status == "failed" else 404,
                           f"job {job_id} has no result ({job.status}{': ' + job.error if job.error else ''})",
                           status=job.status)
        return job, job.result

    # -- health ----------------------------------------------------------------------------------
    @app.get("/v1/health", summary="Is the daemon up; device, weights, queue")
    def health() -> Response:
        limits = config.limits
        return json_response({
            "status": "ok", "version": __version__, "protocol": PROTOCOL_VERSION, "device": config.device, "weights": config.weights,
            "weights_path": config.weights_path, "queue": manager.counts(), "uptime_s": round(time.time() - started, 1),
            "token_required": config.token is not None, "preset": config.preset,
            "retention_s": config.retention_s,
            "limits": {"max_pixels": limits.max_pixels, "max_upload_bytes": limits.max_upload_bytes,
                       "max_styles": limits.max_styles, "max_iterations": limits.max_iterations,
                       "max_size": limits.max_size, "max_queued_jobs": limits.max_queued_jobs,
                       "max_job_memory": limits.max_job_memory, "memory_budget": limits.memory_budget,
                       "max_settings_bytes": limits.max_settings_bytes, "max_json_depth": limits.max_json_depth,
                       "max_json_digits": limits.max_json_digits},
        })

    # -- style library ---------------------------------------------------------------------------
    @app.get("/v1/styles", summary="The style library")
    def list_styles() -> Response:
        return json_response({"styles": [
            _style_json(e) for e in library.list()]})

    def _library_call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LibraryError as exc:
            raise ApiError(exc.status, str(exc)) from None
        except ImageError as exc:
            raise ApiError(422, _strip_label(str(exc))) from None

    @app.get("/v1/styles/{name}/thumbnail.png", summary="A small PNG of a library style",
             response_class=Response, responses={200: {"content": {PNG: {}}}})
    def style_thumbnail(name: str) -> Response:
        return Response(_library_call(library.thumbnail, name), media_type=PNG)

    @app.get("/v1/styles/{name}/image", summary="The library style's image file as stored",
             response_class=Response)
    def style_image(name: str) -> Response:
        path = _library_call(library.path, name)
        media = {".png": PNG, ".jpg": "image/jpeg", ".tif": "image/tiff", ".webp": "image/webp"}[path.suffix]
        return FileResponse(path, media_type=media)

    @app.post("/v1/styles", status_code=201, summary="Add a style image to the library")
    def add_style(image: Annotated[UploadFile, File(description="the style image")],
                  name: Annotated[str | None, Form(description="library name; default: the file's name")] = None,
                  replace_existing: Annotated[bool, Form(alias="replace")] = False) -> Response:
        style_name = name if name is not None else name_from_filename(image.filename)
        _library_call(check_name, style_name)
        with style_upload_lock:     # the check decodes the whole image: one at a time bounds the memory
            data = _read_upload(image, "image")
            _decode(data, "image", config.limits, name=style_name)   # 413 for too many pixels, like jobs
            entry = _library_call(library.add, style_name, data, replace=replace_existing)
            del data
        return json_response(_style_json(entry), 201)

    @app.delete("/v1/styles/{name}", status_code=204, summary="Remove a style from the library",
                response_class=Response)
    def remove_style(name: str) -> Response:
        _library_call(library.remove, name)
        return Response(status_code=204)

    # -- jobs ------------------------------------------------------------------------------------
    @app.post("/v1/jobs", status_code=202, summary="Submit a stylisation job")
    def submit_job(
        content: Annotated[UploadFile, File(description="the photo: PNG/TIFF/JPEG/WebP, 8/16-bit, alpha kept")],
        job: Annotated[str | None, Form(description="protocol 2: the job as JSON (bridge.job.JobSpec.to_json); "
                                                    "{\"upload\": i} names the i-th style_files / style_mask_files "
                                                    "upload, {\"upload\": 0} the mask")] = None,
        style_files: Annotated[list[UploadFile] | None, File(description="uploaded style images (repeatable)")] = None,
        mask: Annotated[UploadFile | None, File(description="grey PNG of the content's size")] = None,
        style_mask_files: Annotated[list[UploadFile] | None,
                                    File(description="protocol 2: grey PNGs named by the job's style_masks")] = None,
        styles: Annotated[list[str] | None, Form(description="deprecated (protocol 1): library style names",
                                                 deprecated=True)] = None,
        settings: Annotated[str | None, Form(description="deprecated (protocol 1): JSON object of settings",
                                             deprecated=True)] = None,
        mask_mode: Annotated[str | None, Form(description="deprecated (protocol 1): first|all|none|mask",
                                              deprecated=True)] = None,
        name: Annotated[str | None, Form(description="deprecated (protocol 1): run name", deprecated=True)] = None,
    ) -> Response:
        limits = config.limits
        files = [f for f in (style_files or []) if f is not None]
        mask_files = [f for f in (style_mask_files or []) if f is not None]
        notes: list[str] = []
        if job is not None:
            if styles or settings is not None or mask_mode is not None or name is not None:
                raise ApiError(422, "job: give the job in the 'job' field alone (styles, settings, mask_mode and "
                                    "name are protocol 1's fields)", option="job")
            data = _load_json(job, "job", limits)
        else:
            data = legacy_job(styles or [], len(files), settings, mask_mode, name, mask is not None, limits)
            notes.append(LEGACY_NOTE)
        spec = _parse_job(data, base_settings, limits)
        spec = dataclasses.replace(spec, styles=tuple(_named(s, files) for s in spec.styles),
                                   name=_run_name(spec.name), notes=(*notes, *spec.notes))
        try:
            check(spec, limits, over_http=True)
        except SettingsError as exc:
            raise _settings_error(exc, spec.options, limits) from None
        _check_uploads(spec, len(files), mask is not None, len(mask_files))
        waiting = manager.counts()["queued"]
        if waiting >= limits.max_queued_jobs:       # before storing anything; submit() checks again
            raise _queue_full(waiting)

        # The uploads go to disk in the job's own folder and wait there, undecoded, until the job starts.
        folder = manager.upload_folder()
        try:
            queued = _queue_job(folder, content, spec, files, mask, mask_files)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        answer = manager.status(queued)
        if spec.notes:
            answer["notes"] = list(spec.notes)
        return json_response(answer, 202)

    def _queue_full(waiting: int) -> ApiError:
        return ApiError(429, f"the daemon's queue is full: {waiting} jobs are waiting (limit "
                             f"{config.limits.max_queued_jobs}, max_queued_jobs); submit again when some have "
                             "finished, or cancel some (GET /v1/jobs lists them)",
                        limit="max_queued_jobs", value=waiting)

    def _queue_job(folder: Path, content: UploadFile, spec: JobSpec, files: list[UploadFile],
                   mask: UploadFile | None, mask_files: list[UploadFile]) -> Job:
        """Store and check the uploads (headers only), estimate the job's memory, queue it."""
        limits = config.limits
        content_path = _save_upload(content, folder, "content", "content")
        shape = _probe_file(content_path, "content", limits)
        style_paths: list[tuple[str, Path]] = []
        style_shapes: list[ImageShape] = []
        for i, (source, label) in enumerate(zip(spec.styles, spec.style_names)):
            if source.library is not None:
                try:
                    stored = library.path(source.library)
                except LibraryError as exc:
                    raise ApiError(422, f"unknown style {source.library!r}: not in the library (GET /v1/styles "
                                        "lists them)" if exc.status == 404 else str(exc), style=source.library) from None
                target = folder / f"style{i}{stored.suffix}"
                try:
                    os.link(stored, target)         # the library may change meanwhile; the link keeps this file
                except OSError:
                    shutil.copyfile(stored, target)
                style_shapes.append(_probe_file(target, f"style {source.library!r}", limits))
            else:
                upload = files[source.upload]
                what = f"style file {upload.filename!r}"
                target = _save_upload(upload, folder, f"style{i}", what)
                style_shapes.append(_probe_file(target, what, limits))
            style_paths.append((label, target))

        def stored_mask(upload: UploadFile, stem: str, what: str) -> tuple[Path, ImageShape]:
            path = _save_upload(upload, folder, stem, what)
            got = _probe_file(path, what, limits)
            if (got.width, got.height) != (shape.width, shape.height):
                raise ApiError(422, f"{what}: is {got.width}x{got.height} but the image is "
                                    f"{shape.width}x{shape.height}; export the mask at the image's size")
            return path, got

        mask_path = mask_shape = None
        if spec.mask is not None and mask is not None:
            mask_path, mask_shape = stored_mask(mask, "mask", "mask")
        style_masks = [(style, stored_mask(mask_files[src.upload], f"mask{i}", f"mask of style {style!r}")[0])
                       for i, (style, src) in enumerate(spec.style_masks)]
        engine, document = spec.settings, spec.document
        estimate = estimate_job_memory(shape, style_shapes, engine, document, mask=mask_shape,
                                       on_cpu=config.device == "cpu")
        estimate += len(style_masks) * shape.pixels * 2
        budget = int(limits.max_job_memory or default_job_memory())
        if estimate > budget:
            raise ApiError(413, f"this job would need about {_gib(estimate)} of memory ({shape.width}x{shape.height} "
                                f"photo, {len(style_paths)} style(s), working size {engine.size}), over the daemon's "
                                f"limit of {_gib(budget)} per job (max_job_memory): scale the photo down, use fewer "
                                "styles or a smaller size, or start the daemon with a larger --max-job-memory-mb",
                           limit="max_job_memory", value=estimate)
        request = JobFiles(folder=folder, content=content_path,
                           content_name=name_from_filename(content.filename, "image"), content_shape=shape,
                           styles=style_paths, settings=engine, document=document, mask=mask_path,
                           style_masks=style_masks, name=spec.name, estimate=estimate, max_pixels=limits.max_pixels)
        try:
            return manager.submit(request, max_queued=limits.max_queued_jobs)
        except QueueFull as exc:
            raise _queue_full(exc.waiting) from None

    @app.get("/v1/jobs", summary="All jobs the daemon holds (queued, running, kept)")
    def list_jobs() -> Response:
        return json_response({"jobs": [manager.status(j) for j in manager.jobs()]})

    @app.get("/v1/jobs/{job_id}", summary="Follow a job")
    def job_status(job_id: str) -> Response:
        return json_response(manager.status(_job(job_id)))

    @app.delete("/v1/jobs/{job_id}", status_code=204, response_class=Response,
                summary="Cancel a job if needed and drop it and its result now")
    def delete_job(job_id: str) -> Response:
        _job(job_id)
        manager.cancel(job_id)
        manager.forget(job_id)
        return Response(status_code=204)

    @app.get("/v1/jobs/{job_id}/preview", summary="PNG of the current state (404 until one exists)",
             response_class=Response, responses={200: {"content": {PNG: {}}}})
    def job_preview(job_id: str) -> Response:
        data = manager.preview_png(_job(job_id))
        if data is None:
            raise ApiError(404, "no preview yet")
        return Response(data, media_type=PNG, headers={"Cache-Control": "no-store"})

    @app.post("/v1/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
    def cancel_job(job_id: str, keep_result: Annotated[bool, Query()] = False) -> Response:
        _job(job_id)
        job = manager.cancel(job_id, keep_result=keep_result)
        if job is None:
            raise ApiError(404, f"no job {job_id!r}")
        return json_response(manager.status(job))

    @app.get("/v1/jobs/{job_id}/result", summary="The layer stack as JSON")
    def job_result(job_id: str) -> Response:
        job, result = _result(job_id)
        if result.json_cache is None:
            from ..document.stack import layer_records
            stack = result.stack
            base = f"/v1/jobs/{job.id}"
            layers = []
            for record in layer_records(stack):
                index = record["index"]
                record["image_url"] = f"{base}/layers/{index}/image.png" if record.pop("has_image") else None
                record["mask_url"] = f"{base}/layers/{index}/mask.png" if record.pop("has_mask") else None
                layers.append(record)
            result.json_cache = {
                "id": job.id, "width": stack.width, "height": stack.height, "depth": stack.depth,
                "name": stack.name, "partial": job.partial, "settings": result.settings,
                "working_size": stack.meta.get("working_size"), "seconds": stack.meta.get("seconds"),
                "timings": stack.meta.get("timings"),
                "dpi": list(stack.dpi) if stack.dpi else None, "has_icc": stack.icc_profile is not None,
                "psd_url": f"{base}/result.psd", "layers": layers,
            }
        return json_response(result.json_cache)

    def _item(job_id: str, index: int):
        job, result = _result(job_id)
        if not 0 <= index < len(result.items):
            raise ApiError(404, f"job {job_id} has no layer {index} (0..{len(result.items) - 1})")
        return job, result, result.items[index][0]

    @app.get("/v1/jobs/{job_id}/layers/{index}/image.png", summary="A layer's pixels as PNG at the document depth",
             response_class=Response, responses={200: {"content": {PNG: {}}}})
    def layer_image(job_id: str, index: int,
                    level: Annotated[int | None, Query(ge=0, le=9, description="zlib level")] = None) -> Response:
        job, result, item = _item(job_id, index)
        pixels = None if isinstance(item, Group) else item.pixels
        if pixels is None:
            raise ApiError(404, f"layer {index} ({item.name!r}) has no image")
        return StreamingResponse(iter_array_png(pixels, config.png_level if level is None else level,
                                                icc_profile=result.stack.icc_profile, dpi=result.stack.dpi),
                                 media_type=PNG)

    @app.get("/v1/jobs/{job_id}/layers/{index}/mask.png", summary="A layer's mask as grey PNG",
             response_class=Response, responses={200: {"content": {PNG: {}}}})
    def layer_mask(job_id: str, index: int,
                   level: Annotated[int | None, Query(ge=0, le=9, description="zlib level")] = None) -> Response:
        job, result, item = _item(job_id, index)
        if item.mask is None:
            raise ApiError(404, f"layer {index} ({item.name!r}) has no mask")
        return StreamingResponse(iter_array_png(item.mask, config.png_level if level is None else level),
                                 media_type=PNG)

    @app.get("/v1/jobs/{job_id}/result.psd", summary="The layered PSD (PSB when a side is over 30000 px)",
             response_class=Response, responses={200: {"content": {"image/vnd.adobe.photoshop": {}}}})
    def result_psd(job_id: str) -> Response:
        from ..document.psd import psd_suffix, write_psd
        job, result = _result(job_id)
        stack = result.stack
        suffix = psd_suffix(stack.width, stack.height)
        path = result.folder / f"result{suffix}"
        with result.psd_lock:
            if not path.is_file():
                result.folder.mkdir(parents=True, exist_ok=True)
                write_psd(stack, path)
        filename = name_from_filename(stack.name, "stylebridge") + suffix
        return FileResponse(path, media_type="image/vnd.adobe.photoshop", filename=filename)

    return app
