"""The daemon's HTTP API (docs/protocol.md) as a FastAPI application.

Routes only translate HTTP to the job manager and the style library and back; every default and
validation rule comes from :mod:`bridge.settings`, images are decoded by :mod:`bridge.imaging`,
and the :class:`~bridge.daemon.security.Guard` has already checked Origin, Host, token and body
size before a route runs. Routes are plain ``def`` so FastAPI runs them in its thread pool:
decoding and encoding big images never blocks the event loop.
"""

from __future__ import annotations

import io
import json
import math
import re
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
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..document.model import Group
from ..engine.types import StyleInput
from ..imaging import ImageError, Picture, load_image, load_mask
from ..settings import DEFAULTS, LIMITS, Limits, Settings, SettingsError, settings_from_json, settings_from_mapping
from .jobs import MASK_MODES, Job, JobManager, JobRequest, QueueFull, Runner, iter_array_png, run_engine
from .library import LibraryError, StyleLibrary, check_name, name_from_filename
from .security import Guard, allowed_host_names

PNG = "image/png"
FIXED_BY_DAEMON = ("device", "weights")     # chosen when the daemon starts (weights are loaded once)
NOT_OVER_HTTP = ("init_image",)             # would make the daemon read a path named by the client


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
    memory_budget: int = 2 * 1024 ** 3
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


