"""``/v1/jobs``: submit a job (protocol 2's ``job`` field, or protocol 1's fields), follow, cancel, fetch.

A submission is parsed once (:meth:`bridge.job.JobSpec.from_json` on the daemon's defaults) and checked
once (:func:`bridge.job.check`), like the CLI's and the hot folder's; its uploads then wait on disk,
undecoded, until the engine worker takes the job.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, Response, StreamingResponse

from ...document.model import Group, Layer
from ...imaging import iter_png
from ...job import FIXED_BY_DAEMON, JobSpec, Source, check, mask_word
from ...settings import REVEAL_CHOICES, SERVICE, Limits, Settings, SettingsError
from ..context import Daemon, DaemonDep
from ..jobfiles import JobFiles
from ..jobqueue import QueueFull
from ..memory import ImageShape, default_job_memory, estimate_job_memory
from ..library import LibraryError, name_from_filename
from ..results import JobResult
from ..store import Job
from ..web import (PNG, ApiError, json_response, load_json, over_memory, probe_file, run_name, save_upload,
                   settings_error)

router = APIRouter(tags=["jobs"])


#: Added to the answer of a job sent with protocol 1's fields.
LEGACY_NOTE = ("the fields styles, settings, mask_mode and name are protocol 1 and work for one more release; "
               "send the job as one 'job' field (protocol 2, docs/protocol.md)")
LEGACY_EXTRA = ("mask_mode", "name")      # protocol 1 also took these inside its settings JSON


def legacy_job(names: list[str], uploads: int, settings: str | None, mask_mode: str | None, name: str | None,
               has_mask: bool, limits: Limits) -> dict[str, Any]:
    """Protocol 1's fields as the job JSON of protocol 2, so both go through one parse (JobSpec.from_json).

    Library names come first, then the uploads, as protocol 1 ordered them; ``mask_mode`` first|all|none is
    the job's ``reveal``, ``mask`` (or a mask without a mode) uses the uploaded mask for every style.
    """
    raw = load_json(settings or "{}", "settings", limits)
    if not isinstance(raw, dict):
        raise ApiError(422, "settings: must be a JSON object", option="settings")
    options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        word = str(key).replace("-", "_")
        (extra if word in LEGACY_EXTRA else options)[key if word not in LEGACY_EXTRA else word] = value
    mode = mask_mode if mask_mode is not None else extra.get("mask_mode")
    title = name if name is not None else extra.get("name")
    if title is not None and not isinstance(title, str):
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
            bad = ApiError(422, f"mask_mode: {str(mode)[:40]!r} is not one of {', '.join(REVEAL_CHOICES)}, mask",
                           option="mask_mode")
            if not isinstance(mode, str):
                raise bad
            try:
                options["reveal"] = mask_word(mode)
            except SettingsError:
                raise bad from None
    elif has_mask:
        job["mask"] = {"upload": 0}
    if title:
        job["name"] = title
    return job


def _parse_job(data: Any, base: Settings, limits: Limits) -> JobSpec:
    """The one parse (JobSpec.from_json on the daemon's defaults), then what the daemon fixes at start."""
    try:
        spec = JobSpec.from_json(data, base=base)
    except SettingsError as exc:
        raw = data.get("settings") if isinstance(data, dict) else None
        raise settings_error(exc, raw, limits) from None
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


def _check_uploads(spec: JobSpec, styles: int, mask: bool, style_masks: int, *, strict: bool = True,
                   regions: int = 0) -> None:
    """Every ``{"upload": i}`` of the job names a file that came with it; masks are uploads only.

    ``strict`` (protocol 2): a mask file that the job does not name is a mistake, not something to ignore."""
    if strict and mask and spec.mask is None:
        raise ApiError(422, "mask: a 'mask' file was sent but the job names no mask; add \"mask\": {\"upload\": 0} "
                            "to the job to use it for every style layer, or do not send the file", option="mask")
    named = {source.upload for _, source in spec.style_masks}
    if strict and any(i not in named for i in range(style_masks)):
        unused = min(i for i in range(style_masks) if i not in named)
        raise ApiError(422, f"style_masks: style_mask_files upload {unused} is named by no style in the job's "
                            "style_masks (uploads count from 0)", option="style_masks")
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
    for style, source in spec.regions:
        if source.upload is None:
            raise ApiError(422, f"regions: the region of {style!r} must be an upload ({{\"upload\": i}} with the "
                                "i-th 'region_files')", option="regions")
        if source.upload >= regions:
            raise ApiError(422, f"regions: upload {source.upload} named for {style!r}, but {regions} region_files "
                                "were sent (uploads count from 0)", option="regions")
    named_regions = {source.upload for _, source in spec.regions}
    if any(i not in named_regions for i in range(regions)):
        unused = min(i for i in range(regions) if i not in named_regions)
        raise ApiError(422, f"regions: region_files upload {unused} is named by no style in the job's regions "
                            "(uploads count from 0)", option="regions")


@router.post("/v1/jobs", status_code=202, summary="Submit a stylisation job")
def submit_job(
    d: DaemonDep,
    content: Annotated[UploadFile, File(description="the photo: PNG/TIFF/JPEG/WebP, 8/16-bit, alpha kept")],
    job: Annotated[str | None, Form(description="protocol 2: the job as JSON (bridge.job.JobSpec.to_json); "
                                                "{\"upload\": i} names the i-th style_files / style_mask_files "
                                                "upload, {\"upload\": 0} the mask")] = None,
    style_files: Annotated[list[UploadFile] | None, File(description="uploaded style images (repeatable)")] = None,
    mask: Annotated[UploadFile | None, File(description="grey PNG of the content's size")] = None,
    style_mask_files: Annotated[list[UploadFile] | None,
                                File(description="protocol 2: grey PNGs named by the job's style_masks")] = None,
    region_files: Annotated[list[UploadFile] | None,
                            File(description="grey PNGs named by the job's regions (where each style is "
                                             "painted; the photo's size or shape)")] = None,
    styles: Annotated[list[str] | None, Form(description="deprecated (protocol 1): library style names",
                                             deprecated=True)] = None,
    settings: Annotated[str | None, Form(description="deprecated (protocol 1): JSON object of settings",
                                         deprecated=True)] = None,
    mask_mode: Annotated[str | None, Form(description="deprecated (protocol 1): first|all|none|mask",
                                          deprecated=True)] = None,
    name: Annotated[str | None, Form(description="deprecated (protocol 1): run name", deprecated=True)] = None,
) -> Response:
    limits = d.config.limits
    files = [f for f in (style_files or []) if f is not None]
    mask_files = [f for f in (style_mask_files or []) if f is not None]
    region_uploads = [f for f in (region_files or []) if f is not None]
    notes: list[str] = []
    if job is not None:
        if styles or settings is not None or mask_mode is not None or name is not None:
            raise ApiError(422, "job: give the job in the 'job' field alone (styles, settings, mask_mode and "
                                "name are protocol 1's fields)", option="job")
        data = load_json(job, "job", limits)
    else:
        data = legacy_job(styles or [], len(files), settings, mask_mode, name, mask is not None, limits)
        notes.append(LEGACY_NOTE)
    spec = _parse_job(data, d.base_settings, limits)
    spec = dataclasses.replace(spec, styles=tuple(_named(s, files) for s in spec.styles),
                               name=run_name(spec.name), notes=(*notes, *spec.notes))
    try:
        check(spec, limits, over_http=True)
    except SettingsError as exc:
        raise settings_error(exc, spec.options, limits) from None
    _check_uploads(spec, len(files), mask is not None, len(mask_files), strict=job is not None,
                   regions=len(region_uploads))
    waiting = d.manager.counts()["queued"]
    if waiting >= limits.max_queued_jobs:       # before storing anything; submit() checks again
        raise _queue_full(d, waiting)

    # The uploads go to disk in the job's own folder and wait there, undecoded, until the job starts.
    folder = d.manager.upload_folder()
    try:
        queued = _queue_job(d, folder, content, spec, files, mask, mask_files, region_uploads)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    answer = d.manager.status(queued)
    if spec.notes:
        answer["notes"] = list(spec.notes)
    return json_response(answer, 202)


def _queue_full(d: Daemon, waiting: int) -> ApiError:
    return ApiError(429, f"the daemon's queue is full: {waiting} jobs are waiting (limit "
                         f"{d.config.limits.max_queued_jobs}, max_queued_jobs); submit again when some have "
                         "finished, or cancel some (GET /v1/jobs lists them)",
                    limit="max_queued_jobs", value=waiting)


def _queue_job(d: Daemon, folder: Path, content: UploadFile, spec: JobSpec, files: list[UploadFile],
               mask: UploadFile | None, mask_files: list[UploadFile], region_files: list[UploadFile] = ()) -> Job:
    """Store and check the uploads (headers only), estimate the job's memory, queue it."""
    limits = d.config.limits
    content_path = save_upload(content, folder, "content", "content")
    shape = probe_file(content_path, "content", limits)
    try:
        check(spec, limits, over_http=True, content_size=(shape.width, shape.height))   # size native: its pixel cap
    except SettingsError as exc:
        raise settings_error(exc, spec.options, limits) from None
    style_paths: list[tuple[str, Path]] = []
    style_shapes: list[ImageShape] = []
    for i, (source, label) in enumerate(zip(spec.styles, spec.style_names)):
        if source.library is not None:
            try:
                entry, fh = d.library.open(source.library)    # the file checked is the file copied (no link)
            except LibraryError as exc:
                raise ApiError(422, f"unknown style {source.library!r}: not in the library (GET /v1/styles "
                                    "lists them)" if exc.status == 404 else str(exc), style=source.library) from None
            target = folder / f"style{i}{entry.path.suffix}"
            with fh, open(target, "xb") as out:          # the library may change meanwhile: this copy stays
                shutil.copyfileobj(fh, out)
            style_shapes.append(probe_file(target, f"style {source.library!r}", limits))
        else:
            upload = files[source.upload]
            what = f"style file {upload.filename!r}"
            target = save_upload(upload, folder, f"style{i}", what)
            style_shapes.append(probe_file(target, what, limits))
        style_paths.append((label, target))

    def stored_mask(upload: UploadFile, stem: str, what: str) -> tuple[Path, ImageShape]:
        path = save_upload(upload, folder, stem, what)
        got = probe_file(path, what, limits)
        if (got.width, got.height) != (shape.width, shape.height):
            raise ApiError(422, f"{what}: is {got.width}x{got.height} but the image is "
                                f"{shape.width}x{shape.height}; export the mask at the image's size")
        return path, got

    mask_path = mask_shape = None
    if spec.mask is not None and mask is not None:
        mask_path, mask_shape = stored_mask(mask, "mask", "mask")
    style_masks = [(style, stored_mask(mask_files[src.upload], f"mask{i}", f"mask of style {style!r}")[0])
                   for i, (style, src) in enumerate(spec.style_masks)]
    regions = []
    for i, (style, src) in enumerate(spec.regions):
        what = f"region of style {style!r}"
        path = save_upload(region_files[src.upload], folder, f"region{i}", what)
        got = probe_file(path, what, limits)
        if abs(got.width * shape.height - got.height * shape.width) > max(shape.width, shape.height, got.width,
                                                                          got.height):
            raise ApiError(422, f"{what}: is {got.width}x{got.height}, not the shape of the image "
                                f"({shape.width}x{shape.height}); export the region at the image's size")
        regions.append((style, path))
    engine, document = spec.settings, spec.document
    estimate = estimate_job_memory(shape, style_shapes, engine, document, mask=mask_shape,
                                   on_cpu=d.config.resolved_device == "cpu")
    estimate += len(style_masks) * shape.pixels * 2      # each style's own mask, decoded at up to 16 bits
    estimate += len(regions) * shape.pixels * 4          # each region, float32 at the photo's size
    budget = int(limits.max_job_memory or default_job_memory())
    if estimate > budget:
        raise over_memory(f"this job ({shape.width}x{shape.height} photo, {len(style_paths)} style(s), working size "
                          f"{engine.size}) would need", estimate, budget,
                          "scale the photo down, use fewer styles or a smaller size")
    request = JobFiles(folder=folder, content=content_path,
                       content_name=name_from_filename(content.filename, "image"), content_shape=shape,
                       styles=style_paths, settings=engine, document=document, mask=mask_path,
                       style_masks=style_masks, regions=regions, name=spec.name, estimate=estimate, max_pixels=limits.max_pixels,
                       priority=spec.priority.value, spec=spec.to_json())
    try:
        return d.manager.submit(request, max_queued=limits.max_queued_jobs)
    except QueueFull as exc:
        raise _queue_full(d, exc.waiting) from None


@router.get("/v1/jobs", summary="All jobs the daemon holds (queued, running, kept)")
def list_jobs(d: DaemonDep) -> Response:
    return json_response({"jobs": [d.manager.status(j) for j in d.manager.jobs()]})


@router.get("/v1/jobs/{job_id}", summary="Follow a job")
def job_status(job_id: str, d: DaemonDep) -> Response:
    return json_response(d.manager.status(d.job(job_id)))


@router.delete("/v1/jobs/{job_id}", status_code=204, response_class=Response,
               summary="Cancel a job if needed and drop it and its result now")
def delete_job(job_id: str, d: DaemonDep) -> Response:
    d.job(job_id)
    d.manager.cancel(job_id)
    d.manager.forget(job_id)
    return Response(status_code=204)


@router.get("/v1/jobs/{job_id}/preview", summary="PNG of the current state (404 until one exists)",
            response_class=Response, responses={200: {"content": {PNG: {}}}})
def job_preview(job_id: str, d: DaemonDep) -> Response:
    data = d.manager.preview_png(d.job(job_id))
    if data is None:
        raise ApiError(404, "no preview yet")
    return Response(data, media_type=PNG, headers={"Cache-Control": "no-store"})


@router.post("/v1/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
def cancel_job(job_id: str, d: DaemonDep, keep_result: Annotated[bool, Query()] = False) -> Response:
    d.job(job_id)
    job = d.manager.cancel(job_id, keep_result=keep_result)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}")
    return json_response(d.manager.status(job))


@router.get("/v1/jobs/{job_id}/result", summary="The layer stack as JSON")
def job_result(job_id: str, d: DaemonDep) -> Response:
    job, result = d.result(job_id)
    if result.json_cache is None:
        from ...document.stack import layer_records
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


def _item(d: Daemon, job_id: str, index: int) -> tuple[Job, JobResult, Layer | Group]:
    job, result = d.result(job_id)
    if not 0 <= index < len(result.items):
        raise ApiError(404, f"job {job_id} has no layer {index} (0..{len(result.items) - 1})")
    return job, result, result.items[index][0]


@router.get("/v1/jobs/{job_id}/layers/{index}/image.png", summary="A layer's pixels as PNG at the document depth",
            response_class=Response, responses={200: {"content": {PNG: {}}}})
def layer_image(job_id: str, index: int, d: DaemonDep,
                level: Annotated[int | None, Query(ge=0, le=9, description="zlib level")] = None) -> Response:
    job, result, item = _item(d, job_id, index)
    pixels = None if isinstance(item, Group) else item.pixels
    if pixels is None:
        raise ApiError(404, f"layer {index} ({item.name!r}) has no image")
    return StreamingResponse(iter_png(pixels, d.config.png_level if level is None else level,
                                      icc_profile=result.stack.icc_profile, dpi=result.stack.dpi),
                             media_type=PNG)


@router.get("/v1/jobs/{job_id}/layers/{index}/mask.png", summary="A layer's mask as grey PNG",
            response_class=Response, responses={200: {"content": {PNG: {}}}})
def layer_mask(job_id: str, index: int, d: DaemonDep,
               level: Annotated[int | None, Query(ge=0, le=9, description="zlib level")] = None) -> Response:
    job, result, item = _item(d, job_id, index)
    if item.mask is None:
        raise ApiError(404, f"layer {index} ({item.name!r}) has no mask")
    return StreamingResponse(iter_png(item.mask, d.config.png_level if level is None else level),
                             media_type=PNG)


@router.get("/v1/jobs/{job_id}/result.psd", summary="The layered PSD (PSB when a side is over 30000 px)",
            response_class=Response, responses={200: {"content": {"image/vnd.adobe.photoshop": {}}}})
def result_psd(job_id: str, d: DaemonDep) -> Response:
    from ...document.psd import psd_suffix, write_psd
    job, result = d.result(job_id)
    stack = result.stack
    suffix = psd_suffix(stack.width, stack.height)
    path = result.folder / f"result{suffix}"
    with result.psd_lock:
        if not path.is_file():
            result.folder.mkdir(parents=True, exist_ok=True)
            write_psd(stack, path)
    filename = name_from_filename(stack.name, "stylebridge") + suffix
    return FileResponse(path, media_type="image/vnd.adobe.photoshop", filename=filename)
