"""The style library: style images the artist keeps on disk and picks by name.

Each style is one image file ``NAME.EXT`` in the styles folder (the original bytes, so nothing is
lost); thumbnails are made on demand and cached in ``.thumbs/``. Names are checked against a
strict pattern so a name can never reach outside the folder.
"""

from __future__ import annotations

import io
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..imaging import ImageError, Picture, atomic_write, load_image
from ..settings import LIMITS

DATA_ENV = "STYLEBRIDGE_DATA"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,79}$")
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp"}
THUMB_SIZE = 256


class LibraryError(ValueError):
    """A library request cannot be honoured; ``status`` is the HTTP status that fits."""

    def __init__(self, message: str, status: int = 422) -> None:
        self.status = status
        super().__init__(message)


def default_data_dir() -> Path:
    """``$STYLEBRIDGE_DATA``, else ``$XDG_DATA_HOME/stylebridge``, else ``~/.local/share/stylebridge``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "stylebridge"


def check_name(name: str) -> str:
    """A safe style name (letters, digits, space, ``_.()+-``; no leading dot, no ``..``) or LibraryError."""
    name = (name or "").strip()
    if not NAME_RE.match(name) or ".." in name or name.endswith("."):
        raise LibraryError(f"style name {name[:100]!r} is not allowed: use 1-80 letters, digits, spaces and "
                           "_ . ( ) + - (starting with a letter or digit, no '..')")
    return name


def name_from_filename(filename: str | None, fallback: str = "style") -> str:
    """A safe name from an uploaded file's name (``My Style.jpg`` -> ``My Style``)."""
    stem = Path((filename or "").replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9 _.()+-]+", "_", stem).strip(" ._")[:80].replace("..", "_")
    return stem if stem and NAME_RE.match(stem) else fallback


@dataclass
class StyleEntry:
    name: str
    path: Path
    width: int
    height: int
    bytes: int


class StyleLibrary:
    """Style images in one folder; safe for concurrent requests (one lock for writes)."""

    def __init__(self, folder: Path, max_pixels: int = LIMITS.max_pixels) -> None:
        self.folder = Path(folder)
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)

    def _find(self, name: str) -> Path | None:
        name = check_name(name)
        for ext in EXTENSIONS.values():
            path = self.folder / f"{name}{ext}"
            if path.is_file():
                return path
        return None

    def list(self) -> list[StyleEntry]:
        out = []
        for path in sorted(self.folder.iterdir(), key=lambda p: p.name.lower()):
            if not path.is_file() or path.suffix.lower() not in EXTENSIONS.values() or path.name.startswith("."):
                continue
            if not NAME_RE.match(path.stem):
                continue
            try:
                with Image.open(path) as im:
                    width, height = im.size
            except (OSError, ValueError, Image.DecompressionBombError):
                continue   # a damaged file someone dropped in: not offered
            out.append(StyleEntry(path.stem, path, width, height, path.stat().st_size))
        return out

    def path(self, name: str) -> Path:
        path = self._find(name)
        if path is None:
            raise LibraryError(f"no style named {name!r} in the library", status=404)
        return path

    def load(self, name: str) -> Picture:
        return load_image(self.path(name), max_pixels=self.max_pixels, name=check_name(name))

    def add(self, name: str, data: bytes, *, replace: bool = False) -> StyleEntry:
        """Store an uploaded image under ``name`` after checking it decodes; 409 if taken (unless replace)."""
        name = check_name(name)
        picture = load_image(io.BytesIO(data), max_pixels=self.max_pixels, name=name)  # full decode: no broken files
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "PNG"
        ext = EXTENSIONS.get(fmt)
        with self._lock:
            existing = self._find(name)
            if existing is not None and not replace:
                raise LibraryError(f"a style named {name!r} already exists (send replace=true to replace it)",
                                   status=409)
            if ext is None:   # e.g. BMP, GIF: keep it as PNG
                from ..imaging import encode_png
                data, ext = encode_png(picture, compress_level=6), ".png"
            target = self.folder / f"{name}{ext}"
            atomic_write(target, data)
            if existing is not None and existing != target:
                existing.unlink(missing_ok=True)
            self._thumb_path(name).unlink(missing_ok=True)
        return StyleEntry(name, target, picture.width, picture.height, len(data))

    def remove(self, name: str) -> None:
        with self._lock:
            path = self.path(name)
            path.unlink()
            self._thumb_path(name).unlink(missing_ok=True)

    def _thumb_path(self, name: str) -> Path:
        return self.folder / ".thumbs" / f"{name}.png"

    def thumbnail(self, name: str) -> bytes:
        """A PNG at most THUMB_SIZE px on its long side, cached beside the library."""
        path = self.path(name)
        thumb = self._thumb_path(name)
        if thumb.is_file() and thumb.stat().st_mtime >= path.stat().st_mtime:
            return thumb.read_bytes()
        try:
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > self.max_pixels:
                    raise LibraryError(f"style {name!r} is too large to show", status=422)
                im.draft("RGB", (THUMB_SIZE, THUMB_SIZE))
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
                im.thumbnail((THUMB_SIZE, THUMB_SIZE))
                buf = io.BytesIO()
                im.save(buf, format="PNG", compress_level=6)
        except (OSError, ValueError) as exc:
            raise ImageError(f"style {name!r}: cannot read the image ({exc})") from None
        data = buf.getvalue()
        thumb.parent.mkdir(exist_ok=True)
        atomic_write(thumb, data)
        return data
