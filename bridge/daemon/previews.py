"""Quick style previews beside the job queue (``POST /v1/previews``).

A preview (:mod:`bridge.preview`: a feed-forward network, a fraction of a second per style) helps choose
styles before a Gatys job that takes minutes, so it must never wait behind one: previews run in their
own single worker thread, not in the engine's queue. One at a time bounds their memory and CPU; a few
more may wait, beyond that the daemon answers 429. The ONNX networks are loaded once, on first use.

Threads: a Gatys job on the CPU uses every core through torch, so previews take at most half of them
(one on a 2-core machine) and onnxruntime's workers do not spin (:func:`bridge.preview.models.load_models`);
with the engine on a GPU the CPU is free and previews use :func:`~bridge.preview.models.default_threads`.

Bounds: every image of a request is header-probed before anything is decoded (the route: 413 over
``max_pixels``, over ``max_job_memory`` by :func:`preview_memory`, over ``PREVIEW.max_decode_pixels``);
images are then decoded *reduced* (:func:`decode_reduced`: JPEG's DCT scaling, ``Image.reduce`` right after
the load for the others), and a request has a time budget (``PREVIEW.request_seconds``): styles not begun
when it runs out come back as :class:`SkippedPreview` instead of holding the worker.

Faithful previews (``method="faithful"``: a small real Gatys run with the job's settings,
:mod:`bridge.preview.faithful`, seconds per style instead of a fraction of one) run in the same preview worker,
so they never enter or delay the job queue: a queued job starts when the engine worker is free, whatever previews
do. They share the machine with a running job instead (on a CPU torch's threads are shared: the job is slowed for
the preview's seconds; on a GPU the preview's ~176 px run is small beside a job's). To keep that short, a faithful
request renders at most ``PREVIEW.faithful_max_styles`` styles (the others come back skipped, reason ``"limit"``)
within ``PREVIEW.faithful_request_seconds``; the route cancels the run in progress when the client goes away
(:class:`bridge.engine.types.CancelToken`, checked every iteration).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Sequence, Union

import numpy as np
from PIL import Image

from ..imaging import Picture, load_image
from ..settings import DEFAULTS, PREVIEW, Settings
from ..preview import engine as preview_engine
from ..preview import faithful as preview_faithful
from ..preview.models import PreviewModels, default_threads, load_models
from .memory import ImageShape

DEFAULT_SIZE, MIN_SIZE, MAX_SIZE = PREVIEW.size, PREVIEW.min_size, PREVIEW.max_size   # long side of a preview
MAX_WAITING = 4                                     # previews waiting for the preview worker; more -> 429


STYLE_SIDE = 1024      # styles are reduced to this long side once decoded (the network sees 256 px of them)
# Memory of a preview request, for max_job_memory (an upper bound, like the jobs' estimate): the networks and
# onnxruntime's buffers, plus the largest image decoded at once: Pillow keeps 4 bytes a pixel (8 at 16 bits),
# and a mode conversion before the reduction (palette, grey+alpha) or the fallback decoder may copy it once.
PREVIEW_BASE_BYTES = 192 * 2 ** 20
DECODE_BYTES = 8
FAST_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA"})
ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}


@dataclass
class PreviewImage:
    """One image of a preview request, probed but not decoded: the open file (decoded later from this very
    file), what its header says, and the long side it will be reduced to."""

    what: str                  # for messages: "content", "style file 'x.png'", "style 'starry'"
    name: str                  # the picture's name (a style's label)
    file: BinaryIO
    shape: ImageShape
    long_side: int
    jpeg: bool = False

    @property
    def decoded_pixels(self) -> int:
        """Pixels the decoder produces at once: a JPEG's at its DCT scale (Pillow's draft, 1/2/4/8 per side)."""
        if not self.jpeg:
            return self.shape.pixels
        tw, th = preview_engine.preview_size(self.shape.width, self.shape.height, self.long_side)
        scale = min(self.shape.width // tw, self.shape.height // th)
        scale = next((s for s in (8, 4, 2) if scale >= s), 1)
        return -(-self.shape.width // scale) * -(-self.shape.height // scale)

    @property
    def memory(self) -> int:
        return self.decoded_pixels * DECODE_BYTES * (2 if self.shape.bit_depth == 16 else 1)


def preview_memory(images: Sequence[PreviewImage]) -> int:
    """Bytes a preview request needs at most: images are decoded one at a time and reduced at once (the base
    covers the reduced photo and style held meanwhile and the networks' work at preview size)."""
    return PREVIEW_BASE_BYTES + max((i.memory for i in images), default=0)


def decode_reduced(image: PreviewImage, max_pixels: int) -> Picture:
    """The image at most ``image.long_side`` on its long side, 8-bit RGB over white, never held at full size
    longer than its decoding: JPEGs decode at a reduced DCT scale, the others are ``reduce``d right after
    the load. Modes Pillow cannot reduce as colours (16-bit, LAB, float) go through :func:`load_image`
    (the route's memory estimate counts that copy). Raises what the decoders raise."""
    fh = image.file
    fh.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(fh) as im:
            if im.size[0] * im.size[1] > max_pixels:        # the file changed since it was probed
                raise ValueError(f"{im.size[0]}x{im.size[1]} is over the limit of {max_pixels:,} pixels")
            target = preview_engine.preview_size(im.size[0], im.size[1], image.long_side)
            if im.format == "JPEG":
                im.draft("RGB", target)
            if im.mode not in FAST_MODES:
                fh.seek(0)
                return reduced(load_image(fh, max_pixels=max_pixels, name=image.name), image.long_side)
            orientation = im.getexif().get(0x0112, 1)
            alpha = "A" in im.getbands() or "a" in im.mode or "transparency" in im.info
            im.load()
            factor = min(im.size[0] // target[0], im.size[1] // target[1])
            out = im
            if factor > 1:
                if out.mode not in REDUCIBLE:
                    out = out.convert("RGBA" if alpha else "RGB")
                out = out.reduce(factor)
            out = out.convert("RGBA" if alpha else "RGB")
            if orientation in ORIENTATION:
                out = out.transpose(ORIENTATION[orientation])
    if alpha:
        white = Image.new("RGBA", out.size, (255, 255, 255, 255))
        out = Image.alpha_composite(white, out).convert("RGB")
    return reduced(Picture(rgb=np.asarray(out), name=image.name), image.long_side)


@dataclass(frozen=True)
class SkippedPreview:
    """A style the request's time budget left no time for: answered with why, not rendered."""

    style_name: str
    reason: str                # "timeout", or "limit" (over PREVIEW.faithful_max_styles), or "cancelled"
    message: str

    @property
    def label(self) -> str:
        return f"{self.style_name} (preview)"


StyleSource = Union[Picture, Callable[[], Picture]]


def reduced(picture: Picture, long_side: int) -> Picture:
    """The picture at most ``long_side`` on its long side, 8-bit RGB over white (what a preview uses of it),
    so a decoded upload is freed at once instead of held at full size while the others decode."""
    if max(picture.width, picture.height) <= long_side:
        return picture
    size = preview_engine.preview_size(picture.width, picture.height, long_side)
    return Picture(rgb=preview_engine.resized(preview_engine.rgb8(picture), size), name=picture.name)


class PreviewBusy(Exception):
    """Too many previews are waiting already."""


def preview_threads(device: str) -> int:
    """onnxruntime intra-op threads for previews beside jobs on ``device`` (see the module docstring)."""
    if device != "cpu":
        return default_threads()
    return max(1, min(4, (os.cpu_count() or 1) // 2))


METHODS = ("instant", "faithful")    # POST /v1/previews ``method``; "instant" is the feed-forward network


class PreviewService:
    """Renders previews in its own worker thread; the models load lazily, once, under a lock.

    ``faithful``: the function that renders one faithful preview (the seam tests replace), called as
    :func:`bridge.preview.faithful.faithful_preview` is."""

    def __init__(self, threads: int | None = None, loader: Callable[..., PreviewModels] = load_models,
                 budget_s: float = PREVIEW.request_seconds,
                 faithful: Callable[..., preview_engine.StylePreview] = preview_faithful.faithful_preview,
                 faithful_budget_s: float = PREVIEW.faithful_request_seconds,
                 faithful_max_styles: int = PREVIEW.faithful_max_styles) -> None:
        self.threads = threads or preview_threads("cpu")
        self.budget_s = budget_s
        self.faithful = faithful
        self.faithful_budget_s = faithful_budget_s
        self.faithful_max_styles = faithful_max_styles
        self._loader = loader
        self._models: PreviewModels | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stylebridge-preview")
        self._waiting = threading.BoundedSemaphore(1 + MAX_WAITING)

    def models(self) -> PreviewModels:
        """The networks (PreviewModelError when missing), loaded on first use."""
        with self._lock:
            if self._models is None:
                self._models = self._loader(threads=self.threads)
            return self._models

    def render(self, load: Callable[[], tuple[Picture, Sequence[tuple[str, StyleSource]]]],
               long_side: int = DEFAULT_SIZE, *, method: str = "instant", settings: Settings = DEFAULTS,
               cancel: Any = None) -> list[preview_engine.StylePreview | SkippedPreview]:
        """One preview per (name, style) that ``load`` returns, in order; a style may be a function that
        decodes it, called only when its turn comes.

        ``load`` runs in the preview worker too, so only one request's images are ever decoded at a time
        (waiting requests hold their uploads, spooled to disk). Once ``budget_s`` has passed since the worker
        took the request, the styles left are :class:`SkippedPreview` (neither decoded nor rendered).
        Blocks the calling (request) thread only; :class:`PreviewBusy` when ``MAX_WAITING`` requests wait already.
        ``method`` "faithful": small Gatys runs with ``settings`` (see the module doc); ``cancel`` (a CancelToken)
        stops the one in progress and skips the rest."""
        return self.submit(load, long_side, method=method, settings=settings, cancel=cancel).result()

    def submit(self, load: Callable[[], tuple[Picture, Sequence[tuple[str, StyleSource]]]],
               long_side: int = DEFAULT_SIZE, *, method: str = "instant", settings: Settings = DEFAULTS,
               cancel: Any = None) -> "Future[list[Any]]":
        """:meth:`render` without waiting: the future of its answer (an async route waits on it while it
        watches the client)."""
        if method not in METHODS:
            raise ValueError(f"preview method {method!r} is not one of {', '.join(METHODS)}")
        if not self._waiting.acquire(blocking=False):
            raise PreviewBusy()
        try:
            future = self._executor.submit(self._render, load, long_side, method, settings, cancel)
        except BaseException:
            self._waiting.release()
            raise
        future.add_done_callback(lambda _f: self._waiting.release())
        return future

    def _render(self, load: Callable[[], tuple[Picture, Sequence[tuple[str, StyleSource]]]],
                long_side: int, method: str = "instant", settings: Settings = DEFAULTS, cancel: Any = None
                ) -> list[Any]:
        began = time.monotonic()
        faithful = method == "faithful"
        budget = self.faithful_budget_s if faithful else self.budget_s
        setting = "faithful_request_seconds" if faithful else "request_seconds"
        photo, styles = load()
        models = self.models() if styles and not faithful else None
        out: list[Any] = []
        for index, (name, style) in enumerate(styles):
            spent = time.monotonic() - began
            if cancel is not None and cancel.cancelled:
                out.append(SkippedPreview(name, "cancelled", "skipped: the request was cancelled (the client went "
                                                             "away)"))
                continue
            if faithful and index >= self.faithful_max_styles:
                out.append(SkippedPreview(name, "limit", (
                    f"skipped: a faithful request renders at most {self.faithful_max_styles} styles "
                    "(faithful_max_styles), so previews never hold the machine long beside a job; ask again for "
                    "this style")))
                continue
            if spent >= budget:
                out.append(SkippedPreview(name, "timeout", (
                    f"skipped: this request's time budget of {budget:g} s ({setting}) was spent "
                    f"after {spent:.1f} s on the styles before it; ask for this style again, or for fewer styles")))
                continue
            picture = style() if callable(style) else style
            if faithful:
                try:
                    out.append(self.faithful(photo, picture, settings=settings, style_name=name,
                                             long_side=long_side, cancel=cancel))
                except preview_faithful.PreviewCancelled:
                    out.append(SkippedPreview(name, "cancelled", "skipped: the request was cancelled (the client "
                                                                 "went away)"))
            else:
                out.append(preview_engine.preview(photo, picture, style_name=name, long_side=long_side,
                                                  models=models))
            del picture
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
