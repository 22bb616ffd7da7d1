"""Quick style previews beside the job queue (``POST /v1/previews``).

A preview (:mod:`bridge.preview`: a feed-forward network, a fraction of a second per style) helps choose
styles before a Gatys job that takes minutes, so it must never wait behind one: previews run in their
own single worker thread, not in the engine's queue. One at a time bounds their memory and CPU; a few
more may wait, beyond that the daemon answers 429. The ONNX networks are loaded once, on first use.

Threads: a Gatys job on the CPU uses every core through torch, so previews take at most half of them
(one on a 2-core machine) and onnxruntime's workers do not spin (:func:`bridge.preview.models.load_models`);
with the engine on a GPU the CPU is free and previews use :func:`~bridge.preview.models.default_threads`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from ..imaging import Picture
from ..preview import engine as preview_engine
from ..preview.models import PreviewModels, default_threads, load_models

DEFAULT_SIZE = preview_engine.DEFAULT_LONG_SIDE     # 512
MAX_SIZE = 1024                                     # long side of an HTTP preview
MIN_SIZE = 16
MAX_WAITING = 4                                     # previews waiting for the preview worker; more -> 429


STYLE_SIDE = 1024      # styles are reduced to this long side once decoded (the network sees 256 px of them)


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


class PreviewService:
    """Renders previews in its own worker thread; the models load lazily, once, under a lock."""

    def __init__(self, threads: int | None = None, loader: Callable[..., PreviewModels] = load_models) -> None:
        self.threads = threads or preview_threads("cpu")
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

    def render(self, load: Callable[[], tuple[Picture, Sequence[tuple[str, Picture]]]],
               long_side: int = DEFAULT_SIZE) -> list[preview_engine.StylePreview]:
        """One preview per (name, style image) that ``load`` decodes, in order.

        ``load`` runs in the preview worker too, so only one request's images are ever decoded at a time
        (waiting requests hold their uploads, spooled to disk). Blocks the calling (request) thread only;
        :class:`PreviewBusy` when ``MAX_WAITING`` requests wait already."""
        if not self._waiting.acquire(blocking=False):
            raise PreviewBusy()
        try:
            return self._executor.submit(self._render, load, long_side).result()
        finally:
            self._waiting.release()

    def _render(self, load: Callable[[], tuple[Picture, Sequence[tuple[str, Picture]]]],
                long_side: int) -> list[Any]:
        photo, styles = load()
        models = self.models()
        return [preview_engine.preview(photo, style, style_name=name, long_side=long_side, models=models)
                for name, style in styles]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
