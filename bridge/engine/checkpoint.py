"""Checkpoints of a stylisation, so that an hours-long run (print resolution on a CPU) survives a pause,
a restart of the daemon or a crash, and goes on where it was.

The contract other parts build on (daemon pause/requeue, hot-folder resume):

- :class:`EngineState` is what a run needs to go on: which style (job), stage and iteration it reached, the
  best image of that stage so far, the finished styles' last-stage images, the seed and the time spent;
  mid-stage, also the optimiser's own state (its iterate and, for L-BFGS, its curvature history) while that
  is small enough to write often (RESUME_STATE_BYTES), so that a resumed run goes on exactly as
  the uninterrupted one would; without it a resume restarts the optimiser from the best image.
- :class:`Checkpoint` is anything with ``load()``, ``save(state)`` and ``interval_s`` (seconds between saves
  of a running optimisation; its one default is ``bridge.settings.SERVICE.checkpoint_seconds``, which the
  front ends' ``--checkpoint-seconds`` options also start from); :class:`FileCheckpoint` keeps one state in a
  ``.npz`` file, written atomically. The arrays ``save`` receives may share memory with the
  running optimisation (no copies: at 24 MP each image is 288 MB): write or copy them before returning.
- ``stylize(..., checkpoint=cp)`` loads first and resumes from a state whose fingerprint matches the run
  (:func:`fingerprint`); it saves at each stage's end, at least every ``interval_s`` of the checkpoint,
  and when paused (the policy: :mod:`.resume`). It never deletes the
  checkpoint: a finished run's last state (every style done) makes a repeated call return at once; the
  caller removes the file (:meth:`FileCheckpoint.remove`) when it has written the results.

Images in a state are float32, **C x H x W (RGB), 0..255** (the optimiser's pixel scale), at the size of
their stage (``finished``: the last stage, the working size).

File formats: 2 adds the optional optimiser state to 1 (same fingerprints); a format-1 file is read as a
state without it (an image-only resume), a file of any other format is ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import stat
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ..imaging import Picture
from ..outputs import fsync_dir
from ..settings import LIMITS, SERVICE, Settings
from .types import StyleInput

log = logging.getLogger(__name__)

FORMAT = 2                     # bumped when the file's layout changes (see the module doc for what is read)
READABLE = frozenset({1, FORMAT})   # 1: no optimiser state, read as an image-only state
# What the fingerprint covers (inputs, settings); apart from FORMAT so a new file layout that holds the same
# run keeps the checkpoints of runs in progress (format 1's fingerprints were salted with 1).
FINGERPRINT_VERSION = 1
# Largest optimiser state (iterate + L-BFGS history and vectors) written into mid-stage checkpoints. With it a
# resumed run continues exactly (without it: +8.6% final loss on bench_resume.py); but it is written every
# checkpoint interval (SERVICE.checkpoint_seconds by default) and doubles the disk a job holds: 512 MB is ~1-5 s
# of writing per interval on a common disk and covers every whole-image stage (history capped by
# plan.LBFGS_HISTORY_BYTES) and tiled stages up to ~5 MP (3 pairs); a 24 MP stage's state (3 pairs: 1.7 GB with
# its vectors) falls back to the best image only (step.LBFGS_RESUME_STEP), saying so in a log line.
RESUME_STATE_BYTES = 512 << 20
# Settings that only change what happens after the optimisation (or how fast it runs), not its images:
# a checkpoint stays valid when they change. The seed is checked apart (None = the checkpoint's).
OUTPUT_ONLY = frozenset({"device", "preview_every", "block_memory", "upsample", "guided_radius", "guided_eps",
                         "original_colors", "seed", "threads"})


@dataclass
class EngineState:
    """Where a run is. Images: float32 C x H x W, RGB 0..255 (see the module doc)."""

    fingerprint: str          # :func:`fingerprint` of the run's inputs and settings
    style_index: int          # the job (style, then the blend) being optimised; == number of jobs: all done
    stage: int                # 0-based stage of the ladder
    iteration: int            # iterations of that stage done (== the stage's count: the stage is done)
    image: np.ndarray         # the best image of that stage so far
    finished: list[np.ndarray] = field(default_factory=list)   # last-stage best images of the jobs done
    seed: int = 0
    elapsed_s: float = 0.0    # optimisation seconds spent so far, over every session
    # Mid-stage only, optional (None: resume from ``image`` with a fresh optimiser):
    current: np.ndarray | None = None    # the optimiser's iterate (the next image it evaluates), C x H x W
    best_loss: float | None = None       # the loss of ``image``
    losses: dict[str, float] = field(default_factory=dict)   # its parts (content, style, tv, total)
    # the optimiser's state (torch.optim's per-parameter dict, e.g. L-BFGS's old_dirs, old_stps, ro, d, t,
    # H_diag, prev_flat_grad, prev_loss, n_iter): arrays, lists of arrays, ints and floats
    optimizer: dict[str, np.ndarray | list[np.ndarray] | int | float] | None = None


@runtime_checkable
class Checkpoint(Protocol):
    """Where a run's :class:`EngineState` is kept; ``interval_s``: save at least this often (seconds)."""

    interval_s: float

    def load(self) -> EngineState | None: ...

    def save(self, state: EngineState) -> None: ...


