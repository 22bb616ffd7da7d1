"""Issue 15, items 6 and 8: outputs are claimed atomically and checked before the work.

The CLI's own ``main`` in this process (two real ``python -m bridge.cli stylize`` processes race for one name,
``e2e``) on tiny generated pictures, real folders, and real small file systems (tmpfs mounts: read-only, and 64 KiB for a full disk) where the machine allows mounting; the naming
and publishing rules of :mod:`bridge.outputs` are also tested directly, with a competing file created between
the check and the claim to force the race deterministically.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bridge import outputs
from bridge.imaging import Picture, load_image, save_image
from bridge.outputs import OutputError, check_name, output_file, probe_writable, publish, write_bytes

REPO = Path(__file__).resolve().parents[1]
FAST = ["--size", "32", "--iterations", "1", "--no-coarse-to-fine", "--seed", "1", "--quiet"]


def _racing(real):  # noqa: ANN001, ANN202
    """``bridge.outputs.publish`` as if another run claimed the wanted name first (between check and claim)."""
    def racing(src, wanted, **kw):  # noqa: ANN001, ANN202
        Path(wanted).write_bytes(b"the other run's file")
        return real(src, wanted, **kw)
    return racing


# ------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def pics(tmp_path_factory) -> dict[str, Path]:
    """A 160x120 noisy photo (its PSD is far over 64 KiB) and a 48 px style, both generated."""
    d = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(15)
    photo = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    style = np.zeros((48, 48, 3), np.uint8)
    style[::4] = (250, 200, 30)
    style[:, ::6, 2] = 255
    return {"photo": save_image(Picture(rgb=photo, name="photo"), d / "photo.png"),
            "style": save_image(Picture(rgb=style, name="bands"), d / "bands.png")}


class Done:
    """What one ``stylebridge stylize`` run did: its exit code and what it printed."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys, monkeypatch):
    """cli(pics, out, *extra, env=None, race=False) -> Done: ``stylebridge stylize PHOTO -s STYLE -o OUT`` by the
    command line's own ``main`` in this process (``env``: its environment; ``race``: another run claims the name
    between the check and the claim)."""
    import tempfile

    from bridge.cli import main

    def run(pics: dict[str, Path], out: str | Path, *extra: str, env: dict | None = None, race: bool = False,
            style: Path | None = None) -> Done:
        with monkeypatch.context() as patch:
            for key, value in (env or {}).items():
                patch.setenv(key, value)
            patch.setattr(tempfile, "tempdir", None)              # read TMPDIR again, as a new process does
            if race:
                patch.setattr(outputs, "publish", _racing(outputs.publish))
            capsys.readouterr()
            code = main(["stylize", str(pics["photo"]), "-s", str(style or pics["style"]), "-o", str(out), *FAST,
                         *extra])
            captured = capsys.readouterr()
        return Done(code, captured.out, captured.err)
    return run


def leftovers(*folders: Path) -> list[Path]:
    """Temporary files (.NAME.XXXX.part, probes) or rescue folders anywhere under ``folders``."""
    found: list[Path] = []
    for folder in folders:
        for p in folder.rglob("*"):
            if p.name.endswith(".part") or p.name.startswith((".stylebridge", "stylebridge-rescue")):
                found.append(p)
    return found


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(name, options) -> a fresh tmpfs at tmp_path/name; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        if shutil.which("mount") is None:
            reason = "no mount command on this machine: a real small or read-only file system cannot be made"
            if os.geteuid() == 0 or os.environ.get("CI"):        # as root and in CI it must work: never skip
                pytest.fail(reason)
            pytest.skip(reason)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            reason = f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}"
            if os.geteuid() == 0 or os.environ.get("CI"):        # as root and in CI it must work: never skip
                pytest.fail(reason)
            pytest.skip(reason)
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path, mount_tmpfs) -> Path:
    """A folder nobody can write to, root included: a read-only tmpfs (chmod 0555 when not root and no mount)."""
    if os.geteuid() != 0 and shutil.which("mount") is None:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    return mount_tmpfs("ro", "ro,size=64k")


# ------------------------------------------------------------- the one naming and publishing rule

