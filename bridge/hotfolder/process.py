"""One claimed file -> one layered fusion PSD (written to a scratch path; the watcher publishes it).

The format is decided by the file's first bytes, never by its extension (a JPEG named ``.png`` is
a JPEG; a text file named ``.jpg`` is refused).  Every failure is a :class:`JobError` whose message
says what is wrong and whose ``advice`` says what the user can do; the watcher writes both into
``error/NAME.txt``.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from ..engine.checkpoint import Checkpoint
from ..engine.types import CancelToken, Progress, StyleInput
from ..imaging import ImageError, MetadataWarning, Picture, image_size, load_image
from ..job import FIXED_BY_DAEMON, JobSpec, LimitError, Priority, Source, check
from ..pipeline import FailureKind, classify
from ..settings import LIMITS, SettingsError

ADVICE_IMAGE = ("Open the file in Photoshop and save it again as JPEG, PNG, TIFF or PSD, "
                "then drop it into in/ again.")
ADVICE_SETTINGS = ("Fix the settings named above (preset.json or the file's sidecar .json), "
                   "then move the file from error/ back into in/.")
ADVICE_SIZE = "Scale the image down (or split it), then drop it into in/ again."
ADVICE_WRITE = ("Free some disk space or fix the folder's permissions, then move the file from error/ "
                "back into in/.")
ADVICE_MEMORY = ("Lower \"size\" (or use \"optimizer\": \"adam\") in preset.json or the file's sidecar, "
                 "then move the file from error/ back into in/.")
ADVICE_ENGINE = "This looks like a bug or a resource problem; see the watcher's terminal, then retry."
ADVICE_DAEMON = "Check that `stylebridge serve` is running and reachable, then move the file back into in/."
ADVICE_TOKEN = ("Restart `stylebridge watch` with the daemon's token (--token T, or STYLEBRIDGE_TOKEN in its "
                "environment: the token given to `stylebridge serve --token`), then move the file from error/ back "
                "into in/.")
ADVICE_URL = ("Give `stylebridge watch --daemon` the URL of a running `stylebridge serve` (e.g. http://127.0.0.1:PORT), "
              "then move the file from error/ back into in/.")


class JobError(Exception):
    """A file cannot be processed: ``str(exc)`` says why, ``advice`` what to do."""

    def __init__(self, message: str, advice: str = ADVICE_IMAGE) -> None:
        super().__init__(message)
        self.advice = advice


class Cancelled(Exception):
    """The watcher is stopping; the job stays in working/ and resumes on the next start."""


ReportFn = Callable[[str, float | None, str], None]   # (stage, percent or None, style name)


# --------------------------------------------------------------------------------------------
# Sniffing


@dataclass(frozen=True)
class Sniffed:
    kind: str                     # "jpeg" | "png" | "tiff" | "webp" | "psd" | "psb"
    width: int | None = None      # known without decoding for PSD/PSB
    height: int | None = None


ADVICE_SPECIAL = "Only files can be processed: copy the photo itself (not a link, pipe or folder) into in/."


def sniff(path: Path) -> Sniffed:
    """Identify an input by its content; raise JobError for anything that is not a supported image.

    FIFOs, sockets, devices and folders (or links to them) are refused from ``stat`` alone; the file
    is then opened non-blocking and checked again (``fstat``: same regular file), so a link swapped
    for a FIFO in between can never block the watcher on ``open()``.
    """
    from .claim import regular_file_problem
    problem = regular_file_problem(path)
    if problem is not None:
        raise JobError(problem, ADVICE_SPECIAL)
    try:
        before = os.stat(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
                raise JobError("the file was replaced by something that is not a file while it was read",
                               ADVICE_SPECIAL)
            size = st.st_size
            head = os.pread(fd, 32, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise JobError(f"cannot read the file ({exc.strerror or exc})", ADVICE_WRITE) from None
    if size == 0:
        raise JobError("the file is empty (0 bytes); the copy may have failed")
    if head.startswith(b"8BPS") and len(head) >= 26:
        version, = struct.unpack(">H", head[4:6])
        height, width = struct.unpack(">II", head[14:22])
        if version not in (1, 2):
            raise JobError(f"PSD header has version {version}, expected 1 (PSD) or 2 (PSB); the file is damaged")
        return Sniffed("psd" if version == 1 else "psb", width, height)
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("png")
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return Sniffed("tiff")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("webp")
    raise JobError(f"not a supported image: the content {_describe(head)}, not JPEG, PNG, TIFF or PSD/PSB "
                   "(the file name's extension does not matter)")


def _describe(head: bytes) -> str:
    known = {b"%PDF": "is a PDF document", b"PK\x03\x04": "is a ZIP archive", b"GIF8": "is a GIF image",
             b"BM": "is a BMP image", b"{": "looks like JSON text", b"\x00\x00\x00": "starts with zero bytes"}
    for magic, what in known.items():
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
        if all(c >= 32 or c in (9, 10, 13) for c in head):
            return "looks like plain text"
    except UnicodeDecodeError:
        pass
    return f"starts with unknown bytes {head[:8].hex(' ')}"


# --------------------------------------------------------------------------------------------
# Loading content and styles


@dataclass
class Inputs:
    """One job, read: ``spec`` is the complete job (the preset's styles plus a PSD's ``style:`` layers,
    checked against the limits); ``styles`` the pictures of its non-library styles, in order."""

    content: Picture
    styles: list[StyleInput]
    spec: JobSpec
    source_kind: str
    notes: list[str] = field(default_factory=list)   # what reading dropped (frames, a broken profile...)

    @property
    def names(self) -> list[str]:
        return self.spec.style_names


def load_inputs(path: Path, spec: JobSpec, *, allow_library: bool) -> Inputs:
    """The content picture and the style pictures for one job, or JobError.

    The limits every front end applies (:func:`bridge.job.check`) are checked here, in both modes, once
    the PSD's own style layers are known.  What reading dropped (:class:`~bridge.imaging.MetadataWarning`:
    an animation's later frames, a broken ICC profile) comes back in ``notes``, for the watcher's lines.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetadataWarning)
        inputs = _load_inputs(path, spec, allow_library=allow_library)
    for w in caught:
        if issubclass(w.category, MetadataWarning):
            note = _strip_path(str(w.message), path)
            if note not in inputs.notes:
                inputs.notes.append(note)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return inputs