def _digest(h: "hashlib._Hash", array: np.ndarray) -> None:
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).data)


def fingerprint(content: Picture, styles: list[StyleInput], settings: Settings) -> str:
    """SHA-256 of the photo's and styles' pixels, the styles' names, their regions' pixels (when given) and the
    settings that change the optimised images (all but :data:`OUTPUT_ONLY`). The init image file is named by
    path (its pixels are not read here)."""
    h = hashlib.sha256(b"stylebridge-checkpoint-%d" % FINGERPRINT_VERSION)
    _digest(h, content.rgb)
    for style in styles:
        h.update(b"\0style\0" + style.name.encode("utf-8", "surrogatepass") + b"\0")
        _digest(h, style.picture.rgb)
        # a regions run is another run (its jobs and images differ): its masks' pixels are hashed; a run
        # without them hashes exactly as before regions existed (its checkpoints stay valid)
        for tag, mask in ((b"\0region\0", style.region), (b"\0style-region\0", style.style_region)):
            if mask is not None:
                h.update(tag)
                _digest(h, np.asarray(mask, dtype=np.float32))
    values = {k: v for k, v in dataclasses.asdict(settings).items() if k not in OUTPUT_ONLY}
    if not any(s.region is not None for s in styles):
        values.pop("region_style_layers", None)    # changes nothing without regions
    h.update(repr(sorted(values.items())).encode())
    return h.hexdigest()


