"""A queued job's files: the paths of its uploads until it starts, its decoded pictures when it does.

A queued job holds only paths (:class:`JobFiles`, in the daemon's data folder); :meth:`JobFiles.load` decodes
them when the job starts (:class:`LoadedJob`), and the folder is removed when the job ends. ``job.json``
beside the uploads (:mod:`.persist`) lets a restarted daemon take the job over.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.types import StyleInput
from ..imaging import Picture
from ..settings import DocumentSettings, Settings
from ..pipeline import LoadedJob
from .memory import ImageShape


@dataclass
class JobFiles:
    """A submitted job as it waits in the queue: validated settings and the paths of its uploads.

    Nothing is decoded until :meth:`load`, when the job starts; ``folder`` (the uploads) is
    removed when the job ends, whatever the way."""

    folder: Path
    content: Path
    content_name: str
    content_shape: ImageShape
    styles: list[tuple[str, Path]]        # (layer name, file): uploads and links to library files
    settings: Settings
    document: DocumentSettings
    mask: Path | None = None
    style_masks: list[tuple[str, Path]] = field(default_factory=list)   # (style layer name, mask file)
    regions: list[tuple[str, Path]] = field(default_factory=list)       # (style name, where it is painted)
    name: str | None = None
    estimate: int = 0
    max_pixels: int = 200_000_000
    priority: str = "interactive"        # bridge.job.Priority: a batch job pauses for an interactive one
    spec: dict[str, Any] | None = None   # the job as submitted (JobSpec.to_json), kept in its job.json

    def load(self) -> LoadedJob:
        """Decode the uploads: the photo, each style, the mask (ImageError names which one failed)."""
        from ..imaging import ImageError, MetadataWarning, load_image, load_mask
        from ..job import load_region

        def decode(path: Path, what: str, name: str) -> Picture:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", MetadataWarning)
                    picture = load_image(path.read_bytes(), max_pixels=self.max_pixels, name=name)
            except OSError as exc:
                raise ImageError(f"{what}: the upload is gone ({exc.strerror or exc})") from None
            except ImageError as exc:
                raise ImageError(f"{what}: {_strip_upload(str(exc))}") from None
            for w in caught:        # what reading dropped, named by the upload it is about
                message = f"{what}: {_strip_upload(str(w.message))}" if issubclass(w.category, MetadataWarning) \
                    else w.message
                warnings.warn_explicit(message, w.category, w.filename, w.lineno)
            return picture

        content = decode(self.content, "content", self.content_name)
        styles = [StyleInput(name, decode(path, f"style {name!r}", name)) for name, path in self.styles]

        def decode_mask(path: Path, what: str) -> np.ndarray:
            try:
                return load_mask(path.read_bytes(), (content.width, content.height),
                                 depth=content.bit_depth, max_pixels=self.max_pixels)
            except OSError as exc:
                raise ImageError(f"{what}: the upload is gone ({exc.strerror or exc})") from None
            except ImageError as exc:
                raise ImageError(f"{what}: {_strip_upload(str(exc))}") from None

        mask = decode_mask(self.mask, "mask") if self.mask is not None else None
        style_masks = {name: decode_mask(path, f"mask of style {name!r}") for name, path in self.style_masks}

        def decode_region(path: Path, style: str) -> np.ndarray:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ImageError(f"region of style {style!r}: the upload is gone ({exc.strerror or exc})") from None
            return load_region(data, (content.width, content.height), style=style, max_pixels=self.max_pixels)

        regions = {style: decode_region(path, style) for style, path in self.regions}
        return LoadedJob(content=content, styles=styles, settings=self.settings, document=self.document,
                          mask=mask, style_masks=style_masks, name=self.name, regions=regions)


def _strip_upload(message: str) -> str:
    return message[len("upload: "):] if message.startswith("upload: ") else message
