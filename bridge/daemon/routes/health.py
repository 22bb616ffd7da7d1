"""``GET /v1/health``: is the daemon up, which protocol, device and weights, its presets, queue and limits.

``presets`` lists bridge.settings.PRESETS' names so clients keep no list of their own; ``preset`` is the
daemon's default (``stylebridge serve --preset``; null: the settings' own defaults, which are "normal").
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response

from ... import __version__
from ...job import PROTOCOL_VERSION
from ...settings import PRESETS
from ..context import DaemonDep
from ..web import json_response

router = APIRouter(tags=["health"])


@router.get("/v1/health", summary="Is the daemon up; device, weights, queue")
def health(d: DaemonDep) -> Response:
    limits = d.config.limits
    return json_response({
        "status": "ok", "version": __version__, "protocol": PROTOCOL_VERSION, "device": d.config.resolved_device,
        "weights": d.config.weights, "weights_path": d.config.weights_path, "queue": d.manager.counts(),
        "uptime_s": round(time.time() - d.started, 1),
        "token_required": d.config.token is not None, "preset": d.config.preset, "presets": list(PRESETS),
        "retention_s": d.config.retention_s,
        "limits": {"max_pixels": limits.max_pixels, "max_upload_bytes": limits.max_upload_bytes,
                   "max_styles": limits.max_styles, "max_iterations": limits.max_iterations,
                   "max_size": limits.max_size, "max_queued_jobs": limits.max_queued_jobs,
                   "max_job_memory": limits.max_job_memory, "memory_budget": limits.memory_budget,
                   "max_settings_bytes": limits.max_settings_bytes, "max_json_depth": limits.max_json_depth,
                   "max_json_digits": limits.max_json_digits},
    })
