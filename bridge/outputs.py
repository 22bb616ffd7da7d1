"""Writing output files: never overwrite, never half-write, never leave a temporary file behind.

Everything that writes a file a user will see goes through here, so there is one rule for each thing:

- one naming rule, :func:`candidates`: ``NAME.ext``, then ``NAME-2.ext``, ``NAME-3.ext``... (with
  ``fit=True``, as the hot folder asks, each shortened to the file system's NAME_MAX: :func:`fit_name`);
- one way to put a finished file under its name, :func:`publish`: a *no-replace* rename or hard link that
  claims the first free candidate atomically, so two writers that want the same name both succeed, under
  different names, and each learns the name it really got (choosing a free name first and renaming later
  would let the second writer replace the first one's file); across file systems a hidden copy is claimed
  the same way; symbolic links are moved as links, never followed;
- one way to write, :func:`output_file`: the bytes go to a hidden temporary file in the target folder
  (same file system, so publishing is a rename), which is removed in ``finally`` on any failure
  (exception, Ctrl-C, disk full);
- one name for temporary files, ``.NAME.[XXXXXXXX.]PID.part``: hidden, ignored by the hot folder, and
  removable by :func:`remove_stale_parts` once the process PID that wrote it is gone (``kill -9``);
- the checks a long job runs *before* its work (:func:`probe_writable`, :func:`check_name`), so that a
  read-only folder or a name that is too long is reported in a second, not after an hour of work.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

MAX_CANDIDATES = 10_000          # NAME-2 ... NAME-10000, then give up (a folder that full is a mistake)
DEFAULT_NAME_MAX = 255
MAX_KEPT_SUFFIX = 16             # an "extension" longer than this is part of the stem
PART_SUFFIX = ".part"
_RANDOM = 8                      # mkstemp's random characters
_PART_RE = re.compile(r"^\..*\.(\d+)\.part$", re.DOTALL)
# errors of os.link that mean "no hard links here" (FAT, some network shares, another file system)
_NO_LINK = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS})


class OutputError(Exception):
    """The output cannot be written where asked; the message says what is wrong and what to do."""


# ------------------------------------------------------------------------------------------ names

def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (in bytes) the file system holding ``folder`` (or its nearest existing parent) allows."""
    try:
        return int(os.pathconf(nearest_existing(Path(folder)), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return DEFAULT_NAME_MAX


def name_bytes(name: str) -> int:
    """Length of ``name`` as the file system sees it (UTF-8; undecodable bytes kept as they were)."""
    return len(os.fsencode(name))


def fit_name(name: str, limit: int = DEFAULT_NAME_MAX) -> str:
    """``name`` shortened to at most ``limit`` bytes: the stem is cut on a character boundary and
    the extension kept, so ``fit_name("<300 bytes>.jpg", 255)`` still ends in ``.jpg``."""
    if name_bytes(name) <= limit:
        return name
    suffix = Path(name).suffix
    if not suffix or name_bytes(suffix) > min(MAX_KEPT_SUFFIX, limit // 2):
        suffix = ""
    stem = name[:len(name) - len(suffix)] if suffix else name
    budget = limit - name_bytes(suffix)
    out: list[str] = []
    used = 0
    for ch in stem:
        size = name_bytes(ch)
        if used + size > budget:
            break
        out.append(ch)
        used += size
    return "".join(out) + suffix


def candidates(wanted: str | os.PathLike, *, fit: bool = False) -> Iterator[Path]:
    """``wanted``, then ``stem-2.ext``, ``stem-3.ext``...: the one rule for a free name beside a taken one.

    ``fit``: each name shortened to the folder's NAME_MAX (the stem is cut, ``-N.ext`` kept), for a writer
    that must never refuse a name (the hot folder); without it a name that is too long stays too long
    and the write says so (the CLI checks first: :func:`check_name`).
    """
    wanted = Path(wanted)
    limit = name_max(wanted.parent) if fit else None
    first = fit_name(wanted.name, limit) if limit else wanted.name
    yield wanted.with_name(first)
    suffix = Path(first).suffix
    stem = first[:-len(suffix)] if suffix else first
    for n in range(2, MAX_CANDIDATES + 1):
        tail = f"-{n}{suffix}"
        yield wanted.with_name((fit_name(stem, limit - name_bytes(tail)) if limit else stem) + tail)


def unique_path(path: str | os.PathLike, *, fit: bool = False) -> Path:
    """The first candidate of ``path`` that does not exist *now*.

    Only a guess (another writer can take it a moment later): use it to show or check a name, and
    :func:`publish` / :func:`output_file` to actually claim one.
    """
    for cand in candidates(path, fit=fit):
        if not os.path.lexists(cand):
            return cand
    raise FileExistsError(errno.EEXIST, f"{MAX_CANDIDATES} names like this one are taken", str(path))


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest parent that exists."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_name(folder: str | os.PathLike, name: str, *, what: str = "output name") -> None:
    """Raise :class:`OutputError` unless ``name`` (and the free name it would get now) fits the file system."""
    limit = name_max(folder)
    free = unique_path(Path(folder) / name).name if os.path.isdir(folder) else name
    for n in dict.fromkeys((name, free)):
        size = len(os.fsencode(n))
        if size > limit:
            taken = f"{name!r} is taken and the next free name " if n != name else ""
            raise OutputError(f"{what} {taken}{n!r} is {size} bytes long; the file system allows {limit}: "
                              "choose a shorter name")


def part_name(name: str, folder: str | os.PathLike, *, random: int = 0) -> str:
    """``.NAME.PID.part``, NAME cut (at a character, on the file system's terms) so it always fits NAME_MAX.

    ``random`` > 0: the prefix ``.NAME.`` of ``.NAME.XXXXXXXX.PID.part``, leaving room for mkstemp's characters.
    """
    tail = f".{os.getpid()}{PART_SUFFIX}"
    extra = 1 + name_bytes(tail) + (1 + random if random else 0)
    base = "." + fit_name(name, max(1, name_max(folder) - extra))
    return base + "." if random else base + tail


def _temp_prefix(wanted: Path) -> str:
    """mkstemp's prefix ``.NAME.`` for a ``.NAME.XXXXXXXX.PID.part`` temporary file that fits NAME_MAX."""
    return part_name(wanted.name, wanted.parent, random=_RANDOM)


def _temp_suffix() -> str:
    return f".{os.getpid()}{PART_SUFFIX}"


# ---------------------------------------------------------------------------------- checks first

def probe_writable(folder: str | os.PathLike) -> None:
    """Create and remove a file in ``folder``: the only test that is true for root and read-only mounts too.

    Raises :class:`OutputError` with the reason and what to do.
    """
    folder = Path(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".stylebridge-probe.", suffix=_temp_suffix(), dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {explain(exc)}") from None
    os.close(fd)
    os.unlink(tmp)


def explain(exc: OSError) -> str:
    """The operating system's reason plus what a user can do about it."""
    reason = exc.strerror or str(exc)
    advice = {
        errno.EROFS: "the disk is mounted read-only: choose another output on a writable disk",
        errno.EACCES: "you may not write there: choose another output, or fix the folder's permissions",
        errno.EPERM: "you may not write there (or the folder is immutable): choose another output",
        errno.ENOSPC: "the disk is full: free some space, or choose another output on another disk",
        errno.EDQUOT: "your disk quota is used up: free some space, or choose another output",
        errno.ENAMETOOLONG: "the name is too long for the file system: choose a shorter name",
        errno.ENOTDIR: "part of the path is a file, not a folder: check the output path",
        errno.ENOENT: "the folder does not exist (any more): check the output path",
        errno.EIO: "the disk reported an input/output error: check the disk, or choose another output",
    }.get(exc.errno or 0)
    return f"{reason} ({advice})" if advice else reason


# ------------------------------------------------------------------------------------ publishing

def publish(src: str | os.PathLike, wanted: str | os.PathLike, *, keep_source: bool = False,
            fit: bool = False) -> Path:
    """Put the finished file ``src`` at ``wanted`` or its first free ``stem-N`` name; never replace anything.

    Each name is claimed by one atomic no-replace operation, and on "exists" the next name is tried:

    1. ``keep_source``: a hard link (the published file *is* ``src``: a crashed caller can recognise it);
       else a no-replace rename (:func:`rename_noreplace`, else a hard link, else an exclusive create of
       the name followed by a rename over that empty placeholder);
    2. on another file system, or where there are no hard links: a complete, fsync'd copy to a hidden
       ``.NAME.PID.part`` beside ``wanted``, claimed the same way; it never survives a failure (full disk,
       Ctrl-C), and a FIFO is refused, never opened.

    Returns the name taken. ``src`` is moved, or left in place with ``keep_source``. Symbolic links are
    moved as links, never followed. ``fit``: names shortened to NAME_MAX (see :func:`candidates`).
    """
    src, wanted = Path(src), Path(wanted)
    staged: Path | None = None
    copied = False
    try:
        for cand in candidates(wanted, fit=fit):
            try:
                if staged is not None:
                    _rename_noreplace(staged, cand)
                    staged = None
                elif keep_source:
                    os.link(src, cand, follow_symlinks=False)
                else:
                    _rename_noreplace(src, cand)
            except FileExistsError:
                continue
            except OSError as exc:
                if staged is not None or exc.errno not in _NO_LINK:
                    raise
                staged = cand.with_name(part_name(cand.name, cand.parent))
                _copy(src, staged)                      # another file system / no hard links: copy, then claim
                copied = True
                try:
                    _rename_noreplace(staged, cand)
                except FileExistsError:
                    continue
                staged = None
            if copied and not keep_source:
                os.unlink(src)                          # the copy was published; the original goes
            _fsync_dir(cand.parent)
            return cand
        raise FileExistsError(errno.EEXIST, f"{MAX_CANDIDATES} names like this one are taken", str(wanted))
    finally:
        if staged is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)


def _copy(src: Path, dest: Path) -> None:
    """Copy ``src`` (a link as a link) to ``dest``, flushed to disk before it is claimed; never opens a FIFO
    (shutil refuses special files from their ``stat``)."""
    try:
        if os.path.islink(src):
            os.symlink(os.readlink(src), dest)
            return
        shutil.copyfile(src, dest, follow_symlinks=False)
        with contextlib.suppress(OSError):
            shutil.copymode(src, dest)
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        raise


def _load_renameat2():  # -> ctypes function or None
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2    # glibc >= 2.28, musl >= 1.2.5
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> bool | None:
    """``renameat2(RENAME_NOREPLACE)``: True done, False ``dst`` exists, None if the system cannot do it."""
    if _RENAMEAT2 is None:
        return None
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return None
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists (FileExistsError), atomically."""
    done = rename_noreplace(src, dst)
    if done is True:
        return
    if done is False:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    # this file system does not know the flag: a hard link, else a placeholder
    try:
        os.link(src, dst, follow_symlinks=False)           # fails with EEXIST if taken
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_LINK or exc.errno == errno.EXDEV:
            raise
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)   # claim the name...
        os.close(fd)
        try:
            os.rename(src, dst)                 # ...and replace only our own empty placeholder
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dst)
            raise
        return
    os.unlink(src)


def remove_stale_parts(folders: Iterable[Path]) -> list[Path]:
    """Delete ``.NAME.[XXXXXXXX.]PID.part`` files whose writer (PID on this machine) is dead; returns them.

    A process killed mid-copy or mid-write (``kill -9``, a power cut) leaves such a file behind; it would
    keep the disk full for the next file.
    """
    removed: list[Path] = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in filenames:
                m = _PART_RE.match(name)
                if m is None or _pid_alive(int(m.group(1))):
                    continue
                path = Path(dirpath) / name
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True                               # not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


# --------------------------------------------------------------------------------------- writing

@dataclasses.dataclass
class PendingOutput:
    """What :func:`output_file` yields: write to ``file``; ``path`` is the name really written, once done."""
    file: BinaryIO
    temp: Path
    path: Path | None = None


@contextlib.contextmanager
def output_file(wanted: str | os.PathLike, *, unique: bool = True, fit: bool = False) -> Iterator[PendingOutput]:
    """Write a file that appears complete or not at all.

    The data goes to a hidden ``.NAME.XXXXXXXX.PID.part`` file in ``wanted``'s folder, is fsync'd, gets the
    usual permissions (0666 minus the umask, not mkstemp's 0600), then is published: with ``unique``
    (the default) at ``wanted`` or its first free ``stem-N`` name, never replacing anything (see
    :func:`publish`; ``fit``: names shortened to NAME_MAX); with ``unique=False`` it atomically replaces
    ``wanted`` (for files the program owns).
    On any error, Ctrl-C included, the temporary file is removed and nothing else is touched.
    """
    wanted = Path(wanted)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(wanted), suffix=_temp_suffix(), dir=wanted.parent)
    pending = PendingOutput(file=os.fdopen(fd, "wb"), temp=Path(tmp))
    done = False
    try:
        with pending.file as fh:
            yield pending
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if unique:
            pending.path = publish(tmp, wanted, fit=fit)
        else:
            os.replace(tmp, wanted)
            _fsync_dir(wanted.parent)
            pending.path = wanted
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_bytes(wanted: str | os.PathLike, data: bytes, *, unique: bool = True, fit: bool = False) -> Path:
    """:func:`output_file` for bytes in memory; returns the path written."""
    with output_file(wanted, unique=unique, fit=fit) as out:
        out.file.write(data)
    assert out.path is not None
    return out.path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A file object whose content *replaces* ``path`` when the block ends without error (files we own)."""
    with output_file(path, unique=False) as out:
        yield out.file


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Atomically *replace* ``path`` with ``data`` (files we own; use :func:`write_bytes` for user outputs)."""
    write_bytes(path, data, unique=False)


def _umask() -> int:
    """The process umask without changing it (os.umask would race other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a folder)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
