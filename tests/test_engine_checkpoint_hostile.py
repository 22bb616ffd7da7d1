"""Issue 20 items 3 and 8: a checkpoint file can hold anything (a kill -9, a bad disk, a hand edit). Whatever
its bytes, :meth:`FileCheckpoint.load` gives a state or None, never an exception, never an allocation beyond
what the job can need: every .npy header is checked against the job's :class:`Bound` first, a zip member
must hold the data it declares (no zip bomb), and a file that does not fit is set aside (``.corrupt``)."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.engine import checkpoint as checkpoint_module
from bridge.engine import plan
from bridge.engine.checkpoint import Bound, EngineState, FileCheckpoint

FP = "f" * 64
FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def state(**kw) -> EngineState:
    values = dict(fingerprint=FP, style_index=1, stage=0, iteration=3,
                  image=np.linspace(0, 255, 3 * 6 * 8, dtype=np.float32).reshape(3, 6, 8),
                  finished=[np.full((3, 6, 8), 7.5, np.float32)], seed=42, elapsed_s=1.5,
                  current=np.ones((3, 6, 8), np.float32), best_loss=2.0, losses={"total": 2.0},
                  optimizer={"n_iter": 3, "d": np.arange(144, dtype=np.float32),
                             "old_dirs": [np.ones(144, np.float32)]})
    values.update(kw)
    return EngineState(**values)


def good_file(path: Path) -> bytes:
    FileCheckpoint(path).save(state())
    return path.read_bytes()


def npy_header(shape: tuple[int, ...], descr: str, fortran: bool = False) -> bytes:
    """A version 1.0 .npy header claiming ``shape`` and ``descr`` (no data of that size behind it)."""
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def rewrite(path: Path, replace: dict[str, bytes], *, compress: int = zipfile.ZIP_STORED) -> None:
    """The archive at ``path`` with the members in ``replace`` (name without .npy -> raw bytes) swapped in:
    a valid zip whose content lies (the CRC fits the damaged bytes)."""
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    for name, data in replace.items():
        members[name + ".npy"] = data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    path.write_bytes(buffer.getvalue())


def assert_set_aside(path: Path, cp: FileCheckpoint) -> None:
    assert cp.load() is None
    assert not path.exists() and path.with_name(path.name + ".corrupt").exists()


# --- headers that claim more than the job can need ------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 1_000_000, 1_000_000), (3, 2 ** 40, 2 ** 20), (3, 10_000, 10_000)])
def test_an_image_header_claiming_an_impossible_shape_is_set_aside_without_allocating(tmp_path, shape, caplog):
    path = tmp_path / "c.npz"
    good = good_file(path)
    image = np.asarray(state().image)
    rewrite(path, {"image": npy_header(shape, "<f4") + image.tobytes()})
    cp = FileCheckpoint(path, bound=Bound(pixels=64 * 64, images=1))
    with caplog.at_level(logging.WARNING):
        assert_set_aside(path, cp)                       # today's main: MemoryError (terabytes), or 1.2 GB read
    assert "larger than this job's images" in caplog.text and "c.npz.corrupt" in caplog.text
    path.write_bytes(good)
    assert cp.load() is not None                         # the same job's real checkpoint still loads


def test_without_a_bound_the_machines_limits_and_the_files_own_bytes_still_bound_it(tmp_path):
    path = tmp_path / "c.npz"
    good_file(path)
    rewrite(path, {"image": npy_header((3, 1_000_000, 1_000_000), "<f4") + b"\0" * 64})
    assert_set_aside(path, FileCheckpoint(path))         # the default Bound: no 12 TB allocation
    good_file(path)
    rewrite(path, {"image": npy_header((3, 100, 100), "<f4") + b"\0" * 64})   # a header longer than its data
    assert_set_aside(path, FileCheckpoint(path))


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path):
    path = tmp_path / "c.npz"
    good_file(path)
    big = np.zeros((3, 2000, 2000), np.float32)          # 48 MB of zeros: ~50 KB deflated
    rewrite(path, {"image": _npy(big)}, compress=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1_000_000
    assert_set_aside(path, FileCheckpoint(path, bound=Bound(pixels=64 * 64, images=1)))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_stored_member_that_claims_more_than_it_holds_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    good_file(path)
    data = bytearray(path.read_bytes())
    offset = data.find(b"image.npy")
    assert offset > 0
    # the local header's and central directory's uncompressed size of image.npy: claim 4 GB
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("image.npy")
    central = data.rfind(b"PK\x01\x02", 0, data.rfind(b"image.npy"))
    data[central + 24:central + 28] = (0xFFFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert info.compress_type == zipfile.ZIP_STORED
    assert_set_aside(path, FileCheckpoint(path))


@pytest.mark.parametrize("member,header", [
    ("image", npy_header((3, 6, 8), "|O")),                        # pickled objects
    ("image", npy_header((3, 6, 8), "<U4")),                       # text where pixels belong
    ("image", npy_header((6, 8), "<f4")),                          # not 3 x H x W
    ("numbers", npy_header((10 ** 9,), "<i8")),                    # a position of a billion numbers
    ("fingerprint", npy_header((), "<U100000"))])                  # a 400 KB "fingerprint"
def test_dtypes_and_shapes_a_checkpoint_never_has_are_refused(tmp_path, member, header):
    path = tmp_path / "c.npz"
    good_file(path)
    rewrite(path, {member: header + b"\0" * 1152})
    assert_set_aside(path, FileCheckpoint(path))


def test_an_optimiser_state_over_its_bound_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    good_file(path)
    rewrite(path, {"optimizer.d": npy_header((checkpoint_module.RESUME_STATE_BYTES,), "<f4") + b"\0" * 16})
    assert_set_aside(path, FileCheckpoint(path))


def test_the_hot_folders_bound_is_the_engines_smallest_side():
    from bridge.hotfolder import resume  # noqa: F401 - its MIN_SIDE copy must match the engine's
    assert plan.MIN_SIDE == 16


def test_the_daemons_bound_fits_a_real_run(tmp_path, photo, starry):
    """A real (tiny) run's checkpoint loads under the bound the daemon computes for the job."""
    from bridge.daemon import persist
    from bridge.daemon.jobfiles import JobFiles
    from bridge.daemon.memory import ImageShape
    from bridge.engine import CancelToken, StyleInput, stylize
    from bridge.settings import DOCUMENT_DEFAULTS, Settings

    settings = Settings(size=48, iterations=3, coarse_to_fine=False, seed=1, preview_every=0)
    files = JobFiles(folder=tmp_path, content=tmp_path / "c.png", content_name="c",
                     content_shape=ImageShape(photo.width, photo.height), styles=[("s", tmp_path / "s.png")],
                     settings=settings, document=DOCUMENT_DEFAULTS)
    bound = persist.checkpoint_bound(files)
    cp = FileCheckpoint(tmp_path / "run.npz", bound=bound)
    stylize(photo, [StyleInput("s", starry)], settings, None, CancelToken(), checkpoint=cp)
    back = cp.load()
    assert back is not None and back.image.shape[1] * back.image.shape[2] <= bound.pixels
    assert back.iteration == 3 and bound.images == 1