@pytest.mark.parametrize("mechanism", ["renameat2", "link", "placeholder"])
def test_publish_takes_the_next_name_when_a_competitor_claims_it_between_check_and_claim(
        tmp_path, monkeypatch, mechanism) -> None:
    """The race of item 6, forced: the name is free when checked and taken when claimed."""
    if mechanism == "renameat2" and outputs._RENAMEAT2 is None:
        reason = "renameat2 is not available on this system (the link fallback is tested instead)"
        if os.environ.get("CI"):                                   # CI's Linux has it: never skip there
            pytest.fail(reason)
        pytest.skip(reason)
    if mechanism != "renameat2":
        monkeypatch.setattr(outputs, "_RENAMEAT2", None)
    if mechanism == "placeholder":      # a file system without hard links (FAT, some shares)
        def no_links(src, dst, *a, **k):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_links)
    wanted = tmp_path / "result.png"
    assert outputs.unique_path(wanted) == wanted                  # the check: free
    real = outputs._rename_noreplace
    competitor = b"another run's result"

    def competing(src, dst):
        if Path(dst) == wanted and not os.path.lexists(dst):
            Path(dst).write_bytes(competitor)                    # ...taken before our claim
        return real(src, dst)

    monkeypatch.setattr(outputs, "_rename_noreplace", competing)
    final = write_bytes(wanted, b"ours")
    assert final == tmp_path / "result-2.png"
    assert wanted.read_bytes() == competitor and final.read_bytes() == b"ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result-2.png", "result.png"]


def test_save_image_and_write_psd_never_replace_with_unique(tmp_path) -> None:
    pic = Picture(rgb=np.full((6, 8, 3), 90, np.uint8), name="x")
    (tmp_path / "a.png").write_bytes(b"user's file")
    assert save_image(pic, tmp_path / "a.png", unique=True) == tmp_path / "a-2.png"
    assert (tmp_path / "a.png").read_bytes() == b"user's file"
    assert load_image(tmp_path / "a-2.png").width == 8
    psd = pytest.importorskip("bridge.document.psd")
    from bridge.document.model import Layer, LayerStack
    stack = LayerStack(width=8, height=6, depth=8, name="d",
                       items=[Layer(name="bg", role="original", pixels=np.full((6, 8, 3), 90, np.uint8))])
    (tmp_path / "d.psd").write_bytes(b"user's document")
    assert psd.write_psd(stack, tmp_path / "d.psd", unique=True) == tmp_path / "d-2.psd"
    assert (tmp_path / "d.psd").read_bytes() == b"user's document"
    assert not leftovers(tmp_path)