class FileCheckpoint:
    """One :class:`EngineState` in ``path`` (.npz, no pickled objects).

    ``save`` writes a temporary file in the same folder, fsyncs it and renames it over ``path``
    (``os.replace``): a crash leaves the previous checkpoint or the new one, never half of one. A save
    that fails (full disk, folder gone) is logged and warned about once and does not stop the run; the
    previous checkpoint stays. ``load`` returns None for a missing file, a file that is not a checkpoint
    (renamed aside to ``<name>.corrupt``), or one whose fingerprint differs from ``fingerprint`` (set by
    ``stylize`` before it loads; None accepts any). It reads each array only after checking its zip entry
    and .npy header against ``bound`` (the job's sizes, given by the front end that knows them): a damaged
    header never makes it allocate more than the job can need.
    """

    def __init__(self, path: Path | str, interval_s: float = SERVICE.checkpoint_seconds, *,
                 fingerprint: str | None = None, bound: "Bound | Callable[[], Bound] | None" = None) -> None:
        """``bound``: the most the job's checkpoint can hold (:class:`Bound`, or a function giving it when the
        file is read); None: the machine's limits (:meth:`Bound.default`)."""
        self.path = Path(path)
        self.interval_s = float(interval_s)
        self.fingerprint = fingerprint
        self.bound = bound
        self.failed = False      # a save has failed (warned once)

    # -- saving ---------------------------------------------------------------------------------
    def save(self, state: EngineState) -> None:
        arrays = {
            "format": np.array(FORMAT, dtype=np.int64),
            "fingerprint": np.array(state.fingerprint),
            "numbers": np.array([state.style_index, state.stage, state.iteration, state.seed], dtype=np.int64),
            "elapsed_s": np.array(state.elapsed_s, dtype=np.float64),
            "image": np.ascontiguousarray(state.image, dtype=np.float32),
            "finished_count": np.array(len(state.finished), dtype=np.int64),
        }
        for i, image in enumerate(state.finished):
            arrays[f"finished_{i}"] = np.ascontiguousarray(image, dtype=np.float32)
        if state.best_loss is not None:
            arrays["best_loss"] = np.array(state.best_loss, dtype=np.float64)
            arrays["loss_names"] = np.array(sorted(state.losses), dtype=str)
            arrays["loss_values"] = np.array([state.losses[k] for k in sorted(state.losses)], dtype=np.float64)
        if state.current is not None and state.optimizer is not None:
            arrays["current"] = np.ascontiguousarray(state.current, dtype=np.float32)
            arrays.update(_optimizer_arrays(state.optimizer))
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
            fsync_dir(self.path.parent)
        except OSError as exc:
            if not self.failed:
                self.failed = True
                message = (f"checkpoint {self.path}: could not be saved ({exc.strerror or exc}); the run goes on, "
                           "the previous checkpoint (if any) is kept; free some space to resume from a later point")
                log.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=2)
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    # -- loading --------------------------------------------------------------------------------
    def load(self) -> EngineState | None:
        """The saved state, or None (see the class doc). Never raises for what the file holds: every
        array's header is checked against the job's :class:`Bound` before anything is allocated, and a
        file that does not fit is set aside (``.corrupt``) with a warning."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("checkpoint %s cannot be looked at (%s): starting afresh", self.path, exc)
            return None
        if not stat.S_ISREG(mode):      # a FIFO would block the reader, a link may lead anywhere: never opened
            self._set_aside(ValueError("not a regular file (a link, a FIFO, a folder or a device)"))
            return None
        try:
            with zipfile.ZipFile(self.path) as archive:
                data = _Members(archive, self._bound(), os.fstat(archive.fp.fileno()).st_size
                                if archive.fp is not None else 0)
                version = int(data["format"])
                if version not in READABLE:
                    log.info("checkpoint %s has format %d, this version reads %s: starting afresh", self.path,
                             version, sorted(READABLE))
                    return None
                stored = str(data["fingerprint"])
                if self.fingerprint is not None and stored != self.fingerprint:
                    log.info("checkpoint %s is of another run (inputs or settings changed): starting afresh",
                             self.path)
                    return None
                numbers = data["numbers"]
                count = int(data["finished_count"])
                if not 0 <= count <= data.bound.images:
                    raise ValueError(f"{count} finished images, this job has at most {data.bound.images}")
                state = EngineState(
                    fingerprint=stored, style_index=int(numbers[0]), stage=int(numbers[1]),
                    iteration=int(numbers[2]), seed=int(numbers[3]), elapsed_s=float(data["elapsed_s"]),
                    image=np.asarray(data["image"], dtype=np.float32),
                    finished=[np.asarray(data[f"finished_{i}"], dtype=np.float32) for i in range(count)])
                if "best_loss" in data.files:
                    state.best_loss = float(data["best_loss"])
                    state.losses = {str(k): float(v) for k, v in zip(data["loss_names"], data["loss_values"])}
                if "current" in data.files and "optimizer_keys" in data.files:
                    state.current = np.asarray(data["current"], dtype=np.float32)
                    state.optimizer = _optimizer_from(data)
            _check(state)
        except FileNotFoundError:
            return None
        except MemoryError:
            raise                 # within the job's bound: the machine is short of memory, not the file bad
        except Exception as exc:  # noqa: BLE001 - a file can hold anything: it never fails the job
            if not self.path.exists():
                return None
            self._set_aside(exc)
            return None
        return state

    def _bound(self) -> "Bound":
        bound = self.bound() if callable(self.bound) else self.bound
        return bound if bound is not None else Bound.default()

    def remove(self) -> None:
        """Delete the checkpoint (the caller has the results)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def _set_aside(self, exc: BaseException) -> None:
        aside = self.path.with_name(self.path.name + ".corrupt")
        log.warning("checkpoint %s is unreadable (%s): moved to %s, starting afresh", self.path, exc, aside.name)
        try:
            os.replace(self.path, aside)
        except OSError:
            pass