def _probe_pixels(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header only (PNG IHDR or Pillow's lazy open); None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.size
    except Image.DecompressionBombError:
        return (1 << 31, 1)
    except Exception:  # noqa: BLE001 - the real decoder gives the message
        return None


def _read_upload(upload: UploadFile, what: str) -> bytes:
    upload.file.seek(0)
    data = upload.file.read()
    if not data:
        raise ApiError(422, f"{what}: the uploaded file is empty")
    return data


def _decode(data: bytes, what: str, limits: Limits, name: str | None = None) -> Picture:
    """Decode an uploaded image; pixel limit -> 413, anything unreadable -> 422 with imaging's message."""
    size = _probe_pixels(data)
    if size is not None and size[0] * size[1] > limits.max_pixels:
        value = size[0] * size[1]
        raise ApiError(413, f"{what}: {size[0]}x{size[1]} is {value:,} pixels, over the limit of "
                            f"{limits.max_pixels:,}; scale it down first", limit="max_pixels", value=value)
    try:
        return load_image(data, max_pixels=limits.max_pixels, name=name)
    except ImageError as exc:
        raise ApiError(422, f"{what}: {_strip_label(str(exc))}") from None


def _strip_label(message: str) -> str:
    return message[len("upload: "):] if message.startswith("upload: ") else message


def _unique(name: str, taken: set[str]) -> str:
    out, n = name, 2
    while out in taken or out == "blend":
        out = f"{name}-{n}"
        n += 1
    taken.add(out)
    return out


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


def check_limits(settings: Settings, limits: Limits) -> None:
    """The machine-protecting limits of :data:`bridge.settings.LIMITS` (422 with limit and value)."""
    for option in ("iterations", "coarse_iterations"):
        value = getattr(settings, option)
        if value > limits.max_iterations:
            raise ApiError(422, f"{option.replace('_', '-')}: {value} is over the daemon's limit of "
                                f"{limits.max_iterations}", limit="max_iterations", value=value)
    for option in ("size", "min_size"):
        value = getattr(settings, option)
        if value > limits.max_size:
            raise ApiError(422, f"{option.replace('_', '-')}: {value} is over the daemon's limit of "
                                f"{limits.max_size} px", limit="max_size", value=value)


# ------------------------------------------------------------------------------------------------
# the application
# ------------------------------------------------------------------------------------------------

def create_app(config: DaemonConfig, runner: Runner = run_engine) -> FastAPI:
    """The FastAPI app for ``config``; its lifespan starts and stops the engine worker."""
    data_dir = Path(config.data_dir)
    library = StyleLibrary(data_dir / "styles", max_pixels=config.limits.max_pixels)
    manager = JobManager(runner, data_dir / "jobs", retention_s=config.retention_s,
                         memory_budget=config.memory_budget)
    base_values: dict[str, Any] = {"device": config.device, "weights": config.weights}
    if config.preset:
        base_values["preset"] = config.preset
    base_settings, _, _ = settings_from_mapping(base_values)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.start()
        try:
            yield
        finally:
            manager.stop()

    app = FastAPI(title="stylebridge daemon", version=__version__, lifespan=lifespan,
                  description="Gatys neural style transfer for image editors. See docs/protocol.md.",
                  docs_url=None, redoc_url=None)
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
        elif exc.status_code == 400:
            payload["error"] = f"malformed request: {exc.detail}"
        return JSONResponse(payload, exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, 422)

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
            "status": "ok", "version": __version__, "device": config.device, "weights": config.weights,
            "weights_path": config.weights_path, "queue": manager.counts(), "uptime_s": round(time.time() - started, 1),
            "token_required": config.token is not None, "preset": config.preset,
            "retention_s": config.retention_s,
            "limits": {"max_pixels": limits.max_pixels, "max_upload_bytes": limits.max_upload_bytes,
                       "max_styles": limits.max_styles, "max_iterations": limits.max_iterations,
                       "max_size": limits.max_size, "max_queued_jobs": limits.max_queued_jobs},
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
        data = _read_upload(image, "image")
        _decode(data, "image", config.limits, name=style_name)   # 413 for too many pixels, like jobs
        entry = _library_call(library.add, style_name, data, replace=replace_existing)
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
        styles: Annotated[list[str] | None, Form(description="library style names (repeatable)")] = None,
        style_files: Annotated[list[UploadFile] | None, File(description="uploaded style images (repeatable)")] = None,
        settings: Annotated[str, Form(description="JSON object of bridge.settings options, plus preset")] = "{}",
        mask: Annotated[UploadFile | None, File(description="grey PNG of the content's size")] = None,
        mask_mode: Annotated[str | None, Form(description="first|all|none|mask")] = None,
        name: Annotated[str | None, Form(description="run name (the group's name)")] = None,
    ) -> Response:
        limits = config.limits
        try:
            raw = json.loads(settings or "{}")
        except json.JSONDecodeError:
            raw = None                      # settings_from_json words the error
        keys = {str(k).replace("-", "_") for k in raw} if isinstance(raw, dict) else set()
        try:
            engine, document, extra = settings_from_json(settings or "{}", base=base_settings,
                                                         allow_extra=("mask_mode", "name"))
        except SettingsError as exc:
            raise ApiError(422, str(exc), option=exc.option) from None
        if "device" in keys and engine.device == "auto":
            engine = replace(engine, device=base_settings.device)     # 'auto' means: whatever the daemon uses
        for option in FIXED_BY_DAEMON:
            if option in keys and getattr(engine, option) != getattr(base_settings, option):
                raise ApiError(422, f"{option}: fixed when the daemon starts ({getattr(base_settings, option)!r}); "
                                    f"restart it with --{option} to change it", option=option)
        if engine.init == "file" or (keys & set(NOT_OVER_HTTP)):
            raise ApiError(422, "init: 'file' is not available over HTTP (the daemon does not read paths "
                                "named by clients); use init content or random", option="init")
        check_limits(engine, limits)
        mode = mask_mode if mask_mode is not None else extra.get("mask_mode")
        run_name = _run_name(name if name is not None else extra.get("name"))

        names = [s for s in (styles or []) if s is not None and str(s).strip() != ""]
        files = [f for f in (style_files or []) if f is not None]
        count = len(names) + len(files)
        if count == 0:
            raise ApiError(422, "no style: give library names in 'styles' and/or images in 'style_files'")
        if count > limits.max_styles:
            raise ApiError(422, f"{count} styles is over the daemon's limit of {limits.max_styles}",
                           limit="max_styles", value=count)
        if engine.style_blend_weights is not None and len(engine.style_blend_weights) != count:
            raise ApiError(422, f"style-blend-weights: {len(engine.style_blend_weights)} weights for {count} styles",
                           option="style_blend_weights")

        picture = _decode(_read_upload(content, "content"), "content", limits,
                          name=name_from_filename(content.filename, "image"))
        taken: set[str] = set()
        inputs: list[StyleInput] = []
        for style in names:
            try:
                style_pic = library.load(style)
            except LibraryError as exc:
                raise ApiError(422, f"unknown style {style!r}: not in the library (GET /v1/styles lists them)"
                               if exc.status == 404 else str(exc), style=style) from None
            except ImageError as exc:
                raise ApiError(422, f"style {style!r}: {exc}", style=style) from None
            inputs.append(StyleInput(_unique(check_name(style), taken), style_pic))
        for upload in files:
            label = name_from_filename(upload.filename)
            style_pic = _decode(_read_upload(upload, f"style file {upload.filename!r}"),
                                f"style file {upload.filename!r}", limits, name=label)
            inputs.append(StyleInput(_unique(label, taken), style_pic))

        mask_array = None
        if mask is not None:
            data = _read_upload(mask, "mask")
            size = _probe_pixels(data)
            if size is not None and size[0] * size[1] > limits.max_pixels:
                raise ApiError(413, "mask: too many pixels", limit="max_pixels", value=size[0] * size[1])
            try:
                mask_array = load_mask(data, (picture.width, picture.height), depth=picture.bit_depth,
                                       max_pixels=limits.max_pixels)
            except ImageError as exc:
                raise ApiError(422, _strip_label(str(exc)).replace("upload:", "mask:")) from None
        if mode is None:
            mode = "mask" if mask_array is not None else document.reveal
        if mode not in MASK_MODES:
            raise ApiError(422, f"mask_mode: {mode!r} is not one of {', '.join(MASK_MODES)}", option="mask_mode")
        if mode == "mask" and mask_array is None:
            raise ApiError(422, "mask_mode 'mask' needs a mask file", option="mask_mode")

        request = JobRequest(content=picture, styles=inputs, settings=engine, document=document,
                             mask=mask_array, mask_mode=mode, name=run_name)
        try:
            job = manager.submit(request, max_queued=limits.max_queued_jobs)
        except QueueFull as exc:
            raise ApiError(429, f"the daemon's queue is full: {exc.waiting} jobs are waiting (limit "
                                f"{limits.max_queued_jobs}); submit again when some have finished, or cancel "
                                "some (GET /v1/jobs lists them)", limit="max_queued_jobs", value=exc.waiting) from None
        return json_response(manager.status(job), 202)

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