def test_no_temporary_file_survives_an_exception_or_ctrl_c(tmp_path) -> None:
    for exc in (ValueError("encoder failed"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with output_file(tmp_path / "x.png") as out:
                out.file.write(b"half")
                assert out.temp.parent == tmp_path and out.temp.exists()
                raise exc
        assert list(tmp_path.iterdir()) == []


def test_long_names_get_a_temporary_name_that_fits(tmp_path) -> None:
    name = "é" * 125 + ".png"                                   # 254 bytes: fits, a +15 byte temp name would not
    assert len(os.fsencode(name)) == 254
    check_name(tmp_path, name)
    assert write_bytes(tmp_path / name, b"data") == tmp_path / name
    with pytest.raises(OutputError, match="is taken and the next free name .*-2.png' is 256 bytes long"):
        check_name(tmp_path, name)                               # a second run would need NAME-2: too long
    with pytest.raises(OutputError, match="256 bytes long; the file system allows 255"):
        check_name(tmp_path, "é" * 126 + ".png")


def test_full_disk_and_other_file_system(tmp_path, mount_tmpfs) -> None:
    """ENOSPC while writing, and a copy onto another file system that fills up: nothing partial is left."""
    full = mount_tmpfs("full", "size=64k")
    with pytest.raises(OSError) as info:
        write_bytes(full / "big.bin", os.urandom(200_000))
    assert info.value.errno == errno.ENOSPC
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(200_000))
    with pytest.raises(OSError) as info:
        publish(src, full / "big.bin", keep_source=True)          # cross-device: copied, then claimed
    assert info.value.errno == errno.ENOSPC
    assert list(full.iterdir()) == [] and src.exists()
    small = tmp_path / "small.bin"
    small.write_bytes(b"fits")
    (full / "small.bin").write_bytes(b"already there")
    assert publish(small, full / "small.bin") == full / "small-2.bin"   # moved across, no replace
    assert not small.exists() and (full / "small.bin").read_bytes() == b"already there"


def test_probe_sees_a_read_only_folder_even_as_root(read_only_folder) -> None:
    with pytest.raises(OutputError, match="cannot write in .*(Read-only|Permission denied)"):
        probe_writable(read_only_folder)


# ------------------------------------------------------------------------- the CLI, for real

@pytest.mark.e2e
def test_two_runs_with_the_same_output_both_keep_their_file(tmp_path, pics) -> None:
    """Two ``stylebridge stylize`` processes at once (forked from this one, tests/inprocess.py Forked: both start
    at the same instant) write the same output name: one gets NAME, the other NAME-2, both say which."""
    from inprocess import Forked

    target = tmp_path / "same.png"
    args = ["stylize", str(pics["photo"]), "-s", str(pics["style"]), "-o", str(target), "--size", "32",
            "--iterations", "1", "--no-coarse-to-fine", "--seed", "1"]
    procs = [Forked(args, separate_stderr=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    reported = sorted(Path(out.strip()) for out, _ in results)
    assert reported == [tmp_path / "same-2.png", tmp_path / "same.png"]
    for path in reported:
        assert load_image(path).width == 160
    assert not leftovers(tmp_path)


def test_forced_race_the_run_reports_the_name_it_really_wrote(tmp_path, pics, cli) -> None:
    """Another file takes the name after the check and before the claim: ours goes to NAME-2, theirs is kept."""
    target = tmp_path / "doc.psd"
    done = cli(pics, target, "--json", race=True)
    assert done.returncode == 0, done.stderr
    import json
    summary = json.loads(done.stdout)
    assert summary["outputs"] == [str(tmp_path / "doc-2.psd")]
    assert target.read_bytes() == b"the other run's file"
    assert (tmp_path / "doc-2.psd").read_bytes()[:4] == b"8BPS"
    assert not leftovers(tmp_path)


def test_read_only_folder_fails_before_the_work(read_only_folder, pics, cli) -> None:
    done = cli(pics, read_only_folder / "x.psd")
    assert done.returncode == 2, done.stderr
    assert "cannot write in" in done.stderr and "choose another output" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert list(read_only_folder.iterdir()) == []


@pytest.mark.parametrize("where", ["x.png", "sub/x.psd", "sub/"])
def test_output_under_a_regular_file_fails_before_the_work(tmp_path, pics, where, cli) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("user data")
    done = cli(pics, f"{notes}/{where}")
    assert done.returncode == 2, done.stderr
    assert "notes.txt: exists and is not a folder" in done.stderr
    assert notes.read_text() == "user data" and sorted(tmp_path.iterdir()) == [notes]


def test_names_too_long_fail_before_the_work(tmp_path, pics, cli) -> None:
    done = cli(pics, tmp_path / ("a" * 252 + ".png"))           # 256 bytes
    assert done.returncode == 2 and "256 bytes long; the file system allows 255" in done.stderr
    done = cli(pics, tmp_path / ("é" * 124 + ".psd"))            # 252 bytes: fits, but not the temp name...
    assert done.returncode == 0, done.stderr                         # ...which is shortened to fit
    assert (tmp_path / ("é" * 124 + ".psd")).is_file()
    long_style = tmp_path / ("s" * 250 + ".png")    # 254 bytes; the output photo_SSS...png would be 260
    shutil.copyfile(pics["style"], long_style)
    done = cli(pics, tmp_path / "out", style=long_style)
    assert done.returncode == 2 and "photo's and style's names" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_unsupported_type_is_refused_not_made_a_folder(tmp_path, pics, cli) -> None:
    done = cli(pics, tmp_path / "x.gif")
    assert done.returncode == 2
    assert "'.gif' is not a type stylebridge writes" in done.stderr
    assert ".png" in done.stderr and ".psd" in done.stderr and "end OUT with /" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_parent_is_refused_unless_the_folder_ends_in_a_slash(tmp_path, pics, cli) -> None:
    for out in ("no/such/x.psd", "no/such/out"):
        done = cli(pics, tmp_path / out)
        assert done.returncode == 2, done.stderr
        assert "no such folder: check the spelling" in done.stderr and "mkdir -p" in done.stderr
        assert list(tmp_path.iterdir()) == []
    done = cli(pics, f"{tmp_path}/no/such/out/")                   # a folder, asked for with /
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and (tmp_path / "no/such/out/photo_bands.png").is_file()
    done = cli(pics, tmp_path / "new")                            # the last folder alone is created
    assert done.returncode == 0 and (tmp_path / "new/photo_bands.png").is_file()
    done = cli(pics, tmp_path / "made/x.psd")                     # so is a file's own folder
    assert done.returncode == 0 and (tmp_path / "made/x.psd").is_file()


def test_full_disk_the_result_is_saved_elsewhere_and_said_so(tmp_path, pics, mount_tmpfs, cli) -> None:
    full = mount_tmpfs("full", "size=64k")
    spare = tmp_path / "spare"
    spare.mkdir()
    done = cli(pics, full / "x.psd", env={"TMPDIR": str(spare)})
    assert done.returncode == 1, done.stderr
    assert f"could not write {full / 'x.psd'}: No space left on device (the disk is full" in done.stderr
    saved = [line.split("saved instead to ", 1)[1].split(" (")[0] for line in done.stderr.splitlines()
             if "saved instead to " in line]
    assert len(saved) == 1 and Path(saved[0]).parent.parent == spare
    assert Path(saved[0]).read_bytes()[:4] == b"8BPS"
    assert not [p for p in full.rglob("*") if p.is_file()]            # nothing partial on the full disk
    shutil.rmtree(Path(saved[0]).parent)
    # nowhere to go at all: said so, and still nothing left behind
    done = cli(pics, full / "x.psd", env={"TMPDIR": str(full)})
    assert done.returncode == 1
    assert "this result is lost" in done.stderr and "No space left on device" in done.stderr
    assert not [p for p in full.rglob("*") if p.is_file()] and not leftovers(full, spare)


def test_one_temporary_name_everywhere_and_stale_ones_are_found(tmp_path) -> None:
    """Every temporary file a writer makes is .NAME.[XXXXXXXX.]PID.part: output_file's (the CLI, PSDs, the
    hot folder's notes) and publish's cross-disk copies alike; remove_stale_parts removes those whose
    process is gone (kill -9) and keeps a live writer's."""
    from bridge.outputs import part_name, remove_stale_parts
    with output_file(tmp_path / "x.png") as out:
        assert out.temp.name.startswith(".x.png.") and out.temp.name.endswith(f".{os.getpid()}.part")
        out.file.write(b"data")
    assert part_name("y.psd", tmp_path) == f".y.psd.{os.getpid()}.part"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".x.png.ab12cd34.{dead}.part"
    stale.write_bytes(b"left by a killed run")
    live = tmp_path / part_name("z.png", tmp_path)
    live.write_bytes(b"being written")
    assert remove_stale_parts([tmp_path]) == [stale]
    assert live.exists() and (tmp_path / "x.png").read_bytes() == b"data"


def test_publish_fit_shortens_names_that_the_cli_refuses(tmp_path) -> None:
    """One rule, two needs: the CLI refuses a name that does not fit (check_name, before the work); the
    hot folder (fit=True) shortens it, keeping -N and the extension."""
    name = "a" * 251 + ".psd"                                    # 255 bytes: legal, but NAME-2 is not
    (tmp_path / name).write_bytes(b"the user's own")
    src = tmp_path / "src.psd"
    src.write_bytes(b"ours")
    got = publish(src, tmp_path / name, keep_source=True, fit=True)
    assert got.name == "a" * 249 + "-2.psd" and got.read_bytes() == b"ours" and src.exists()
    with pytest.raises(OSError):
        publish(src, tmp_path / name, keep_source=True)          # unfitted: NAME-2 is too long
    assert (tmp_path / name).read_bytes() == b"the user's own" and not leftovers(tmp_path)


# ------------------------------------------------------------------------- issue 20, item 7: native size

def huge_flat_png(path: Path, width: int, height: int) -> Path:
    """A black RGB PNG written with zlib directly: ``width`` x ``height`` pixels in about 1/1000 of their
    bytes (deflate's best ratio), so a test can hold a 56 MP photo without making one."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(width * 3)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_size_native_over_the_limit_is_refused_from_the_header_before_decoding(tmp_path, pics, capsys) -> None:
    """Issue 20 item 7: an 8000x7000 photo (56 MP, over max_native_pixels) with --size native is refused from
    its header with the daemon's message, exit 2, in well under a second and without decoding its 168 MB of
    pixels (before: 15 s and 2.7 GB for a bigger one)."""
    import time
    import tracemalloc

    from bridge.cli import main
    from bridge.settings import LIMITS
    assert 8000 * 7000 > LIMITS.max_native_pixels
    photo = huge_flat_png(tmp_path / "wide.png", 8000, 7000)
    assert photo.stat().st_size < 1_000_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        code = main(["stylize", str(photo), "--size", "native", "-s", str(pics["style"]), "-o", str(tmp_path / "out/"),
                     "--quiet"])
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines() == [
        "stylebridge: error: size: size native: the photo is 8000x7000 (56.0 MP), over the limit of 50 MP for "
        "optimising at the photo's own size (max_native_pixels); use a working size (at most "
        f"{LIMITS.max_size} px) or scale the photo down"], err
    assert peak < 20_000_000, f"{peak:,} bytes traced: the photo was decoded"
    assert seconds < 5, seconds
    assert not (tmp_path / "out").exists()