@dataclass(frozen=True)
class Bound:
    """The most one job's checkpoint can hold, from the job's own sizes: images of at most ``pixels``
    pixels (its last stage, the working size), at most ``images`` finished ones (its styles, plus the
    blend), an optimiser state of at most RESUME_STATE_BYTES. A damaged file whose headers claim
    more is set aside before anything is allocated."""

    pixels: int
    images: int

    @classmethod
    def default(cls) -> "Bound":
        """Any job the machine's limits allow (a working size of up to max_size, or a native one of up to
        max_native_pixels; max_styles plus a blend)."""
        return cls(pixels=max(LIMITS.max_native_pixels, LIMITS.max_size ** 2), images=LIMITS.max_styles + 1)

    @property
    def image_bytes(self) -> int:
        return 3 * 4 * self.pixels

    @property
    def optimizer_bytes(self) -> int:
        return RESUME_STATE_BYTES + (1 << 20)         # its lists' small arrays and headers

    @property
    def total_bytes(self) -> int:
        """The whole file, uncompressed: the best image and the finished ones, the optimiser's state
        (its iterate included), numbers and names."""
        return (self.images + 1) * self.image_bytes + self.optimizer_bytes + (1 << 20)


# What each member of a checkpoint may be: (dtype kinds, dimensions (None: any), most elements).
_SMALL = 4096
_MEMBERS: dict[str, tuple[str, int | None, int]] = {
    "format": ("iu", 0, 1), "finished_count": ("iu", 0, 1), "elapsed_s": ("fiu", 0, 1), "best_loss": ("fiu", 0, 1),
    "fingerprint": ("U", 0, 1), "numbers": ("iu", 1, 4), "loss_names": ("U", 1, 64), "loss_values": ("fiu", 1, 64),
    "optimizer_keys": ("U", 1, _SMALL),
}
_FINISHED = re.compile(r"finished_[0-9]+")
_MAX_TEXT = 256          # characters of one text entry (a fingerprint is 64)
_MAX_HEADER = 10_000     # numpy's own cap on an .npy header


class _Members:
    """The arrays of an open checkpoint archive, each read only after its zip entry and .npy header were
    checked: a plain numeric (or text) dtype, the shape its role allows, data that is really there (no
    member claims more than it holds: no terabyte allocation from a damaged header, no zip bomb), and
    in all no more than the job's :class:`Bound`."""

    def __init__(self, archive: zipfile.ZipFile, bound: Bound, file_size: int) -> None:
        self.archive, self.bound, self.file_size = archive, bound, file_size
        self.files = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        self.total = 0            # uncompressed bytes read so far
        self.optimizer = 0        # of which the optimiser's state

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def __getitem__(self, name: str) -> np.ndarray:
        info = self.archive.getinfo(name + ".npy")      # KeyError: missing
        if info.flag_bits & 0x1:
            raise ValueError(f"{name}: an encrypted entry")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size or info.file_size > self.file_size:
                raise ValueError(f"{name}: the entry claims {info.file_size} bytes, it holds {info.compress_size}")
        elif info.compress_type != zipfile.ZIP_DEFLATED:
            raise ValueError(f"{name}: compression {info.compress_type} is not what checkpoints use")
        if self.total + info.file_size > self.bound.total_bytes:
            raise ValueError(f"{name}: {self.total + info.file_size} bytes in all, over the "
                             f"{self.bound.total_bytes} this job's checkpoint can hold")
        with self.archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=_MAX_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=_MAX_HEADER)
            else:
                raise ValueError(f"{name}: .npy version {version} is not what checkpoints use")
            self._check_header(name, shape, dtype)
            size = math.prod(shape) * dtype.itemsize
            if member.tell() + size != info.file_size:
                raise ValueError(f"{name}: the header claims {size} bytes of data, the entry holds "
                                 f"{info.file_size - member.tell()}")
        self.total += info.file_size
        if name == "current" or name.startswith(_OPT):
            self.optimizer += size
            if self.optimizer > self.bound.optimizer_bytes:
                raise ValueError(f"the optimiser's state is over {self.bound.optimizer_bytes} bytes")
        with self.archive.open(info) as member:      # now known to allocate what the entry holds, no more
            return np.lib.format.read_array(member, allow_pickle=False)

    def _check_header(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"{name}: dtype {dtype} is not a plain array")
        if name in ("image", "current") or _FINISHED.fullmatch(name):
            if dtype.kind != "f" or len(shape) != 3 or shape[0] != 3:
                raise ValueError(f"{name}: {dtype} {shape}, not a float 3 x H x W image")
            if shape[1] * shape[2] > self.bound.pixels:
                raise ValueError(f"{name}: {shape[1]} x {shape[2]} is larger than this job's images "
                                 f"({self.bound.pixels} pixels at most)")
            return
        if name.startswith(_OPT):
            if dtype.kind not in "biuf":
                raise ValueError(f"{name}: dtype {dtype} is not numeric")
            if math.prod(shape) * dtype.itemsize > self.bound.optimizer_bytes:
                raise ValueError(f"{name}: {shape} is larger than an optimiser's state")
            return
        kinds, ndim, most = _MEMBERS.get(name, ("", None, 0))
        if dtype.kind not in kinds or (ndim is not None and len(shape) != ndim) or math.prod(shape) > most:
            raise ValueError(f"{name}: {dtype} {shape} is not what a checkpoint holds there")
        if dtype.kind == "U" and dtype.itemsize > 4 * _MAX_TEXT:
            raise ValueError(f"{name}: text of {dtype.itemsize // 4} characters")