def _load_inputs(path: Path, spec: JobSpec, *, allow_library: bool) -> Inputs:
    kind = sniff(path)
    stem = spec.name or path.stem
    if spec.settings.native:     # refused from the header, before decoding (the rest is checked below)
        _check_native(spec, (kind.width, kind.height) if kind.width and kind.height else image_size(path))
    psd_styles: list[StyleInput] = []
    if kind.kind in ("psd", "psb"):
        if kind.width and kind.height and kind.width * kind.height > LIMITS.max_pixels:
            raise JobError(f"{kind.width}x{kind.height} is {kind.width * kind.height:,} pixels, over the limit "
                           f"of {LIMITS.max_pixels:,}", ADVICE_SIZE)
        content, psd_styles = _load_psd(path, stem, spec.content_layer)
    else:
        if spec.content_layer:
            raise JobError(f"content_layer {spec.content_layer!r} is set but the file is a {kind.kind.upper()}, "
                           "which has no layers", ADVICE_SETTINGS)
        try:
            content = load_image(path, max_pixels=LIMITS.max_pixels, name=stem)
        except ImageError as exc:
            raise JobError(_strip_path(str(exc), path), _image_advice(str(exc))) from None
    if not spec.styles and not psd_styles:
        raise JobError("no style images: name them in preset.json (\"styles\": [\"styles/starry.jpg\"]), "
                       "in a sidecar NAME.json, or as PSD layers named \"style: NAME\"", ADVICE_SETTINGS)
    # a PSD's style layers travel as uploads in daemon mode; here they are styles like the preset's
    spec = replace(spec, styles=spec.styles + tuple(Source(upload=i, name=s.name) for i, s in enumerate(psd_styles)))
    check(spec, LIMITS, content_size=(content.width, content.height))   # SettingsError: "bad settings" (error/)
    styles = load_styles(spec, psd_styles, allow_library=allow_library)
    return Inputs(content, styles, spec, kind.kind)


def _check_native(spec: JobSpec, size: tuple[int, int] | None) -> None:
    """Size "native" over ``max_native_pixels``: :func:`bridge.job.check`'s refusal, said before the photo
    is decoded; its other findings wait for the full check, once a PSD's own styles are known."""
    if size is None:
        return
    try:
        check(spec, LIMITS, content_size=size)
    except LimitError as exc:
        if exc.limit == "max_native_pixels":
            raise
    except SettingsError:
        pass


