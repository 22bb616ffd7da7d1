"""Issue 15's closing figures: a hostile run against the real front ends (CLI, daemon, hot folder).

Every input is generated here into one temporary folder (nothing from ../shared); the daemon listens on
loopback only; every process has a timeout and is ended (by its own pid) on exit; tmpfs mounts (for the
read-only / full file-system cases, root only) are unmounted; the temporary folder is removed.

One line per case: front end, case, outcome, exit code or HTTP status, seconds, peak RSS (MB) of the process
involved, note. Outcomes:

* ``ok-clear-error``: refused with a message (exit 1/2/130 and no traceback; HTTP 4xx; file to error/),
* ``ok-processed``: processed as a normal input would be,
* ``CRASH``: a traceback, a signal, a dead daemon/watcher,
* ``HANG``: over the case's time bound (the process is killed),
* ``DATA-LOST``: an input that is neither in in/, working/, done/ nor error/, an existing output overwritten,
  two runs reporting one file, or a partial/temporary file left behind,
* ``500``: an HTTP 5xx.

Peak RSS: the CLI's from ``wait4`` (the process's own ``ru_maxrss``); the daemon's and the watcher's are their
``VmHWM`` (high-water mark since they started) read after the case, so they carry over earlier cases.

    sudo PYTHONPATH=$PWD python bench/bench_hostile.py            # all three front ends (~15 min on 2 cores)
    PYTHONPATH=$PWD python bench/bench_hostile.py --fronts cli    # one front end
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = {"size": 32, "iterations": 1, "coarse_to_fine": False, "device": "cpu", "seed": 1}
CLI_TINY = ["--size", "32", "--iterations", "1", "--no-coarse-to-fine", "--device", "cpu"]

# ------------------------------------------------------------------------------------------------ bookkeeping


@dataclass
class Row:
    front: str
    case: str
    outcome: str
    code: str
    seconds: float
    peak_mb: float
    note: str = ""


ROWS: list[Row] = []
ONLY: list[str] = []   # --only: run just the cases whose name contains one of these
PROCS: list[subprocess.Popen] = []
MOUNTS: list[Path] = []
TMP = Path(tempfile.mkdtemp(prefix="sbh-"))


def wanted(case: str) -> bool:
    return not ONLY or any(o in case for o in ONLY)


def report(row: Row) -> None:
    ROWS.append(row)
    peak = f"{row.peak_mb:8.0f}" if row.peak_mb == row.peak_mb else "       -"
    print(f"{row.front:6s} {row.case[:44]:44s} {row.outcome:15s} {row.code:>6s} {row.seconds:7.1f}s {peak} MB  "
          f"{row.note[:150]}", flush=True)


def cleanup() -> None:
    """End what this script started (by pid), unmount its tmpfs, remove its folder."""
    for p in PROCS:
        if p.returncode is None:
            try:
                os.kill(p.pid, signal.SIGKILL)
                os.waitpid(p.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            p.returncode = -9
    for m in reversed(MOUNTS):
        subprocess.run(["umount", "-l", str(m)], capture_output=True)
    MOUNTS.clear()
    shutil.rmtree(TMP, ignore_errors=True)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def mount_tmpfs(path: Path, size: str, ro: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0
    if ok:
        MOUNTS.append(path)
    return ok


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
    if path in MOUNTS:
        MOUNTS.remove(path)


def fill(folder: Path, name: str = "filler.bin") -> Path:
    """Write until the file system is full (ENOSPC)."""
    target = folder / name
    block = os.urandom(1 << 16)
    with open(target, "ab", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError:
            pass
        small = os.urandom(512)
        try:
            while True:
                fh.write(small)
        except OSError:
            pass
    return target


def env() -> dict[str, str]:
    """The children's environment: this checkout, and their temporary files (the CLI's rescue folder) in TMP."""
    tmpdir = TMP / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "TQDM_MININTERVAL": "0.2",
            "TMPDIR": str(tmpdir)}


def vm(pid: int, key: str = "VmHWM") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def wait_rusage(p: subprocess.Popen, timeout: float) -> tuple[int | None, float, bool]:
    """Wait for ``p`` with wait4 (its own peak RSS); kill it past ``timeout``. -> (rc, peak MB, timed out)."""
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(p.pid, signal.SIGKILL)
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    rc = os.waitstatus_to_exitcode(status)
    p.returncode = rc
    return rc, ru.ru_maxrss / 1024, timed_out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_leftovers(folder: Path) -> list[str]:
    """Partial or temporary files an interrupted/failed writer may leave."""
    if not folder.exists():
        return []
    bad = []
    for p in folder.rglob("*"):
        n = p.name
        if n.endswith((".part", ".tmp")) or ".tmp" in n or (n.startswith(".") and n != ".stylebridge"):
            bad.append(str(p.relative_to(folder)))
    return bad


# ------------------------------------------------------------------------------------------------ inputs


def chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def zeros_stream(megabytes: int) -> bytes:
    """zlib stream of ``megabytes`` MB of zeros in milliseconds (repeated full-flush segments)."""
    block = bytes(1 << 20)
    comp = zlib.compressobj(9)
    head = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    segment = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush(zlib.Z_FINISH)
    adler = ((((megabytes << 20) % 65521) << 16) | 1).to_bytes(4, "big")
    return head + segment * (megabytes - 1) + tail[:-4] + adler


def raw_png(w: int, h: int, bits: int = 8, extra: bytes = b"", idat: bytes | None = None) -> bytes:
    if idat is None:
        row = b"\x00" + bytes(w * 3 * bits // 8)
        comp = zlib.compressobj(9)
        idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, 2, 0, 0, 0)) + extra
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


_BIG: list[bytes] = []


def big_png() -> bytes:
    """14000 x 14000 RGB, ~570 KB of PNG (196 MP: under the 200 MP limit)."""
    if not _BIG:
        _BIG.append(raw_png(14000, 14000))
    return _BIG[0]


def noise(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


_SEED = [100]


def good_png(w: int = 64, h: int = 48) -> bytes:
    _SEED[0] += 1
    return encode(noise(w, h, _SEED[0]), "PNG")


def psd(w: int, h: int, pixels: bool = True) -> bytes:
    """A minimal flat RGB PSD: header, empty sections, raw planes."""
    head = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    body = struct.pack(">I", 0) * 3 + struct.pack(">H", 0)
    data = noise(w, h, 7).transpose(2, 0, 1).tobytes() if pixels else b""
    return head + body + data


def flip(data: bytes, n: int, seed: int, start: int = 40) -> bytes:
    rnd = random.Random(seed)
    b = bytearray(data)
    for _ in range(n):
        i = rnd.randrange(min(start, len(b) - 1), len(b))
        b[i] ^= 1 << rnd.randrange(8)
    return bytes(b)


def tiff_huge() -> bytes:
    """A little-endian TIFF whose header says 60000 x 60000 RGB, with 12 bytes of strip data."""
    entries = [(256, 4, 1, 60000), (257, 4, 1, 60000), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8 + 2 + 12 * 10 + 4), (277, 3, 1, 3), (278, 4, 1, 60000), (279, 4, 1, 12)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8) + ifd + bytes(12)


def jpeg_huge() -> bytes:
    data = bytearray(encode(noise(16, 16, 3), "JPEG"))
    i = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, 65000, 65000)
    return bytes(data)


def bad_images() -> dict[str, tuple[str, bytes]]:
    """case -> (file name, bytes): the damaged and hostile images of issue 15 and their classes."""
    png = good_png()
    jpg = encode(noise(64, 48, 5), "JPEG", quality=90)
    tif = encode(noise(64, 48, 6), "TIFF")
    bomb = zeros_stream(256)
    exif_bomb = b"Exif\0\0" + bytes(8 * 1024 * 1024)
    return {
        "zero-byte.png": ("zero.png", b""),
        "png truncated": ("trunc.png", png[: len(png) // 2]),
        "png bit-flipped": ("flip.png", flip(png, 20, 1)),
        "png header only": ("hdr.png", png[:33]),
        "png huge header 100k x 100k": ("huge.png", raw_png(100000, 100000, idat=zlib.compress(b"\0" * 100))),
        "png 16-bit ICC bomb (256 MB)": ("icc16.png", raw_png(64, 64, 16, chunk(b"iCCP", b"x\0\0" + bomb))),
        "png 8-bit ICC bomb (256 MB)": ("icc8.png", raw_png(64, 64, 8, chunk(b"iCCP", b"x\0\0" + bomb))),
        "png zTXt bomb (256 MB)": ("ztxt.png", raw_png(64, 64, 8, chunk(b"zTXt", b"Comment\0\0" + bomb))),
        "png iTXt bomb (256 MB)": ("itxt.png", raw_png(64, 64, 8, chunk(b"iTXt",
                                                                     b"XML:com.adobe.xmp\0\1\0\0\0" + bomb))),
        "png eXIf 8 MB": ("exif.png", raw_png(64, 64, 8, chunk(b"eXIf", exif_bomb[6:]))),
        "jpeg truncated": ("trunc.jpg", jpg[: len(jpg) // 2]),
        "jpeg bit-flipped": ("flip.jpg", flip(jpg, 30, 2, 200)),
        "jpeg huge header 65000^2": ("huge.jpg", jpeg_huge()),
        "tiff truncated": ("trunc.tif", tif[: len(tif) // 3]),
        "tiff huge header 60000^2": ("huge.tif", tiff_huge()),
        "psd truncated": ("trunc.psd", psd(64, 48)[:200]),
        "psd huge header 30000^2": ("huge.psd", psd(30000, 30000, pixels=False)),
        "psd bit-flipped header": ("flip.psd", flip(psd(64, 48), 6, 3, 0)[:26] + psd(64, 48)[26:]),
        "wrong ext: jpeg as .png": ("jpeg.png", jpg),
        "wrong ext: text as .jpg": ("text.jpg", b"hello, this is not an image\n" * 10),
        "wrong ext: png as .psd": ("png.psd", good_png()),
    }


# ------------------------------------------------------------------------------------------------ CLI


def cli_run(args: list[str], timeout: float = 240, cwd: Path | None = None,
            on_start: Callable[[subprocess.Popen, Path], None] | None = None
            ) -> tuple[int | None, float, bool, str, float]:
    err = Path(tempfile.mktemp(dir=TMP, suffix=".err"))
    t0 = time.monotonic()
    with open(err, "wb") as fe:
        p = subprocess.Popen([PY, "-m", "bridge.cli", "stylize", *args], stdout=fe, stderr=fe, env=env(),
                             cwd=cwd or TMP)
        PROCS.append(p)
        if on_start:
            on_start(p, err)
        rc, peak, to = wait_rusage(p, timeout)
    text = err.read_text(errors="replace")
    return rc, peak, to, text, time.monotonic() - t0


def classify_cli(rc: int | None, to: bool, text: str) -> str:
    if to:
        return "HANG"
    if "Traceback" in text or rc is None or rc < 0:
        return "CRASH"
    if rc == 0:
        return "ok-processed"
    if rc in (1, 2, 130) and "stylebridge" in text:
        return "ok-clear-error"
    return "CRASH"


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip() and "it/s" not in ln]
    return lines[-1] if lines else ""


def cli_case(name: str, args: list[str], out: Path, timeout: float = 240, check: Callable[[str], str] | None = None,
             cwd: Path | None = None) -> None:
    if not wanted(name):
        return
    rc, peak, to, text, secs = cli_run(args, timeout, cwd)
    outcome = classify_cli(rc, to, text)
    note = last_line(text)
    left = temp_leftovers(out) if out.is_dir() else []
    if left:
        outcome, note = "DATA-LOST", f"left behind: {left}"
    if check and outcome not in ("CRASH", "HANG"):
        problem = check(text)
        if problem:
            outcome, note = "DATA-LOST", problem
    report(Row("cli", name, outcome, str(rc), secs, peak, note))


def cli_cases(deadline: float) -> None:
    d = TMP / "cli"
    d.mkdir()
    content = d / "content.png"
    content.write_bytes(good_png())
    style = d / "style.png"
    style.write_bytes(good_png(40, 40))
    out = d / "out"
    out.mkdir()
    base = ["-s", str(style), *CLI_TINY]

    cli_case("good PNG -> folder", [str(content), "-o", str(out) + "/", *base], out)
    for case, (fname, data) in bad_images().items():
        if time.monotonic() > deadline:
            return
        src = d / fname
        src.write_bytes(data)
        cli_case(case, [str(src), "-o", str(out) + "/", *base], out)
        src.unlink()

    style_bomb = d / "style_icc16.png"
    style_bomb.write_bytes(bad_images()["png 16-bit ICC bomb (256 MB)"][1])
    cli_case("ICC bomb as the style", [str(content), "-s", str(style_bomb), "-o", str(out) + "/", *CLI_TINY], out)
    cli_case("unknown style (no such file)", [str(content), "-s", str(d / "nope.png"), "-o", str(out) + "/",
                                               *CLI_TINY], out)
    cli_case("missing content file", [str(d / "missing.png"), "-o", str(out) + "/", *base], out)
    cli_case("directory as content", [str(d), "-o", str(out) + "/", *base], out)
    fifo = d / "fifo.png"
    os.mkfifo(fifo)
    cli_case("FIFO as content", [str(fifo), "-o", str(out) + "/", *base], out, timeout=60)
    cli_case("FIFO as style", [str(content), "-s", str(fifo), "-o", str(out) + "/", *CLI_TINY], out, timeout=60)
    cli_case("/dev/zero as content", ["/dev/zero", "-o", str(out) + "/", *base], out, timeout=60)
    cli_case("/dev/urandom named .png (symlink)", [str(_link(d / "rand.png", "/dev/urandom")), "-o",
                                                   str(out) + "/", *base], out, timeout=60)

    # outputs ----------------------------------------------------------------------------------------------
    existing = out / "keep.png"
    existing.write_bytes(b"user's file, must survive")
    cli_case("-o an existing file (never replaced)", [str(content), "-o", str(existing), *base], out,
             check=lambda _t: "" if existing.read_bytes() == b"user's file, must survive" else "keep.png overwritten")
    if wanted("same -o twice concurrently"):
        _concurrent_same_output(content, base, out)
    ro = d / "ro"
    if mount_tmpfs(ro, "1m", ro=True):
        cli_case("-o into read-only tmpfs", [str(content), "-o", str(ro / "x.png"), *base], ro, timeout=120)
    full = d / "full"
    if mount_tmpfs(full, "256k"):
        fill(full)
        cli_case("-o into a full tmpfs", [str(content), "-o", str(full / "x.psd"), *base], full, timeout=240)
    plain = d / "plain.txt"
    plain.write_text("a regular file")
    cli_case("-o under a regular file", [str(content), "-o", str(plain / "x.png"), *base], out)
    cli_case("-o name of 255 bytes", [str(content), "-o", str(out / ("n" * 251 + ".png")), *base], out)
    cli_case("-o name of 300 bytes", [str(content), "-o", str(out / ("n" * 296 + ".png")), *base], out)
    cli_case("-o 84 Japanese chars (.psd, 256 B)", [str(content), "-o", str(out / ("写" * 84 + ".psd")), *base], out)
    cli_case("-o x.gif", [str(content), "-o", str(out / "x.gif"), *base], out,
             check=lambda _t: "x.gif created as a folder" if (out / "x.gif").is_dir() else "")
    no_such = Path("/no/such/dir/x.psd")
    existed = Path("/no").exists()
    cli_case("-o /no/such/dir/x.psd", [str(content), "-o", str(no_such), *base], out,
             check=lambda _t: "created /no/such/dir" if not existed and Path("/no/such/dir").exists() else "")
    if not existed and Path("/no").exists():
        shutil.rmtree("/no", ignore_errors=True)

    # settings ---------------------------------------------------------------------------------------------
    for label, opt in [("--size nan", ["--size", "nan"]), ("--style-weight nan", ["--style-weight", "nan"]),
                       ("--style-weight 1e400", ["--style-weight", "1e400"]),
                       ("--iterations 5000-digit int", ["--iterations", "9" * 5000]),
                       ("--size -64", ["--size", "-64"]), ("--iterations 0", ["--iterations", "0"]),
                       ("--size 1e9", ["--size", "1000000000"]), ("--seed 10000 letters", ["--seed", "x" * 10000])]:
        cli_case(label, [str(content), "-o", str(out) + "/", "-s", str(style), "--device", "cpu", *opt], out)

    # Ctrl-C ----------------------------------------------------------------------------------------------
    for label, count in [("SIGINT once mid-run", 1), ("SIGINT twice mid-run", 2)]:
        if wanted(label):
            _sigint_case(label, count, content, style, d / f"sig{count}")


def _link(path: Path, target: str) -> Path:
    path.symlink_to(target)
    return path


def _wait_progress(p: subprocess.Popen, err: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and p.poll() is None:
        if "it/s" in err.read_text(errors="replace") or "s/it" in err.read_text(errors="replace"):
            return
        time.sleep(0.2)


def _sigint_case(label: str, count: int, content: Path, style: Path, out: Path) -> None:
    out.mkdir()

    def interrupt(p: subprocess.Popen, err: Path) -> None:
        _wait_progress(p, err)
        time.sleep(1.0)
        for _ in range(count):
            os.kill(p.pid, signal.SIGINT)
            time.sleep(0.3)

    rc, peak, to, text, secs = cli_run([str(content), "-s", str(style), "-o", str(out / "r.png"), "--size", "64",
                                        "--iterations", "2000", "--no-coarse-to-fine", "--device", "cpu"], 300,
                                       on_start=interrupt)
    outcome = classify_cli(rc, to, text)
    note = last_line(text)
    if rc == -signal.SIGINT and count > 1 and not to and "Traceback" not in text:
        # the second Ctrl-C landed while the interpreter was exiting (after the result was written and
        # reported): "stop at once" by the signal itself (a shell shows $? = 130), not a crash
        outcome, note = "ok-clear-error", f"died by SIGINT while exiting; {note}"
    files = sorted(p.name for p in out.iterdir())
    for f in files:
        try:
            with Image.open(out / f) as im:
                im.load()
        except Exception as exc:   # a half-written result
            outcome, note = "DATA-LOST", f"unreadable {f}: {exc}"
    if temp_leftovers(out):
        outcome, note = "DATA-LOST", f"left behind: {temp_leftovers(out)}"
    report(Row("cli", label, outcome, str(rc), secs, peak, f"{note} | files: {files}"))


def _concurrent_same_output(content: Path, base: list[str], out: Path) -> None:
    target = out / "same.png"
    results: list[tuple] = [None, None]

    def go(i: int) -> None:
        results[i] = cli_run([str(content), "-o", str(target), *base, "--seed", str(i + 1)], 300)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcome = "ok-processed"
    printed = []
    for rc, peak, to, text, secs in results:
        o = classify_cli(rc, to, text)
        if o != "ok-processed":
            outcome = o
        printed += [ln.strip() for ln in text.splitlines() if ln.strip().endswith(".png") and "/" in ln]
    made = sorted(p.name for p in out.glob("same*.png"))
    note = f"printed {len(set(printed))} distinct paths, files {made}"
    if outcome == "ok-processed" and (len(made) != 2 or len(set(printed)) != 2):
        outcome = "DATA-LOST"
    report(Row("cli", "same -o twice concurrently", outcome, f"{results[0][0]},{results[1][0]}",
               max(r[4] for r in results), max(r[1] for r in results), note))


# ------------------------------------------------------------------------------------------------ daemon


class Daemon:
    def __init__(self, data: Path, *extra: str, token: str = "") -> None:
        import httpx
        self.httpx = httpx
        self.data = data
        self.token = token
        self.log = TMP / f"daemon-{time.monotonic_ns()}.log"
        self.extra = extra
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        args = [PY, "-m", "bridge.cli", "serve", "--port", str(self.port), "--data-dir", str(data),
                "--device", "cpu", *extra] + (["--token", token] if token else [])
        self.proc = subprocess.Popen(args, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env())
        PROCS.append(self.proc)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log.read_text()[-2000:]}")
            if self.healthy(2):
                return
            time.sleep(0.3)
        raise RuntimeError("daemon did not start within 180 s")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def healthy(self, timeout: float = 10) -> bool:
        try:
            return self.httpx.get(self.url + "/v1/health", timeout=timeout, headers=self.headers()).status_code == 200
        except self.httpx.HTTPError:
            return False

    def post_job(self, content: tuple[str, bytes], settings: str | None = None, style: bytes | None = None,
                 extra_files: list | None = None, extra_data: dict | None = None, timeout: float = 120):
        files = [("content", (content[0], content[1], "application/octet-stream"))]
        files.append(("style_files", ("style.png", style if style is not None else STYLE_PNG, "image/png")))
        files += extra_files or []
        data = {"settings": settings if settings is not None else json.dumps(TINY), **(extra_data or {})}
        return self.httpx.post(self.url + "/v1/jobs", files=files, data=data, headers=self.headers(),
                               timeout=timeout)

    def wait_job(self, job_id: str, seconds: float = 240) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            st = self.httpx.get(f"{self.url}/v1/jobs/{job_id}", headers=self.headers(), timeout=10).json()["status"]
            if st in ("done", "failed", "cancelled"):
                return st
            time.sleep(0.3)
        return "timeout"

    def delete(self, job_id: str) -> None:
        try:
            self.httpx.delete(f"{self.url}/v1/jobs/{job_id}", headers=self.headers(), timeout=10)
        except self.httpx.HTTPError:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


STYLE_PNG = b""


def http_outcome(status: int | None, expect_ok: bool = False) -> str:
    if status is None:
        return "CRASH"
    if status >= 500:
        return "500"
    if 400 <= status < 500:
        return "ok-clear-error"
    return "ok-processed"


def daemon_case(dm: Daemon, name: str, fn: Callable[[], tuple[int | None, str]]) -> None:
    if not wanted(name):
        return
    t0 = time.monotonic()
    try:
        status, note = fn()
        outcome = http_outcome(status)
        if outcome == "ok-processed" and note.startswith("FAILED"):
            outcome = "ok-clear-error"
    except Exception as exc:   # the client side gave up: timeout or connection dropped
        status, note = None, f"{type(exc).__name__}: {exc}"[:150]
        outcome = "HANG" if "Timeout" in type(exc).__name__ else "CRASH"
    secs = time.monotonic() - t0
    if not dm.healthy():
        outcome, note = "CRASH", f"daemon no longer answers /v1/health ({note})"
    elif outcome == "ok-clear-error" and status is not None and status not in (202, 400, 401, 403, 404, 409, 413,
                                                                                415, 422, 429, 431):
        note = f"unusual status; {note}"
    report(Row("daemon", name, outcome, str(status), secs, vm(dm.proc.pid), note))


def _submit(dm: Daemon, content: tuple[str, bytes], **kw: object) -> tuple[int, str]:
    """POST a job; when accepted (decoding happens when the job starts) wait for it and say how it ended."""
    r = dm.post_job(content, **kw)
    if r.status_code != 202:
        return r.status_code, _err(r)
    job = r.json()["id"]
    st = dm.wait_job(job)
    if st != "done":
        detail = dm.httpx.get(f"{dm.url}/v1/jobs/{job}", headers=dm.headers()).json()
        dm.delete(job)
        return 202, f"FAILED job {st}: {str(detail.get('error', ''))[:110]}"
    res = dm.httpx.get(f"{dm.url}/v1/jobs/{job}/result", headers=dm.headers()).json()
    psd = dm.httpx.get(f"{dm.url}/v1/jobs/{job}/result.psd", headers=dm.headers(), timeout=60)
    dm.delete(job)
    return 202, f"job done, has_icc={res.get('has_icc')}, PSD {len(psd.content) / 1e3:.0f} KB"


def _err(r) -> str:
    try:
        j = r.json()
        return str(j.get("error") or j.get("detail") or j)[:140]
    except Exception:
        return r.text[:140]


def daemon_cases(deadline: float) -> None:
    global STYLE_PNG
    STYLE_PNG = good_png(40, 40)
    data = TMP / "daemon-data"
    dm = Daemon(data, "--max-upload-mb", "16", "--max-queued-jobs", "3", "--max-job-memory-mb", "60000")
    httpx = dm.httpx
    try:
        def good() -> tuple[int, str]:
            r = dm.post_job(("c.png", good_png()))
            if r.status_code != 202:
                return r.status_code, _err(r)
            st = dm.wait_job(r.json()["id"])
            dm.delete(r.json()["id"])
            return r.status_code, f"job {st}" if st == "done" else f"FAILED job {st}"

        daemon_case(dm, "good PNG job", good)
        for case, (fname, data_) in bad_images().items():
            if time.monotonic() > deadline:
                break

            daemon_case(dm, case, lambda fname=fname, data_=data_: _submit(dm, (fname, data_)))
        daemon_case(dm, "ICC bomb as style upload", lambda: _submit(
            dm, ("c.png", good_png()), style=bad_images()["png 16-bit ICC bomb (256 MB)"][1]))
        daemon_case(dm, "unknown library style", lambda: (lambda r: (r.status_code, _err(r)))(
            httpx.post(dm.url + "/v1/jobs", files=[("content", ("c.png", good_png(), "image/png"))],
                       data={"styles": "no such style", "settings": json.dumps(TINY)}, timeout=60)))
        for label, settings in [("settings JSON nested 50k deep (100 KB)", "[" * 50000 + "]" * 50000),
                                ("settings JSON nested 30k deep (60 KB)", "[" * 30000 + "]" * 30000),
                                ("settings JSON nested 40 deep", '{"a":' * 40 + "1" + "}" * 40),
                                ("settings 5000-digit int", '{"size": ' + "9" * 5000 + "}"),
                                ("settings 10 MB", json.dumps({"comment": "x" * (10 << 20)})),
                                ("settings NaN", '{"size": 32, "style_weight": NaN}'),
                                ("settings 1e400", '{"size": 32, "style_weight": 1e400}'),
                                ("settings not JSON", "{size: 32"),
                                ("settings unknown key", '{"sise": 32}'),
                                ("settings size 0 / negative", '{"size": -5, "iterations": 0}')]:
            daemon_case(dm, label, lambda s=settings: (lambda r: (r.status_code, _err(r)))(
                dm.post_job(("c.png", good_png()), settings=s)))
        daemon_case(dm, "200 style files", lambda: (lambda r: (r.status_code, _err(r)))(
            dm.post_job(("c.png", good_png()), extra_files=[("style_files", (f"s{i}.png", STYLE_PNG, "image/png"))
                                                            for i in range(200)])))
        daemon_case(dm, "5000 form fields", lambda: (lambda r: (r.status_code, _err(r)))(
            httpx.post(dm.url + "/v1/jobs", files=[("content", ("c.png", good_png(), "image/png"))],
                       data={"styles": [f"s{i}" for i in range(5000)]}, timeout=60)))
        daemon_case(dm, "oversize upload (20 MB > 16 MB)", lambda: (lambda r: (r.status_code, _err(r)))(
            dm.post_job(("c.png", os.urandom(20 << 20)))))
        daemon_case(dm, "path traversal in file name", lambda: (lambda r: (r.status_code, _err(r)))(
            httpx.post(dm.url + "/v1/styles", files=[("image", ("../../../etc/x.png", STYLE_PNG, "image/png"))],
                       timeout=60)))
        daemon_case(dm, "Origin: http://evil.example", lambda: (lambda r: (r.status_code, _err(r)))(
            httpx.get(dm.url + "/v1/health", headers={"Origin": "http://evil.example"})))
        daemon_case(dm, "Host: evil.example (DNS rebinding)", lambda: (lambda r: (r.status_code, _err(r)))(
            httpx.get(dm.url + "/v1/health", headers={"Host": f"evil.example:{dm.port}"})))
        daemon_case(dm, "POST with Origin: null", lambda: (lambda r: (r.status_code, _err(r)))(
            httpx.post(dm.url + "/v1/jobs", headers={"Origin": "null"}, files=[("content", ("c.png", b"x"))])))
        _url_probes(dm)
        _mask_and_name_cases(dm)
        daemon_case(dm, "14000^2 PNG as a library style", lambda: (lambda r: (r.status_code, _err(r)))(
            httpx.post(dm.url + "/v1/styles", files=[("image", ("huge.png", big_png(), "image/png"))],
                       data={"name": "huge", "replace": "true"}, timeout=300)))
        daemon_case(dm, "slow-loris: 20 partial bodies, 15 s", lambda: _slow_loris(dm, 20, 15))
        daemon_case(dm, "client drops mid-upload", lambda: _drop_mid_upload(dm))
        _queue_cases(dm)
        daemon_case(dm, "kill -9 with jobs queued, restart", lambda: _kill_restart(dm, data))
        dm = _RESTARTED[0] if _RESTARTED else dm
        big = big_png()
        daemon_case(dm, "14000^2 PNG over --max-job-memory (413)", lambda: (lambda r: (r.status_code, _err(r)))(
            dm.post_job(("big.png", big))))
        daemon_case(dm, "wrong token", lambda: (lambda r: (r.status_code, _err(r)))(
            httpx.get(dm.url + "/v1/jobs", headers={"Authorization": "Bearer wrong"})))
        daemon_case(dm, "no token", lambda: (lambda r: (r.status_code, _err(r)))(httpx.get(dm.url + "/v1/jobs")))
        daemon_case(dm, "good job with the token after restart", good)
    finally:
        for d in (_RESTARTED or [dm]):
            d.stop()
        dm.stop()


_RESTARTED: list[Daemon] = []


def _url_probes(dm: Daemon) -> None:
    """Odd paths and parameters against a finished job: 404/422, never 500."""
    r = dm.post_job(("c.png", good_png()))
    job = r.json()["id"] if r.status_code == 202 else "none"
    dm.wait_job(job) if r.status_code == 202 else None
    probes = [("GET", f"/v1/jobs/{job}/layers/{10 ** 30}/image.png"), ("GET", f"/v1/jobs/{job}/layers/-1/mask.png"),
              ("GET", f"/v1/jobs/{job}/layers/0/image.png?level=99"), ("GET", "/v1/jobs/..%2F..%2Fetc%2Fpasswd"),
              ("GET", f"/v1/jobs/{'x' * 5000}"), ("POST", f"/v1/jobs/{job}/cancel?keep_result=maybe"),
              ("DELETE", "/v1/jobs/nosuchjob"), ("GET", "/v1/styles/..%2F..%2Fetc%2Fpasswd/image"),
              ("DELETE", "/v1/styles/%00")]
    for method, path in probes:
        daemon_case(dm, f"{method} {path.replace(job, 'ID')[:38]}", lambda m=method, p=path: (
            lambda r: (r.status_code, _err(r)))(dm.httpx.request(m, dm.url + p, headers=dm.headers(), timeout=30)))
    dm.delete(job)


def _mask_and_name_cases(dm: Daemon) -> None:
    mask_small = encode(noise(8, 8, 9)[:, :, 0], "PNG")
    cases = [("mask of the wrong size", {"extra_files": [("mask", ("m.png", mask_small, "image/png"))]}),
             ("mask is an ICC bomb", {"extra_files": [("mask", ("m.png", raw_png(64, 48, 8, chunk(
                 b"iCCP", b"x\0\0" + zeros_stream(256))), "image/png"))]}),
             ("mask_mode nonsense", {"extra_data": {"mask_mode": "everything"}}),
             ("run name 100 KB with ../ and NUL", {"extra_data": {"name": "../\0" + "n" * 100_000}}),
             ("17 styles (limit 16)", {"extra_files": [("style_files", (f"s{i}.png", STYLE_PNG, "image/png"))
                                                       for i in range(16)]})]
    for label, kw in cases:
        daemon_case(dm, label, lambda kw=kw: _submit(dm, ("c.png", good_png()), **kw))


def _slow_loris(dm: Daemon, n: int, seconds: float) -> tuple[int, str]:
    socks = []
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{dm.port}\r\nContent-Type: multipart/form-data; "
            f"boundary=xx\r\nContent-Length: 1000000\r\n\r\n--xx\r\n").encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", dm.port), timeout=5)
        s.sendall(head)
        socks.append(s)
    worst = 0.0
    closed = 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        for s in socks:
            try:
                s.sendall(b"a")
            except OSError:
                closed += 1
        t = time.monotonic()
        ok = dm.healthy(10)
        worst = max(worst, time.monotonic() - t)
        if not ok:
            break
        time.sleep(1)
    for s in socks:
        s.close()
    return (200 if ok else None), f"health answered in <= {worst:.2f} s throughout; {closed} sends refused"


def _drop_mid_upload(dm: Daemon) -> tuple[int, str]:
    before = sorted(p.name for p in (dm.data / "jobs").rglob("*"))
    body = good_png()
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{dm.port}\r\nContent-Type: multipart/form-data; "
            f"boundary=xx\r\nContent-Length: {len(body) * 4}\r\n\r\n--xx\r\nContent-Disposition: form-data; "
            f"name=\"content\"; filename=\"c.png\"\r\n\r\n").encode() + body[: len(body) // 2]
    with socket.create_connection(("127.0.0.1", dm.port), timeout=5) as s:
        s.sendall(head)
        time.sleep(0.5)
    time.sleep(2)
    after = sorted(p.name for p in (dm.data / "jobs").rglob("*"))
    extra = sorted(set(after) - set(before))
    return (200, "no files left") if not extra else (200, f"FAILED files left in data/jobs: {extra[:4]}")


def _queue_cases(dm: Daemon) -> None:
    httpx = dm.httpx
    ids: list[str] = []
    long = json.dumps({**TINY, "size": 64, "iterations": 3000})
    big = big_png()

    def fill_queue() -> tuple[int, str]:
        r = dm.post_job(("long.png", good_png()), settings=long)
        ids.append(r.json()["id"])
        codes = []
        rss = []
        for _ in range(3):
            r = dm.post_job(("big.png", big))     # 571 KB, 196 MP: must wait on disk, not decoded
            codes.append(r.status_code)
            if r.status_code == 202:
                ids.append(r.json()["id"])
            rss.append(vm(dm.proc.pid, "VmRSS"))
        r = dm.post_job(("over.png", good_png()))
        codes.append(r.status_code)
        if r.status_code == 202:
            ids.append(r.json()["id"])
        note = (f"codes {codes}; file {len(big) / 1e3:.0f} KB; daemon VmRSS after each 14000^2: "
                f"{', '.join(f'{x:.0f}' for x in rss)} MB")
        return codes[-1], note if codes[-1] == 429 else "FAILED no 429: " + note

    daemon_case(dm, "3 x 14000^2 PNG queued + overflow (429)", fill_queue)
    _QUEUED.extend(ids)


_QUEUED: list[str] = []


def _kill_restart(dm: Daemon, data: Path) -> tuple[int, str]:
    os.kill(dm.proc.pid, signal.SIGKILL)
    dm.proc.wait()
    left_before = sorted(str(p.relative_to(data)) for p in (data / "jobs").rglob("*") if p.is_file())
    new = Daemon(data, "--max-upload-mb", "16", "--max-job-memory-mb", "1000", token="s3cret")
    _RESTARTED.append(new)
    time.sleep(1)
    mine = data / "jobs" / str(new.proc.pid)
    left = sorted(str(p.relative_to(data)) for p in (data / "jobs").rglob("*")
                  if p.is_file() and mine not in p.parents)
    listed = new.httpx.get(new.url + "/v1/jobs", headers=new.headers()).json()["jobs"]
    note = (f"{len(left_before)} files in jobs/ after kill -9, {len(left)} after restart; "
            f"{len(listed)} jobs listed")
    # daemon_case checks health on the old object; point it at the new one
    dm.__dict__.update(new.__dict__)
    return 200, note if not left else "FAILED " + note + f": {left[:3]}"


# ------------------------------------------------------------------------------------------------ hot folder


class Hot:
    def __init__(self, root: Path, stable: float = 0.2) -> None:
        self.root = root
        self.stable = stable
        self.log = TMP / f"watch-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None
        self.inputs: dict[str, str] = {}   # sha -> name of every regular file dropped
        self.n = 0

    def setup(self, preset: dict | None = None) -> None:
        (self.root / "in").mkdir(parents=True, exist_ok=True)
        (self.root / "styles").mkdir(exist_ok=True)
        (self.root / "styles" / "s.png").write_bytes(good_png(40, 40))
        (self.root / "preset.json").write_text(json.dumps({"styles": ["styles/s.png"], **TINY, **(preset or {})}))

    def start(self) -> None:
        self.proc = subprocess.Popen([PY, "-m", "bridge.cli", "watch", str(self.root), "--stable-seconds",
                                      str(self.stable)], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     env=env())
        PROCS.append(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def drop(self, name: str, data: bytes, sub: str = "") -> Path:
        folder = self.root / "in" / sub
        folder.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".drop-{self.n}"
        tmp.write_bytes(data)
        self.n += 1
        self.inputs[hashlib.sha256(data).hexdigest()] = name
        target = folder / name
        os.replace(tmp, target)
        return target

    def found(self) -> dict[str, str]:
        where = {}
        for d in ("in", "working", "done", "error"):
            base = self.root / d
            if base.exists():
                for p in base.rglob("*"):
                    if p.is_file() and not p.is_symlink() and not p.name.endswith(".txt") and \
                            not p.name.endswith(".json"):
                        try:
                            where.setdefault(sha(p), d)
                        except OSError:
                            pass
        return where

    def lost(self) -> list[str]:
        where = self.found()
        return [name for h, name in self.inputs.items() if h not in where]

    def where(self, data: bytes) -> str:
        return self.found().get(hashlib.sha256(data).hexdigest(), "nowhere")

    def good_processed(self, seconds: float = 180) -> bool:
        name = f"good{self.n}.png"
        self.drop(name, good_png())
        out = self.root / "out" / name.replace(".png", ".psd")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if out.exists() and (self.root / "done" / name).exists():
                return True
            if not self.alive():
                return False
            time.sleep(0.2)
        return False

    def settle(self, data: bytes | None, seconds: float = 90) -> str:
        deadline = time.monotonic() + seconds
        h = hashlib.sha256(data).hexdigest() if data is not None else None
        while time.monotonic() < deadline and self.alive():
            if h is None:
                return "-"
            w = self.found().get(h, "nowhere")
            if w in ("done", "error"):
                return w
            time.sleep(0.2)
        return self.found().get(h, "nowhere") if h else "-"

    def stop(self, sig: int = signal.SIGTERM, seconds: float = 30) -> tuple[float, int | None]:
        if not self.alive():
            return 0.0, self.proc.returncode if self.proc else None
        t0 = time.monotonic()
        os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return float("inf"), None
        return time.monotonic() - t0, self.proc.returncode

    def tail(self) -> str:
        return last_line(self.log.read_text(errors="replace"))


def hot_case(hot: Hot, name: str, act: Callable[[], tuple[str, str]], good_after: bool = True) -> None:
    """``act`` returns (where the hostile input ended, note); then the watcher must be alive and process a good
    file, nothing may be lost and out/ may hold no partial file."""
    if not wanted(name):
        return
    t0 = time.monotonic()
    try:
        where, note = act()
    except Exception as exc:
        where, note = "?", f"bench error: {type(exc).__name__}: {exc}"
    secs = time.monotonic() - t0
    outcome = {"error": "ok-clear-error", "done": "ok-processed"}.get(where, "ok-clear-error")
    if where in ("in", "working", "nowhere") and hot.alive():
        outcome = "HANG" if where == "working" else outcome
        note = f"input still in {where}/; {note}"
    if not hot.alive():
        outcome, note = "CRASH", f"watcher exited {hot.proc.returncode}: {hot.tail()}"
    elif good_after and not hot.good_processed():
        outcome, note = ("CRASH" if not hot.alive() else "HANG"), f"a good file was not processed after it; {note}"
    lost = hot.lost()
    left = temp_leftovers(hot.root / "out")
    if lost or left:
        outcome, note = "DATA-LOST", f"lost {lost[:3]} left {left[:3]}; {note}"
    peak = vm(hot.proc.pid) if hot.alive() else float("nan")
    report(Row("hot", name, outcome, "alive" if hot.alive() else str(hot.proc.returncode), secs, peak, note))
    if not hot.alive():
        hot.start()
        time.sleep(3)


def hot_cases(deadline: float) -> None:
    hot = Hot(TMP / "hot")
    hot.setup()
    hot.start()
    time.sleep(2)

    def drop_and_settle(name: str, data: bytes, sub: str = "") -> Callable[[], tuple[str, str]]:
        def act() -> tuple[str, str]:
            hot.drop(name, data, sub)
            w = hot.settle(data)
            return w, hot.tail()
        return act

    hot_case(hot, "good PNG", drop_and_settle("first.png", good_png()), good_after=False)
    for n, (label, nm) in enumerate([("Japanese name 79 chars (241 B)", "写" * 79 + ".png"),
                                     ("Japanese name 83 chars (253 B)", "写" * 83 + ".png"),
                                     ("ASCII name 255 B", "a" * 251 + ".png"),
                                     ("name with newline and quotes", "a\nb\"'$(x).png")]):
        hot_case(hot, label, drop_and_settle(nm, good_png()))
    def same_name_again() -> tuple[str, str]:
        before = sha(hot.root / "out" / "first.psd")
        data = good_png()
        hot.drop("first.png", data)
        w = hot.settle(data)
        after = sha(hot.root / "out" / "first.psd")
        outs = sorted(p.name for p in (hot.root / "out").glob("first*"))
        if before != after:
            return "nowhere", f"out/first.psd overwritten; outputs {outs}"
        return w, f"outputs {outs}, done/ {sorted(p.name for p in (hot.root / 'done').glob('first*'))}"

    hot_case(hot, "same name as a finished file", same_name_again)
    for case, (fname, data) in bad_images().items():
        if time.monotonic() > deadline:
            break
        hot_case(hot, case, drop_and_settle(f"{hot.n}-{fname}", data))

    def special(kind: str) -> Callable[[], tuple[str, str]]:
        def act() -> tuple[str, str]:
            p = hot.root / "in" / f"{kind}.png"
            if kind == "fifo":
                os.mkfifo(p)
            elif kind == "socket":
                s = socket.socket(socket.AF_UNIX)
                s.bind(str(p))
                _SOCKS.append(s)
            elif kind == "dir":
                p.mkdir()
            elif kind == "symlink-outside":
                (TMP / "outside.png").write_bytes(good_png())
                p.symlink_to(TMP / "outside.png")
            elif kind == "symlink-devzero":
                p.symlink_to("/dev/zero")
            elif kind == "symlink-loop":
                p.symlink_to(p)
            time.sleep(4)
            places = [d for d in ("in", "working", "done", "error")
                      if any(kind in q.name for q in (hot.root / d).rglob("*") if os.path.lexists(q))]
            if kind == "symlink-outside" and not (TMP / "outside.png").exists():
                return "nowhere", "the symlink's target was moved/removed"
            return ("error" if "error" in places else places[0] if places else "gone"), f"now in {places}"
        return act

    for kind in ("fifo", "socket", "dir", "symlink-outside", "symlink-devzero", "symlink-loop"):
        hot_case(hot, f"{kind} in in/", special(kind))

    def bad_preset(text: str) -> Callable[[], tuple[str, str]]:
        def act() -> tuple[str, str]:
            sub = f"sub{hot.n}"
            (hot.root / "in" / sub).mkdir(parents=True)
            (hot.root / "in" / sub / "preset.json").write_text(text)
            data = good_png()
            hot.drop("p.png", data, sub)
            return hot.settle(data), hot.tail()
        return act

    hot_case(hot, "in/SUB/preset.json nested 50k deep", bad_preset("[" * 50000 + "]" * 50000))
    hot_case(hot, "in/SUB/preset.json nested 30k deep (60 KB)", bad_preset("[" * 30000 + "]" * 30000))
    hot_case(hot, "in/SUB/preset.json 5000-digit int", bad_preset('{"size": ' + "9" * 5000 + "}"))
    hot_case(hot, "in/SUB/preset.json 1 MB", bad_preset(json.dumps({"comment": "x" * (1 << 20)})))
    hot_case(hot, "sidecar NAME.json NaN", lambda: (
        (hot.root / "in" / "sc.json").write_text('{"style_weight": NaN}'), drop_and_settle("sc.png", good_png())())[1])

    # signals in each state ---------------------------------------------------------------------------------
    def sigterm(state: str) -> Callable[[], tuple[str, str]]:
        def act() -> tuple[str, str]:
            data = None
            if state == "processing a long job":
                data = good_png(96, 96)
                (hot.root / "in" / f"long{hot.n}.json").write_text(json.dumps({"size": 64, "iterations": 40}))
                hot.drop(f"long{hot.n}.png", data)
                _wait_working(hot, 60)
                time.sleep(3)
            elif state == "file still being written":
                fh = open(hot.root / "in" / "growing.png", "wb")
                fh.write(good_png()[:100])
                fh.flush()
                _OPEN.append(fh)
            elif state == "FIFO in in/":
                os.mkfifo(hot.root / "in" / f"fifo{hot.n}.png")
                time.sleep(2)
            secs, rc = hot.stop(signal.SIGTERM)
            note = f"exit {rc} after {secs:.1f} s"
            for fh in _OPEN:
                fh.write(good_png()[100:])
                fh.close()
            _OPEN.clear()
            hot.start()
            time.sleep(2)
            if secs > 10:
                return "working", "SIGTERM took > 10 s: " + note
            if data is None:
                return "done", note
            w = hot.settle(data, 240)
            return ("done" if w in ("done", "error") else w), note + f"; after restart the input is in {w}/"
        return act

    for state in ("idle", "file still being written", "FIFO in in/", "processing a long job"):
        hot_case(hot, f"SIGTERM {state}", sigterm(state))

    def kill9() -> tuple[str, str]:
        data = good_png(96, 96)
        name = f"k{hot.n}"
        (hot.root / "in" / f"{name}.json").write_text(json.dumps({"size": 64, "iterations": 40}))
        hot.drop(f"{name}.png", data)
        _wait_working(hot, 60)
        time.sleep(2)
        os.kill(hot.proc.pid, signal.SIGKILL)
        hot.proc.wait()
        hot.start()
        w = hot.settle(data, 300)
        outs = sorted(p.name for p in (hot.root / "out").glob(f"{name}*"))
        note = f"after restart: input in {w}/, outputs {outs}"
        if w == "done" and outs != [f"{name}.psd"]:
            return "nowhere", "redone or missing output: " + note
        return w, note

    hot_case(hot, "kill -9 mid-job, restart", kill9)
    hot.stop()

    # full file systems (root only) -------------------------------------------------------------------------
    fs = TMP / "hotfs"
    if not mount_tmpfs(fs, "24m"):
        report(Row("hot", "full-disk cases", "skipped", "-", 0, float("nan"), "cannot mount tmpfs (not root?)"))
        return
    hot2 = Hot(fs / "hot", stable=1.0)
    hot2.setup()
    (fs / "hot" / "out").mkdir()
    mount_tmpfs(fs / "hot" / "out", "2m")
    hot2.start()
    time.sleep(2)

    def out_full() -> tuple[str, str]:
        filler = fill(hot2.root / "out")
        data = good_png(200, 150)
        hot2.drop("of.png", data)
        time.sleep(25)
        mid = hot2.where(data)
        left = temp_leftovers(hot2.root / "out")
        filler.unlink()
        w = hot2.settle(data, 120)
        return w, f"while out/ full: input in {mid}/, partial files {left}; after freeing: {w}/"

    hot_case(hot2, "out/ on another tmpfs, full", out_full)

    def disk_full() -> tuple[str, str]:
        data = good_png(200, 150)
        hot2.drop("df.png", data)
        filler = fill(fs, "filler.bin")
        time.sleep(15)
        mid = hot2.where(data)
        alive = hot2.alive()
        filler.unlink()
        w = hot2.settle(data, 120)
        return w, f"disk full: watcher {'alive' if alive else 'DEAD'}, input in {mid}/; after freeing: {w}/"

    hot_case(hot2, "whole disk full (journal)", disk_full)

    def sigterm_full() -> tuple[str, str]:
        data = good_png(200, 150)
        hot2.drop("tf.png", data)
        filler = fill(fs, "filler2.bin")
        time.sleep(8)
        secs, rc = hot2.stop(signal.SIGTERM)
        filler.unlink()
        hot2.start()
        w = hot2.settle(data, 180)
        if secs > 10:
            return "working", f"SIGTERM took {secs:.1f} s"
        return w, f"exit {rc} after {secs:.1f} s while disk full; after restart in {w}/"

    hot_case(hot2, "SIGTERM while disk full", sigterm_full)
    hot2.stop()
    umount(fs / "hot" / "out")
    umount(fs)


_SOCKS: list[socket.socket] = []
_OPEN: list = []


def _wait_working(hot: Hot, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any((hot.root / "working").glob("*")):
            return
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fronts", default="cli,daemon,hot", help="comma-separated: cli, daemon, hot")
    ap.add_argument("--minutes", type=float, default=40, help="stop starting new cases after this long")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only the cases they name")
    args = ap.parse_args()
    ONLY.extend(o for o in args.only.split(",") if o)
    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60
    print(f"{'front':6s} {'case':44s} {'outcome':15s} {'code':>6s} {'secs':>8s} {'peak':>8s}     note")
    runners = {"cli": cli_cases, "daemon": daemon_cases, "hot": hot_cases}
    for front in args.fronts.split(","):
        try:
            runners[front](deadline)
        except Exception as exc:   # the bench itself failed: say so, go on with the next front end
            import traceback
            traceback.print_exc()
            report(Row(front, "bench error", "BENCH-ERROR", "-", 0, float("nan"), f"{type(exc).__name__}: {exc}"))
    counted = [r for r in ROWS if r.outcome not in ("skipped", "BENCH-ERROR")]
    worst = max((r for r in counted if r.peak_mb == r.peak_mb), key=lambda r: r.peak_mb, default=None)
    print()
    print(f"cases tried: {len(counted)} (cli {sum(r.front == 'cli' for r in counted)}, daemon "
          f"{sum(r.front == 'daemon' for r in counted)}, hot folder {sum(r.front == 'hot' for r in counted)}) "
          f"in {(time.monotonic() - t0) / 60:.1f} min")
    for label in ("CRASH", "HANG", "DATA-LOST", "500"):
        bad = [r for r in counted if r.outcome == label]
        print(f"{label.lower() if label != '500' else 'HTTP 5xx'}: {len(bad)}" +
              (f"  ({'; '.join(f'{r.front}: {r.case}' for r in bad)})" if bad else ""))
    ok = {o: sum(r.outcome == o for r in counted) for o in ("ok-clear-error", "ok-processed")}
    print(f"ok: {ok['ok-clear-error']} refused with a clear error, {ok['ok-processed']} processed")
    if worst:
        print(f"worst peak memory: {worst.peak_mb:.0f} MB ({worst.front}: {worst.case})")
    cli_worst = max((r for r in counted if r.front == "cli" and r.peak_mb == r.peak_mb), key=lambda r: r.peak_mb,
                    default=None)
    if cli_worst:
        print(f"worst CLI peak: {cli_worst.peak_mb:.0f} MB ({cli_worst.case})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
