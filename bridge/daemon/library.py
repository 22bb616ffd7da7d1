"""The style library: style images the artist keeps on disk and picks by name.

Each style is one image file ``NAME.EXT`` in the styles folder (the original bytes, so nothing is
lost); thumbnails are made on demand and cached in ``.thumbs/``. Names are checked against a
strict pattern so a name can never reach outside the folder.

What counts as a style is decided in one place, :meth:`StyleLibrary.open`, which the listing and every
lookup (image, thumbnail, delete, replace, a job's or a preview's library style) go through: a *regular
file* (never a link, folder, FIFO or device: opened with ``O_NOFOLLOW`` and checked with ``fstat``, so a
link to ``/etc/passwd`` is neither listed nor served) whose name is a valid style name with one of our
extensions, whose header is PNG/JPEG/TIFF/WebP within ``max_pixels`` and which is not visibly cut short.
Whatever is listed can be fetched; whatever is not listed answers 404.
"""

from __future__ import annotations

import io
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from PIL import Image

from ..imaging import ImageError, Picture, image_kind, load_image, probe
from ..outputs import atomic_write
from ..settings import LIMITS

DATA_ENV = "STYLEBRIDGE_DATA"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,79}$")
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "WEBP": ".webp"}
THUMB_SIZE = 256
THUMBS = ".thumbs"
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff", "WEBP": "image/webp"}
#: Opening a library file: never through a link, never blocking on a FIFO (the fstat check then refuses it).
OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
MAX_THUMB_BYTES = 8 * 1024 * 1024     # a cached thumbnail larger than this is not ours: made again


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


def valid_name(name: str) -> bool:
    """Letters, digits, space, ``_.()+-``; starts with a letter or digit, no ``..``, no trailing dot."""
    return bool(NAME_RE.match(name)) and ".." not in name and not name.endswith(".")


def check_name(name: str) -> str:
    """A safe style name (letters, digits, space, ``_.()+-``; no leading dot, no ``..``) or LibraryError."""
    name = (name or "").strip()
    if not valid_name(name):
        raise LibraryError(f"style name {name[:100]!r} is not allowed: use 1-80 letters, digits, spaces and "
                           "_ . ( ) + - (starting with a letter or digit, no '..')")
    return name


def name_from_filename(filename: str | None, fallback: str = "style") -> str:
    """A safe name from an uploaded file's name (``My Style.jpg`` -> ``My Style``)."""
    stem = Path((filename or "").replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9 _.()+-]+", "_", stem).strip(" ._")[:80].replace("..", "_")
    return stem if stem and NAME_RE.match(stem) else fallback