def _strip_path(message: str, path: Path) -> str:
    """load_image's messages start with the path; the working/ path means nothing to the user."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _image_advice(message: str) -> str:
    return ADVICE_SIZE if "pixels" in message and "limit" in message else ADVICE_IMAGE


def load_styles(spec: JobSpec, psd_styles: list[StyleInput], *, allow_library: bool) -> list[StyleInput]:
    """The pictures of the job's file and PSD-layer styles, named ``spec.style_names`` (library styles: the
    daemon's, so none here)."""
    styles: list[StyleInput] = []
    layers = iter(psd_styles)
    for src, name in zip(spec.styles, spec.style_names):
        if src.library is not None:
            if not allow_library:
                raise JobError(f"style {src.library!r} is not a file; library styles need the daemon "
                               "(stylebridge watch DIR --daemon URL) — or give a path to an image file",
                               ADVICE_SETTINGS)
            continue
        if src.path is None:                      # a PSD's own "style: NAME" layer
            styles.append(replace(next(layers), name=name))
            continue
        try:
            pic = load_image(src.path, max_pixels=LIMITS.max_pixels, name=name)
        except ImageError as exc:
            raise JobError(f"style image {exc}", ADVICE_SETTINGS) from None
        styles.append(StyleInput(name, pic))
    return styles


def _load_psd(path: Path, stem: str, content_layer: str | None) -> tuple[Picture, list[StyleInput]]:
    """Content (composite, or the named layer) and the ``style: NAME`` layers of a PSD/PSB."""
    from ..document.psd_read import read_psd   # psd-tools is heavy; only PSD inputs pay for it
    try:
        doc = read_psd(path, content_layer=content_layer, max_pixels=LIMITS.max_pixels)
    except ImageError as exc:
        message = _strip_path(str(exc), path)
        advice = ADVICE_SETTINGS if "no layer named" in message else _image_advice(message)
        raise JobError(message, advice) from None
    return replace(doc.content, name=stem), list(doc.styles)


# --------------------------------------------------------------------------------------------
# Engines


class Engine(Protocol):
    allows_library: bool

    def render(self, inputs: Inputs, source: Path, dest: Path, report: ReportFn, cancel: CancelToken, *,
               checkpoint: Checkpoint | None = None) -> None:
        """Write the fusion PSD for ``inputs`` to ``dest`` or raise JobError/Cancelled (also when
        ``cancel`` is paused: the watcher stops). ``checkpoint``: the job's, to go on from after a restart."""


