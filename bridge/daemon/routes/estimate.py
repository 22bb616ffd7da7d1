"""``POST /v1/estimate``: how long a job would take on this daemon, asked before sending it.

The job's settings are parsed as a job's are (``JobSpec.from_json`` on the daemon's defaults, ``check`` with
its limits), so the estimate is for exactly the run the same settings would get; the time comes from
:mod:`bridge.daemon.speed` (the one schedule x the engine's cost model x this daemon's measured speed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ...job import JobSpec, check
from ...settings import SettingsError
from ...settings_parse import load_settings_json
from .. import speed
from ..context import DaemonDep
from ..web import ApiError, json_response, settings_error

router = APIRouter(tags=["estimate"])


class EstimateRequest(BaseModel):
    """The photo's size, how many styles, and the job's settings JSON (same names as a job's, preset included)."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=1, description="the photo's width in pixels")
    height: int = Field(ge=1, description="the photo's height in pixels")
    styles: int = Field(1, ge=1, description="how many styles (each is one optimisation; a blend adds one)")
    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="the job's settings, applied over the daemon's defaults")


class EstimateAnswer(BaseModel):
    seconds: float = Field(description="predicted optimisation time (the layers take a few seconds more)")
    working_size: list[int] = Field(description="[w, h] of the last optimisation stage")
    stages: list[list[int]] = Field(description="[long side, iterations] per coarse-to-fine stage")
    tiled: list[bool] = Field(description="per stage: computed in blocks (larger than memory allows whole)")
    runs: int = Field(description="optimisations: one per style, plus the blend")
    device: str
    measured: bool = Field(description="from this daemon's measured speed (false: the device's prior guess)")


def speed_meter(request: Request, d: Any) -> speed.SpeedMeter:
    """The daemon's meter (``stylebridge serve`` gives it a probe and what earlier daemons learnt); an unmeasured
    one otherwise."""
    meter = getattr(request.app.state, "speed", None)
    if meter is None:
        meter = request.app.state.speed = speed.SpeedMeter(d.config.resolved_device)
    return meter


@router.post("/v1/estimate", summary="How long a job would take on this daemon", response_model=EstimateAnswer,
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": EstimateRequest.model_json_schema()}}}})
async def estimate(request: Request, d: DaemonDep) -> Response:
    # The body is read with the daemon's JSON caps (size, nesting, digits), as a job's settings are.
    limits = d.config.limits
    try:
        data = load_settings_json(await request.body(), "estimate", limits)
        body = EstimateRequest.model_validate(data)
    except SettingsError as exc:
        raise settings_error(exc, None, limits) from None
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    return await run_in_threadpool(_estimate, body, request, d)


def _estimate(body: EstimateRequest, request: Request, d: Any) -> Response:
    limits = d.config.limits
    if body.width * body.height > limits.max_pixels:
        raise ApiError(422, f"{body.width}x{body.height} is over the limit of {limits.max_pixels:,} pixels "
                            "(max_pixels)", limit="max_pixels", value=body.width * body.height)
    try:                                                    # (max_styles: check() has it, as for a job)
        spec = JobSpec.from_json({"styles": [f"style {i}" for i in range(min(body.styles, limits.max_styles + 1))],
                                  "settings": body.settings},
                                 base=d.base_settings)
        check(spec, limits, over_http=True, content_size=(body.width, body.height))
    except SettingsError as exc:
        raise settings_error(exc, body.settings, limits) from None
    settings = dataclasses.replace(spec.settings, device=d.base_settings.device)   # the daemon's own device
    meter = speed_meter(request, d)
    speed.learn_from_jobs(meter, d.manager.jobs())
    try:
        answer = speed.estimate(settings, body.width, body.height, body.styles, meter)
    except SettingsError as exc:       # the engine's plan: a block_memory too small for a stage, as a job hears it
        raise settings_error(exc, body.settings, limits) from None
    return json_response(answer.to_json())