def _check(state: EngineState) -> None:
    """ValueError unless the state's numbers and images have sane shapes (a file can be anything)."""
    if min(state.style_index, state.stage, state.iteration) < 0:
        raise ValueError("negative position")
    for image in [state.image, *state.finished]:
        if image.ndim != 3 or image.shape[0] != 3 or min(image.shape) < 1:
            raise ValueError(f"image of shape {image.shape}, not 3 x H x W")
    if state.current is not None and state.current.shape != state.image.shape:
        raise ValueError(f"current image of shape {state.current.shape}, the best one is {state.image.shape}")


# The optimiser's state in the file: "optimizer_keys" lists "name:kind" with kind "int", "float", "array" or
# "list:N"; the values are "optimizer.name" (or "optimizer.name.0" .. for lists). Plain arrays, no pickle.
_OPT = "optimizer."


def _optimizer_arrays(optimizer: dict[str, np.ndarray | list[np.ndarray] | int | float]) -> dict[str, np.ndarray]:
    keys: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    for name, value in optimizer.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.ndarray, list)):
            raise TypeError(f"optimizer state {name!r}: {type(value).__name__} cannot be saved")
        if isinstance(value, list):
            keys.append(f"{name}:list:{len(value)}")
            for i, item in enumerate(value):
                arrays[f"{_OPT}{name}.{i}"] = np.asarray(item)      # (ascontiguousarray makes 0-d arrays 1-d)
        elif isinstance(value, np.ndarray):
            keys.append(f"{name}:array")
            arrays[_OPT + name] = np.asarray(value)
        else:
            keys.append(f"{name}:{'int' if isinstance(value, int) else 'float'}")
            arrays[_OPT + name] = np.array(value, dtype=np.int64 if isinstance(value, int) else np.float64)
    arrays["optimizer_keys"] = np.array(keys, dtype=str)
    return arrays


def _optimizer_from(data: "_Members") -> dict[str, np.ndarray | list[np.ndarray] | int | float]:
    out: dict[str, np.ndarray | list[np.ndarray] | int | float] = {}
    for entry in data["optimizer_keys"]:
        name, kind, *count = str(entry).split(":")
        if kind == "list":
            out[name] = [np.asarray(data[f"{_OPT}{name}.{i}"]) for i in range(int(count[0]))]
        elif kind == "array":
            out[name] = np.asarray(data[_OPT + name])
        elif kind == "int":
            out[name] = int(data[_OPT + name])
        elif kind == "float":
            out[name] = float(data[_OPT + name])
        else:
            raise ValueError(f"optimizer state {name!r} of unknown kind {kind!r}")
    return out