def open_regular(path: Path) -> BinaryIO | None:
    """``path`` opened for reading when it is a regular file and not a link (``O_NOFOLLOW`` + ``fstat``),
    else None: links, folders, FIFOs, devices and missing files alike."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):    # where O_NOFOLLOW is missing (Windows), this decides
            return None
        fd = os.open(path, OPEN_FLAGS)
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


@dataclass
class StyleEntry:
    name: str
    path: Path
    width: int
    height: int
    bytes: int
    format: str = "PNG"

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


class StyleLibrary:
    """Style images in one folder; safe for concurrent requests (one lock for writes)."""

    def __init__(self, folder: Path, max_pixels: int = LIMITS.max_pixels) -> None:
        self.folder = Path(folder)
        self.max_pixels = max_pixels
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)

    # -- the one predicate -------------------------------------------------------------------------------
    def _candidate(self, path: Path, name: str) -> tuple[StyleEntry, BinaryIO] | None:
        fh = open_regular(path)
        if fh is None:
            return None
        try:
            info = probe(fh)                 # the header only, the one probe (bridge.imaging.probe)
            fmt = info.kind.upper()
            ok = fmt in MEDIA_TYPES and 0 < info.pixels <= self.max_pixels and info.complete
        except Exception:  # noqa: BLE001 - any file someone dropped in that is no image we read: not a style
            ok = False
        if not ok:
            fh.close()
            return None
        return StyleEntry(name, path, info.width, info.height, info.file_bytes, fmt), fh

    def open(self, name: str) -> tuple[StyleEntry, BinaryIO]:
        """The style ``name`` and its file, open for reading (the caller closes it); 404 when there is none.

        The one rule for "is a style" (see the module docstring): the listing, the image and thumbnail
        routes, delete, replace, jobs and previews all come here, so they always agree. Reading from the
        returned file (not the path again) means the file checked is the file used."""
        name = check_name(name)
        for ext in EXTENSIONS.values():
            found = self._candidate(self.folder / f"{name}{ext}", name)
            if found is not None:
                return found
        raise LibraryError(f"no style named {name!r} in the library", status=404)

    def entry(self, name: str) -> StyleEntry:
        entry, fh = self.open(name)
        fh.close()
        return entry

    def _names(self) -> Iterator[str]:
        try:
            with os.scandir(self.folder) as it:
                files = [e.name for e in it]
        except OSError:
            return
        seen: set[str] = set()
        for filename in files:
            stem, dot, ext = filename.rpartition(".")
            if dot and f".{ext.lower()}" in EXTENSIONS.values() and valid_name(stem) and stem not in seen:
                seen.add(stem)
                yield stem

    def list(self) -> list[StyleEntry]:
        """Every style, by name; anything else in the folder is not offered (and answers 404 by name)."""
        out = []
        for name in self._names():
            try:
                out.append(self.entry(name))
            except LibraryError:
                continue
        return sorted(out, key=lambda e: (e.name.lower(), e.name))

    def path(self, name: str) -> Path:
        return self.entry(name).path

    def load(self, name: str) -> Picture:
        entry, fh = self.open(name)
        with fh:
            return load_image(fh, max_pixels=self.max_pixels, name=entry.name)

    # -- writes --------------------------------------------------------------------------------------------
    def add(self, name: str, data: bytes, *, replace: bool = False) -> StyleEntry:
        """Store an uploaded image under ``name`` after checking it decodes; 409 if taken (unless replace).

        Never writes through a link: the new file is written beside and renamed over the name; a link,
        folder or other non-file in the way is left alone (409, the artist removes it by hand)."""
        name = check_name(name)
        picture = load_image(io.BytesIO(data), max_pixels=self.max_pixels, name=name)  # full decode: no broken files
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or "PNG"
        ext = EXTENSIONS.get(fmt)
        with self._lock:
            try:
                existing: Path | None = self.path(name)
            except LibraryError:
                existing = None
            if ext is None:   # e.g. BMP, GIF: keep it as PNG
                from ..imaging import encode_png
                data, ext = encode_png(picture, compress_level=6), ".png"
            target = self.folder / f"{name}{ext}"
            try:
                in_way = os.lstat(target)
            except OSError:
                in_way = None
            if in_way is not None and not stat.S_ISREG(in_way.st_mode):
                raise LibraryError(f"{target.name} in the styles folder is a link, folder or device, not a style "
                                   f"image; remove it from {self.folder} by hand to use the name {name!r}", status=409)
            if (existing is not None or in_way is not None) and not replace:
                raise LibraryError(f"a style named {name!r} already exists (send replace=true to replace it)",
                                   status=409)
            atomic_write(target, data)
            if existing is not None and existing != target:
                existing.unlink(missing_ok=True)
            self._drop_thumb(name)
        return StyleEntry(name, target, picture.width, picture.height, len(data), fmt if fmt in MEDIA_TYPES else "PNG")

    def remove(self, name: str) -> None:
        with self._lock:
            path = self.path(name)
            path.unlink()
            self._drop_thumb(name)

    # -- thumbnails ----------------------------------------------------------------------------------------
    def _thumbs(self, create: bool = False) -> Path | None:
        """The thumbnail cache folder, or None when ``.thumbs`` is a link or not a folder (then nothing is
        cached, read or removed there: never through a link)."""
        folder = self.folder / THUMBS
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            if not create:
                return None
            try:
                folder.mkdir()
            except OSError:
                return None
            mode = os.lstat(folder).st_mode
        except OSError:
            return None
        return folder if stat.S_ISDIR(mode) else None

    def _drop_thumb(self, name: str) -> None:
        folder = self._thumbs()
        if folder is not None:
            (folder / f"{name}.png").unlink(missing_ok=True)   # unlink never follows a link

    def _cached_thumb(self, name: str, mtime: float) -> bytes | None:
        folder = self._thumbs()
        fh = open_regular(folder / f"{name}.png") if folder is not None else None
        if fh is None:
            return None
        with fh:
            st = os.fstat(fh.fileno())
            if st.st_mtime < mtime or st.st_size > MAX_THUMB_BYTES:
                return None
            data = fh.read(MAX_THUMB_BYTES + 1)
        return data if image_kind(data[:16]) == "png" else None

    def thumbnail(self, name: str) -> bytes:
        """A PNG at most THUMB_SIZE px on its long side, cached beside the library."""
        entry, fh = self.open(name)
        with fh:
            cached = self._cached_thumb(entry.name, os.fstat(fh.fileno()).st_mtime)
            if cached is not None:
                return cached
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(fh) as im:
                        im.draft("RGB", (THUMB_SIZE, THUMB_SIZE))
                        im.load()
                        factor = min(im.size) // THUMB_SIZE
                        if factor > 1 and im.mode in ("L", "LA", "RGB", "RGBA"):
                            im = im.reduce(factor)      # before any mode conversion: no second full-size copy
                        im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
                        im.thumbnail((THUMB_SIZE, THUMB_SIZE))
                        buf = io.BytesIO()
                        im.save(buf, format="PNG", compress_level=6)
            except Exception as exc:  # noqa: BLE001 - damage deep inside a file whose header is fine
                raise ImageError(f"style {entry.name!r}: cannot read the image ({exc})") from None
        data = buf.getvalue()
        folder = self._thumbs(create=True)
        if folder is not None:
            try:
                atomic_write(folder / f"{entry.name}.png", data)   # a temp file renamed over the name
            except OSError:
                pass                                                # a read-only library still shows thumbnails
        return data