def progress_reporter(report: ReportFn) -> Callable[[Progress], None]:
    """Engine progress -> the watcher's lines (at most one per 5 % step or stage), in the one progress text."""
    from ..progress import progress_line
    last: dict[str, object] = {"key": None}

    def on_progress(p: Progress) -> None:
        pct = 100.0 * p.fraction
        key = (p.style_index, p.stage, int(pct // 5))
        if key != last["key"]:
            last["key"] = key
            report(progress_line(p), pct, "")
    return on_progress


class InProcessEngine:
    """Runs :func:`bridge.engine.stylize` here, then builds the layer stack and writes the PSD."""

    allows_library = False

    def render(self, inputs: Inputs, source: Path, dest: Path, report: ReportFn, cancel: CancelToken, *,
               checkpoint: Checkpoint | None = None) -> None:
        from ..engine import stylize
        from .resume import announcing
        from ..document.stack import build_stack
        from ..document.psd import write_psd
        spec = inputs.spec
        report("stylizing", 0.0, ", ".join(s.name for s in inputs.styles))
        try:
            result = stylize(inputs.content, inputs.styles, spec.settings,
                             progress=announcing(progress_reporter(report), report), cancel=cancel,
                             checkpoint=checkpoint)
        except (ValueError, RuntimeError, MemoryError) as exc:     # what went wrong: pipeline.classify
            failure = classify(exc)
            if failure.kind is FailureKind.MEMORY:
                raise JobError(f"{failure.message} while stylizing", ADVICE_MEMORY) from None
            if failure.kind is FailureKind.ENGINE:
                raise                      # the watcher's "unexpected" path: traceback on its terminal
            raise JobError(str(exc), ADVICE_SETTINGS) from None
        if result.cancelled or result.paused or cancel.cancelled:
            raise Cancelled()
        report("writing PSD", 100.0, "")
        stack = build_stack(result, spec.document)
        write_psd(stack, dest)


#: Settings the hot folder applies itself, in both modes: not sent to the daemon.
HERE_ONLY = ("contact_sheet",)


def contact_sheet(inputs: Inputs) -> tuple[Picture | None, list[str]]:
    """The photo and a fast preview of it under each style whose picture is here (bridge.preview), on one
    sheet; and the names of the styles left out (library styles live in the daemon). None: no style here."""
    from ..preview.sheet import contact_sheet as make_sheet
    from ..settings import PREVIEW
    here = [replace(s.picture, name=s.name) for s in inputs.styles]
    left_out = [src.library for src in inputs.spec.styles if src.library is not None]
    if not here:
        return None, left_out
    return make_sheet(inputs.content, here, tile=PREVIEW.size), left_out


class Unavailable(Exception):
    """The daemon cannot be reached, refuses this watcher (token, URL, protocol) or its queue is full: not the
    file's fault, so the job waits and is retried (with ``--once`` it goes to error/ with ``advice``)."""

    def __init__(self, message: str, advice: str = ADVICE_DAEMON) -> None:
        super().__init__(message)
        self.advice = advice


def wire_job(inputs: Inputs) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """The job as the daemon's ``job`` field carries it, and the style files it uploads.

    File and PSD-layer styles become ``{"upload": i}`` (their pictures, as PNG: already read and checked
    here); library styles stay names. The content goes up already extracted (a PSD's layer or composite),
    so ``content_layer`` does not travel; neither do the settings the daemon fixes when it starts
    (device, weights) nor what the hot folder does itself (the contact sheet).
    """
    from ..imaging import encode_png
    spec = inputs.spec
    pictures = iter(inputs.styles)
    styles: list[Source] = []
    files: list[tuple[str, bytes]] = []
    for src, name in zip(spec.styles, spec.style_names):
        if src.library is not None:
            styles.append(Source(library=src.library, name=name if name != src.library else None))
            continue
        pic = next(pictures)
        styles.append(Source(upload=len(files), name=name))
        files.append((f"{name}.png", encode_png(pic.picture)))
    options = {k: v for k, v in spec.options.items() if k not in FIXED_BY_DAEMON + HERE_ONLY}
    # batch: an artist's job (GIMP, interactive) arriving meanwhile runs first; this one pauses and resumes after
    wire = replace(spec, styles=tuple(styles), options=options, content_layer=None, priority=Priority.BATCH)
    check(wire, LIMITS, over_http=True)      # what the daemon would refuse, said before the upload
    return wire.to_json(), files


class DaemonEngine:
    """Sends the job to a running ``stylebridge serve`` so every front end shares one GPU.

    One job description (:func:`wire_job`: the same JobSpec, as ``JobSpec.to_json()``) with the files it
    names. Photos go up as their own file bytes (the daemon keeps 16-bit and ICC); PSD content and
    PSD style layers go up as PNG.  The daemon builds the layer stack and the PSD itself
    (``GET /v1/jobs/{id}/result.psd``), so it is written with the same document settings.
    """

    allows_library = True

    def __init__(self, url: str, token: str | None = None, poll_seconds: float = 0.5) -> None:
        from ..daemon.client import DaemonClient
        self.url = url.rstrip("/")
        self.client = DaemonClient(self.url, token)
        self.poll_seconds = poll_seconds

    def check(self) -> str | None:
        """None if the daemon answers /v1/health and speaks this protocol, else a message for the terminal."""
        from ..daemon.client import ClientError, DaemonUnreachable, unreachable_message
        try:
            return self._protocol_problem(self._health())
        except Unavailable as exc:
            return str(exc)
        except DaemonUnreachable as exc:
            return unreachable_message(exc.url, exc.reason)
        except ClientError as exc:
            return str(exc)

    def _health(self) -> dict:
        """The daemon's /v1/health; :class:`Unavailable` naming the token or the URL when the answer is a
        refusal of this watcher's token, or does not come from a stylebridge daemon at all."""
        from ..protocol import DaemonError, NotADaemon
        try:
            return self.client.health()
        except NotADaemon as exc:
            raise Unavailable(self._not_a_daemon(exc.what), ADVICE_URL) from None
        except DaemonError as exc:
            raise self._refused(exc) from None

    def _refused(self, exc: Any) -> Exception:
        """A :class:`~bridge.daemon.client.DaemonError` on /v1/health (or any request) as what to tell the user:
        a stylebridge daemon refusing the token (401 with its JSON ``error``), another refusal by a stylebridge
        daemon (its own words), or an answer that no stylebridge daemon gives."""
        from ..protocol import TOKEN_ENV
        ours = "error" in exc.payload
        if exc.status == 401 and ours:
            if self.client.token:
                what = (f"the stylebridge daemon at {self.url} refused this watcher's token (set by "
                        f"`stylebridge watch --token` or {TOKEN_ENV} in the watcher's environment): it must be "
                        "the token the daemon was started with (`stylebridge serve --token`)")
            else:
                what = (f"the stylebridge daemon at {self.url} needs a token and this watcher has none: give it "
                        f"with `stylebridge watch --token T` or {TOKEN_ENV} in the watcher's environment (the "
                        "token the daemon was started with, `stylebridge serve --token`)")
            return Unavailable(what, ADVICE_TOKEN)
        if ours and exc.status != 404:
            return Unavailable(f"the stylebridge daemon at {self.url} answered {exc.status}: {exc.message}")
        return Unavailable(self._not_a_daemon(f"it answered HTTP {exc.status} to GET /v1/health"), ADVICE_URL)

    def _not_a_daemon(self, what: str) -> str:
        return f"{self.url} does not look like a stylebridge daemon ({what}); check the --daemon URL"

    def _protocol_problem(self, health: dict) -> str | None:
        """A daemon older than protocol 2 does not read the ``job`` field: say which side to upgrade."""
        from ..protocol import upgrade_message
        from ..job import PROTOCOL_VERSION
        theirs = health.get("protocol") if isinstance(health, dict) else None
        if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs >= PROTOCOL_VERSION:
            return None
        return upgrade_message(self.url, theirs if isinstance(theirs, int) and theirs > 0 else 1)

    def render(self, inputs: Inputs, source: Path, dest: Path, report: ReportFn, cancel: CancelToken, *,
               checkpoint: Checkpoint | None = None) -> None:
        from ..daemon.client import DaemonError, DaemonUnreachable, JobFailed, unreachable_message
        from ..protocol import DaemonTooOld
        from .resume import follow
        from ..imaging import encode_png
        from ..progress import status_line
        stem = inputs.content.name
        if inputs.source_kind in ("psd", "psb"):
            content: tuple[str, bytes] = (f"{stem}.png", encode_png(inputs.content))
        else:
            ext = {"jpeg": "jpg", "tiff": "tif"}.get(inputs.source_kind, inputs.source_kind)
            content = (f"{stem}.{ext}", source.read_bytes())
        job_json, style_files = wire_job(inputs)
        names = ", ".join(inputs.names)
        state = {"last": None}

        def on_progress(status: dict) -> bool:
            if cancel.cancelled or cancel.paused:       # the watcher stops
                return False
            key = (status.get("status"), status.get("stage"), int((status.get("percent") or 0) // 5))
            if key != state["last"]:
                state["last"] = key
                report(f"daemon: {status_line(status)}", float(status.get("percent") or 0.0), "")
            return True

        try:
            problem = self._protocol_problem(self._health())
            if problem is not None:
                raise Unavailable(problem)
            job = self.client.submit_job(content, job_json, style_files=style_files)
            report(f"sent to {self.url} as job {job.get('id')}", 0.0, names)
            try:
                follow(self.client, job["id"], on_progress=on_progress, poll=self.poll_seconds, cancel=cancel,
                       say=lambda text: report(text, None, ""))      # across a restart of the daemon
            except JobFailed as exc:
                if cancel.cancelled or exc.status.get("status") == "cancelled":
                    raise Cancelled() from None
                raise JobError(f"the daemon failed this job: {exc}", ADVICE_ENGINE) from None
            report("downloading PSD", 100.0, "")
            self.client.download_psd(job["id"], dest)
            try:
                self.client.delete(job["id"])      # free the daemon's memory; best effort
            except Exception:  # noqa: BLE001
                pass
        except DaemonUnreachable as exc:
            raise Unavailable(unreachable_message(exc.url, exc.reason)) from None
        except DaemonTooOld as exc:          # not the file's fault: it waits for the daemon's upgrade
            raise Unavailable(str(exc)) from None
        except DaemonError as exc:
            if exc.status == 401:      # the token: this watcher's setting, not the file's fault
                raise self._refused(exc) from None
            if exc.status == 429:      # its queue is full: not the file's fault, retry later
                raise Unavailable(f"the daemon is busy: {exc.message}") from None
            if exc.status >= 500:
                raise JobError(f"the daemon answered {exc.status}: {exc.message}", ADVICE_ENGINE) from None
            # over a size limit (pixels, upload, the job's memory) the file is too big: not a settings matter
            too_big = exc.payload.get("limit") in ("max_pixels", "max_upload_bytes", "max_job_memory")
            raise JobError(f"the daemon refused the job: {exc.message}",
                           ADVICE_SIZE if too_big else ADVICE_SETTINGS) from None


def output_suffix(content: Picture) -> str:
    """'.psb' for documents too large for PSD (the PSD writer's own rule)."""
    from ..document.psd import psd_suffix
    return psd_suffix(content.width, content.height)