# --- any bytes: a state, a fresh start or a file set aside; never an exception --------------------------

def check_total(path: Path, cp: FileCheckpoint) -> None:
    before = path.read_bytes()
    got = cp.load()                                      # must not raise
    aside = path.with_name(path.name + ".corrupt")
    if got is None:
        assert path.exists() or aside.read_bytes() == before      # left (another run's), or set aside whole
    else:
        assert got.image.ndim == 3 and got.image.shape[0] == 3 and got.image.dtype == np.float32
        assert path.read_bytes() == before


@FAST
@given(data=st.binary(max_size=2048))
def test_any_bytes_never_raise(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("any") / "c.npz"
    path.write_bytes(data)
    check_total(path, FileCheckpoint(path, bound=Bound(pixels=64 * 64, images=2)))


@FAST
@given(flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_a_damaged_real_checkpoint_never_raises(tmp_path_factory, flips, cut):
    folder = tmp_path_factory.mktemp("flip")
    path = folder / "c.npz"
    data = bytearray(good_file(path))
    for where, value in flips:
        data[where % len(data)] = value
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    path.write_bytes(bytes(data))
    check_total(path, FileCheckpoint(path, fingerprint=FP, bound=Bound(pixels=64 * 64, images=2)))


DESCRS = ["<f4", "<f8", ">f4", "<i8", "|b1", "|O", "<U64", "|S8", "|V8", "<c8", "<M8[s]", "[('a', '<f4')]",
          "('<f4', (2,))"]


@FAST
@given(member=st.sampled_from(["image", "current", "finished_0", "numbers", "format", "fingerprint",
                               "finished_count", "optimizer.d", "optimizer_keys", "loss_names", "elapsed_s"]),
       shape=st.lists(st.integers(0, 2 ** 40), max_size=4).map(tuple), descr=st.sampled_from(DESCRS),
       fortran=st.booleans(), tail=st.binary(max_size=600))
def test_any_npy_header_never_raises_nor_allocates_beyond_the_file(tmp_path_factory, member, shape, descr,
                                                                     fortran, tail):
    path = tmp_path_factory.mktemp("hdr") / "c.npz"
    good_file(path)
    rewrite(path, {member: npy_header(shape, descr, fortran) + tail})
    check_total(path, FileCheckpoint(path, bound=Bound(pixels=64 * 64, images=2)))


@pytest.mark.parametrize("kind", ["fifo", "link", "folder"])
def test_a_checkpoint_that_is_not_a_file_is_set_aside_not_opened(tmp_path, kind, caplog):
    """A FIFO would block the job's start, a link may lead anywhere: set aside, the job starts afresh."""
    import os
    path = tmp_path / "checkpoint.npz"
    outside = tmp_path / "outside.npz"
    outside.write_bytes(b"PK not ours")
    {"fifo": lambda: os.mkfifo(path), "link": lambda: path.symlink_to(outside), "folder": path.mkdir}[kind]()
    with caplog.at_level(logging.WARNING):
        assert FileCheckpoint(path).load() is None
    assert not os.path.lexists(path) and (tmp_path / "checkpoint.npz.corrupt").exists()
    assert outside.read_bytes() == b"PK not ours"
    assert any("not a regular file" in r.getMessage() for r in caplog.records)
