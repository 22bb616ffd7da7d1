"""The hot folder: real folders, real watchdog, the real engine (tiny settings), the watcher in this process.

Each test builds ``DIR`` in tmp_path with a tiny preset (size 40, 3 iterations, one stage) and
small inputs made from the repository's samples (tests/testdata.py); PSD outputs are checked with the
independent readers (tests/psdreaders) and read back with psd-tools. Daemon mode talks real HTTP to the
daemon app served in this process (tests/inprocess.py); the tests marked ``e2e`` run real
``stylebridge watch`` processes (kill -9, two watchers, a write limit, the --daemon command line), forked from
this one where only the process matters (tests/inprocess.py :class:`Forked`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge.hotfolder.journal import Journal
from bridge.hotfolder.process import InProcessEngine
from bridge.hotfolder.watcher import Watcher
from inprocess import Forked, WatcherThread, daemon_in_thread, watch_once
from psdreaders import check_psd as psdcheck
from testdata import PSD_DIR, SAMPLES

REPO = Path(__file__).resolve().parents[1]
TINY = {"size": 40, "iterations": 3, "coarse_to_fine": False, "device": "cpu", "seed": 1}
STABLE = 0.2


def make_photo(path: Path, long_side: int = 96, fmt: str | None = None, sample: str = "coffee") -> Path:
    im = Image.open(SAMPLES[sample]).convert("RGB")
    im.thumbnail((long_side, long_side), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt or None)
    return path


def make_hot(tmp_path: Path, **preset: object) -> Path:
    root = tmp_path / "hot"
    (root / "styles").mkdir(parents=True)
    make_photo(root / "styles" / "starry.jpg", 128, sample="starry_night")
    make_photo(root / "styles" / "scream.jpg", 128, sample="the_scream")
    (root / "preset.json").write_text(json.dumps({"styles": ["styles/starry.jpg"], **TINY, **preset}))
    (root / "in").mkdir()
    return root


def run_once(root: Path) -> int:
    return Watcher(root, InProcessEngine(), stable_seconds=STABLE, once=True).run()


def layer_names(path: Path) -> list[str]:
    from psd_tools import PSDImage
    return [layer.name for layer in PSDImage.open(path).descendants()]


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def wait_for(path: Path, seconds: float = 90) -> None:
    """Poll until ``path`` exists (the test's assertions then say what went wrong if it never does)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.1)


def events(root: Path) -> list[tuple[str, str]]:
    recs = list(Journal(root / ".stylebridge" / "journal.jsonl").records())
    rel = {r["job"]: r.get("rel") for r in recs if r["event"] == "claim"}
    return [(r["event"], rel.get(r["job"], "?")) for r in recs]


# ---------------------------------------------------------------------------------------------


def test_good_photo_becomes_a_valid_layered_psd(tmp_path: Path) -> None:
    root = make_hot(tmp_path)
    src = make_photo(root / "in" / "photo.jpg")
    original = src.read_bytes()
    assert run_once(root) == 0
    assert files(root / "out") == ["photo.psd"] and files(root / "error") == []
    assert (root / "done" / "photo.jpg").read_bytes() == original
    assert files(root / "working") == [] and files(root / "in") == []
    check = psdcheck(root / "out" / "photo.psd")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "starry" in layer_names(root / "out" / "photo.psd")
    assert [e for e, _ in events(root)] == ["claim", "started", "output-intent", "output-written",
                                             "done-intent", "done"]
    assert not any((root / ".stylebridge" / "tmp").iterdir())


def test_contact_sheet_beside_the_psd_and_notes_for_old_names(tmp_path: Path, capsys) -> None:
    """preset "contact_sheet": true -> out/NAME-previews.png (the fast previews of bridge.preview: the photo
    and one tile per style) beside out/NAME.psd; an old option name still works and the watcher says so.
    A second file with the same name gets NAME-2.psd and NAME-2-previews.png: nothing is replaced."""
    root = make_hot(tmp_path, contact_sheet=True, preserve_colors=False, styles=["styles/starry.jpg",
                                                                               "styles/scream.jpg"])
    make_photo(root / "in" / "photo.jpg")
    (root / "out").mkdir()
    (root / "out" / "photo-previews.png").write_bytes(b"the user's own")
    assert run_once(root) == 0
    out = capsys.readouterr().out
    assert files(root / "out") == ["photo-previews-2.png", "photo-previews.png", "photo.psd"], out
    assert (root / "out" / "photo-previews.png").read_bytes() == b"the user's own"
    sheet = Image.open(root / "out" / "photo-previews-2.png")
    assert sheet.width > 2 * 512 and sheet.height > 512          # the photo + 2 previews of 512 px
    assert "wrote out/photo-previews-2.png" in out
    assert "note: 'preserve-colors' is now called 'original-colors'" in out
    assert "starry (1/2), stage 1/1" in out                       # the one progress text


def test_slow_chunked_copy_is_processed_once_after_it_is_complete(tmp_path: Path) -> None:
    root = make_hot(tmp_path)
    data = make_photo(tmp_path / "src.png", 160, "PNG").read_bytes()   # ~40 KB: several chunks
    chunk = 8192
    assert len(data) > 3 * chunk
    watcher = Watcher(root, InProcessEngine(), stable_seconds=0.5)
    runner = threading.Thread(target=watcher.run)
    runner.start()
    target = root / "in" / "slow.png"
    try:
        with open(target, "wb") as fh:                 # like a copy tool: one open, chunked writes
            for i in range(0, len(data), chunk):
                fh.write(data[i:i + chunk])
                fh.flush()
                time.sleep(0.2)
        wait_for(root / "done" / "slow.png")
    finally:
        watcher.stop()
        runner.join(timeout=60)
    assert not runner.is_alive()
    assert files(root / "error") == [], (root / "error").iterdir()
    assert files(root / "out") == ["slow.psd"]
    assert (root / "done" / "slow.png").read_bytes() == data
    assert [e for e, r in events(root) if r == "slow.png"].count("claim") == 1
    assert psdcheck(root / "out" / "slow.psd").returncode == 0


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_inputs_go_to_error_with_a_reason_and_good_ones_still_run(tmp_path: Path) -> None:
    root = make_hot(tmp_path)
    inbox = root / "in"
    good = make_photo(tmp_path / "good.jpg").read_bytes()
    (inbox / "a_corrupt.jpg").write_bytes(good[:600])                       # truncated JPEG
    (inbox / "b_empty.png").write_bytes(b"")
    (inbox / "c_notes.txt").write_text("just some words\n")
    (inbox / "d_text_named.jpg").write_text("not really a photo\n")
    (inbox / "e_jpeg_named.png").write_bytes(good)                          # content decides: processed
    big = Image.new("1", (15000, 15000))                                    # 225 Mpx > LIMITS.max_pixels
    big.save(inbox / "f_huge.png", optimize=False)
    psd_header = bytearray((PSD_DIR / "group.psd").read_bytes())
    psd_header[14:22] = (20000).to_bytes(4, "big") * 2                      # claims 20000 x 20000
    (inbox / "g_huge.psd").write_bytes(psd_header)
    (inbox / "h_bad_sidecar.jpg").write_bytes(good)
    (inbox / "h_bad_sidecar.json").write_text('{"iterations": "many"}')
    (inbox / "i_unknown_option.jpg").write_bytes(good)
    (inbox / "i_unknown_option.jpg.json").write_text('{"strength": 3}')
    (inbox / "z_good.jpg").write_bytes(good)

    assert run_once(root) == 1
    assert files(root / "out") == ["e_jpeg_named.psd", "z_good.psd"]
    reasons = {p.name[:-4]: p.read_text() for p in (root / "error").glob("*.txt")
               if (root / "error" / p.name[:-4]).exists()}
    expected = {
        "a_corrupt.jpg": "truncated",
        "b_empty.png": "empty",
        "c_notes.txt": "plain text",
        "d_text_named.jpg": "plain text",
        "f_huge.png": "over the limit",
        "g_huge.psd": "over the limit",
        "h_bad_sidecar.jpg": "iterations",
        "i_unknown_option.jpg": "strength: unknown option",
    }
    assert sorted(reasons) == sorted(expected)
    for name, fragment in expected.items():
        assert (root / "error" / name).exists()
        assert fragment in reasons[name], reasons[name]
        assert "What to do:" in reasons[name]
    # Sidecars travel with their input.
    assert (root / "error" / "h_bad_sidecar.json").exists()
    assert (root / "error" / "i_unknown_option.jpg.json").exists()
    assert files(root / "in") == [] and files(root / "working") == []


def test_subfolder_presets_and_sidecar_overrides(tmp_path: Path) -> None:
    root = make_hot(tmp_path)
    sub = root / "in" / "scream"
    sub.mkdir()
    (sub / "preset.json").write_text(json.dumps({"styles": ["../../styles/scream.jpg"]}))
    make_photo(root / "in" / "a.jpg")
    make_photo(sub / "b.jpg", sample="shipwreck")
    make_photo(root / "in" / "c.jpg")
    (root / "in" / "c.json").write_text(json.dumps({"styles": ["../styles/scream.jpg", "../styles/starry.jpg"],
                                                    "reveal": "all"}))
    assert run_once(root) == 0
    assert files(root / "out") == ["a.psd", "c.psd", "scream/b.psd"]
    assert files(root / "done") == ["a.jpg", "c.jpg", "c.json", "scream/b.jpg"]
    assert (root / "in" / "scream" / "preset.json").exists()          # the droplet's preset stays
    assert "starry" in layer_names(root / "out" / "a.psd") and "scream" not in layer_names(root / "out" / "a.psd")
    assert "scream" in layer_names(root / "out" / "scream" / "b.psd")
    names_c = layer_names(root / "out" / "c.psd")
    assert "scream" in names_c and "starry" in names_c
    # The sidecar's reveal=all: every style layer's mask is white.
    from psd_tools import PSDImage
    psd = PSDImage.open(root / "out" / "c.psd")
    for layer in psd.descendants():
        if layer.name in ("scream", "starry"):
            assert np.asarray(layer.mask.topil()).min() == 255


def test_bad_root_preset_sends_files_to_error_and_watcher_keeps_going(tmp_path: Path) -> None:
    root = make_hot(tmp_path)
    (root / "preset.json").write_text('{"styles": ["styles/starry.jpg"], "size": 40,}')   # trailing comma
    make_photo(root / "in" / "a.jpg")
    assert run_once(root) == 1
    note = (root / "error" / "a.jpg.txt").read_text()
    assert "preset.json" in note and "not valid JSON" in note
    # Fix the preset, move the file back: it goes through.
    (root / "preset.json").write_text(json.dumps({"styles": ["styles/starry.jpg"], **TINY}))
    os.rename(root / "error" / "a.jpg", root / "in" / "a.jpg")
    assert run_once(root) == 0
    assert files(root / "out") == ["a.psd"]


def test_outputs_never_overwrite(tmp_path: Path) -> None:
    root = make_hot(tmp_path)
    (root / "out").mkdir()
    (root / "out" / "photo.psd").write_bytes(b"the user's own file")
    (root / "done").mkdir()
    (root / "done" / "photo.jpg").write_bytes(b"an older original")
    make_photo(root / "in" / "photo.jpg")
    assert run_once(root) == 0
    assert (root / "out" / "photo.psd").read_bytes() == b"the user's own file"
    assert (root / "done" / "photo.jpg").read_bytes() == b"an older original"
    assert files(root / "out") == ["photo-2.psd", "photo.psd"]
    assert files(root / "done") == ["photo-2.jpg", "photo.jpg"]


def _rewind(root: Path, keep_until: str) -> str:
    """Make the folder look as if the watcher died right after journalling ``keep_until``."""
    journal = root / ".stylebridge" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if json.loads(line)["event"] == keep_until)
    journal.write_text("\n".join(lines[:cut + 1]) + "\n")
    claim_rec = json.loads(lines[0])
    os.rename(root / "done" / "photo.jpg", root / "working" / claim_rec["working"])
    return claim_rec["job"]


def test_restart_after_output_written_only_moves_the_original(tmp_path: Path) -> None:
    root = make_hot(tmp_path)
    make_photo(root / "in" / "photo.jpg")
    assert run_once(root) == 0
    _rewind(root, "output-written")
    before = (root / "out" / "photo.psd").stat().st_mtime_ns
    assert run_once(root) == 0
    assert files(root / "out") == ["photo.psd"] and files(root / "done") == ["photo.jpg"]
    assert (root / "out" / "photo.psd").stat().st_mtime_ns == before
    evs = [e for e, _ in events(root)]
    assert evs.count("started") == 1                                  # no second render
    assert evs[-3:] == ["resumed", "done-intent", "done"]


def test_restart_after_link_before_journal_does_not_duplicate(tmp_path: Path) -> None:
    """Died between linking the output into out/ and journalling it: the link is recognised."""
    root = make_hot(tmp_path)
    make_photo(root / "in" / "photo.jpg")
    assert run_once(root) == 0
    job = _rewind(root, "output-intent")
    intent = [json.loads(x) for x in (root / ".stylebridge" / "journal.jsonl").read_text().splitlines()][-1]
    scratch = root / intent["tmp"]
    scratch.parent.mkdir(parents=True, exist_ok=True)
    os.link(root / "out" / "photo.psd", scratch)           # the scratch file was not yet removed
    assert run_once(root) == 0
    assert files(root / "out") == ["photo.psd"] and files(root / "done") == ["photo.jpg"]
    assert not scratch.exists()
    evs = [e for e, _ in events(root)]
    assert evs.count("started") == 1 and evs.count("output-written") == 1 and job


def test_every_photoshop_file_gives_a_valid_psd_or_a_reasoned_error(tmp_path: Path) -> None:
    root = make_hot(tmp_path)
    inputs = sorted(PSD_DIR.iterdir())
    for p in inputs:
        shutil.copyfile(p, root / "in" / p.name)
    run_once(root)
    out = {p.stem: p for p in (root / "out").iterdir()}
    errors = {p.name: p for p in (root / "error").iterdir() if not p.name.endswith(".txt")}
    for p in inputs:
        if p.stem in out:
            check = psdcheck(out[p.stem])
            assert check.returncode == 0, f"{p.name}: {check.stdout}{check.stderr}"
            assert (root / "done" / p.name).read_bytes() == p.read_bytes()
        else:
            assert p.name in errors, f"{p.name} neither in out/ nor in error/"
            note = (root / "error" / f"{p.name}.txt").read_text()
            assert "Why: " in note and "internal error" not in note, note
    assert files(root / "in") == [] and files(root / "working") == []
    print({p.name: ("out" if p.stem in out else "error") for p in inputs})


# --------------------------------------------------------------------------------------------
# Real `stylebridge watch` processes


def _watch_args(root: Path, *extra: str) -> list[str]:
    return ["watch", str(root), "--stable-seconds", str(STABLE), *extra]


def _watch_cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bridge.cli", *_watch_args(root, *extra)]


class _Lines:
    """Collect a subprocess's output lines in a thread; wait for one that contains a text."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(text in x for x in self.lines), timeout=timeout)


@pytest.mark.e2e
def test_kill_9_mid_job_then_restart_finishes_it_exactly_once(tmp_path: Path) -> None:
    root = make_hot(tmp_path, iterations=300, size=48)          # slow enough to be killed mid-run
    src = make_photo(root / "in" / "photo.jpg")
    original = src.read_bytes()
    # First a polite stop (what SIGTERM calls, bridge/hotfolder/command.py; in this process: the signal itself is
    # test_hardening_hotfolder.py's): the engine stops at its next iteration, the file stays in working/.
    with WatcherThread(root, stable_seconds=STABLE) as w:
        assert w.wait_for("stage 1/1", timeout=120), w.output
        assert w.stop() == 0, w.output
    assert ("interrupted", "photo.jpg") in events(root)
    assert files(root / "out") == [] and len(files(root / "working")) == 1
    # Then kill -9 of a restarted watcher (a real process: tests/inprocess.py Forked) in the middle of the resumed job.
    proc = Forked(_watch_args(root))
    out = _Lines(proc)
    try:
        assert out.wait_for("stage 1/1", timeout=120), "".join(out.lines)   # the engine is iterating
        assert ("started", "photo.jpg") in events(root)
    finally:
        proc.kill()                                               # SIGKILL: no cleanup at all
        proc.wait(timeout=30)
    assert proc.returncode == -9
    assert files(root / "out") == [] and files(root / "in") == []
    [left] = files(root / "working")
    assert left.endswith("--photo.jpg")
    # A quicker preset for the rerun (the job re-reads its settings when it resumes), in this process.
    (root / "preset.json").write_text(json.dumps({"styles": ["styles/starry.jpg"], **TINY}))
    rc, text = watch_once(root, stable_seconds=STABLE)
    assert rc == 0, text
    assert "resuming" in text
    assert files(root / "out") == ["photo.psd"]
    assert files(root / "done") == ["photo.jpg"] and (root / "done" / "photo.jpg").read_bytes() == original
    assert files(root / "working") == [] and files(root / "error") == []
    assert not any((root / ".stylebridge" / "tmp").iterdir())
    assert psdcheck(root / "out" / "photo.psd").returncode == 0
    evs = [e for e, _ in events(root)]
    assert evs.count("claim") == 1 and evs.count("resumed") == 2 and evs.count("done") == 1


@pytest.mark.e2e
def test_two_watchers_on_one_folder_process_each_file_once(tmp_path: Path) -> None:
    """Two ``stylebridge watch --once`` processes (forked from this one at the same instant, tests/inprocess.py
    Forked) race for the same six photos; each is claimed, rendered and moved exactly once."""
    root = make_hot(tmp_path)
    names = [f"p{i}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        make_photo(root / "in" / name, 64 + 8 * i)
    procs = [Forked(_watch_args(root, "--once")) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert files(root / "out") == sorted(n.replace(".jpg", ".psd") for n in names)
    assert files(root / "done") == sorted(names)
    assert files(root / "working") == [] and files(root / "error") == []
    done = [r for e, r in events(root) if e == "done"]
    started = [r for e, r in events(root) if e == "started"]
    assert sorted(done) == sorted(names) and sorted(started) == sorted(names)
    print("jobs per watcher:", [sum(n in o and "wrote" in o for n in names) for o in outputs])


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(port: int, data_dir: Path, *extra: str) -> subprocess.Popen:
    """A real `stylebridge serve` on loopback, returned once it says it is listening (its stderr is
    drained in the background so it never blocks)."""
    serve = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--port", str(port), "--device", "cpu",
                              "--data-dir", str(data_dir), *extra],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in serve.stderr:
        if line.startswith("listening on "):
            break
    threading.Thread(target=lambda: [None for _ in serve.stderr], daemon=True).start()
    return serve


@pytest.mark.e2e
def test_daemon_mode_against_a_real_daemon_over_http(tmp_path: Path) -> None:
    """`watch --daemon URL`: jobs wait while the daemon is down, then run in the daemon (the real app and
    engine over real HTTP, served in this process); the real `watch --once --daemon` command sends a library
    style, a file style and a PSD; a refused request (a bad file, a missing token) sends the file to error/."""
    from bridge.daemon.client import DaemonClient
    from bridge.hotfolder.process import DaemonEngine
    token = "hot-folder-test-token"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    root = make_hot(tmp_path)
    make_photo(root / "in" / "early.jpg")
    # 1. A watcher (watch mode) started before the daemon: the job waits in working/, not error/.
    watcher = Watcher(root, DaemonEngine(url, token), stable_seconds=STABLE)
    runner = threading.Thread(target=watcher.run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ("deferred", "early.jpg") not in events(root):
            time.sleep(0.1)
        assert ("deferred", "early.jpg") in events(root)
        assert files(root / "error") == [] and len(files(root / "working")) == 1
        with daemon_in_thread(tmp_path / "daemon", port=port, token=token):
            deadline = time.monotonic() + 120                  # retried every RECOVER_EVERY_SECONDS
            while time.monotonic() < deadline and not (root / "done" / "early.jpg").exists():
                time.sleep(0.2)
            watcher.stop()
            runner.join(timeout=60)
            assert files(root / "out") == ["early.psd"] and files(root / "error") == []

            # 2. The real CLI in --daemon mode: library style, file style, PSD content, a bad file.
            client = DaemonClient(url, token)
            client.add_style(SAMPLES["the_scream"], name="scream-lib")
            sub = root / "in" / "lib"
            sub.mkdir()
            (sub / "preset.json").write_text(json.dumps({"styles": ["scream-lib"]}))
            make_photo(sub / "a.jpg")
            make_photo(root / "in" / "b.png", fmt="PNG")
            shutil.copyfile(PSD_DIR / "group.psd", root / "in" / "c.psd")
            (root / "in" / "d.jpg").write_text("not an image")
            run = subprocess.run(_watch_cmd(root, "--once", "--daemon", url, "--token", token), cwd=REPO,
                                 capture_output=True, text=True, timeout=300)
            assert run.returncode == 1, run.stdout + run.stderr       # d.jpg is refused
            assert "daemon" in run.stdout
            assert files(root / "out") == ["b.psd", "c.psd", "early.psd", "lib/a.psd"], run.stdout
            for out in ("b.psd", "c.psd", "early.psd", "lib/a.psd"):
                check = psdcheck(root / "out" / out)
                assert check.returncode == 0, check.stdout
            assert "scream-lib" in layer_names(root / "out" / "lib" / "a.psd")
            assert "starry" in layer_names(root / "out" / "b.psd")
            assert files(root / "error") == ["d.jpg", "d.jpg.txt"]

            # 3. Without the token the daemon refuses: the file goes to error/ with the daemon's reason.
            make_photo(root / "in" / "e.jpg")
            rc, _ = watch_once(root, DaemonEngine(url, ""), stable_seconds=STABLE)
            assert rc == 1
            assert "daemon" in (root / "error" / "e.jpg.txt").read_text()
    finally:
        watcher.stop()
        runner.join(timeout=60)


def _blocking_runner(request, ctx):  # noqa: ANN001, ANN202 - the daemon's Runner
    """A job of 3000 iterations holds the worker until it is cancelled (no engine); others run the real one."""
    from bridge.daemon.runner import run_engine
    if request.settings.iterations == 3000:
        while not ctx.cancel.cancelled:
            time.sleep(0.02)
        return None
    return run_engine(request, ctx)


def test_full_daemon_queue_answers_429_and_the_hot_folder_waits(tmp_path: Path) -> None:
    """A daemon with ``max_queued_jobs`` 1 (``serve --max-queued-jobs 1``), one job running and one waiting: a
    third submission gets 429 (limit and value in the body); a watcher's file stays in working/ (deferred, not
    error/) and is rendered once the queue drains."""
    import httpx

    from bridge.daemon.client import DaemonClient, DaemonError
    from bridge.hotfolder.process import DaemonEngine
    watcher = runner = None
    with daemon_in_thread(tmp_path / "daemon", runner=_blocking_runner, max_queued_jobs=1) as url:
        try:
            client = DaemonClient(url, token="")
            assert client.health()["limits"]["max_queued_jobs"] == 1
            photo = make_photo(tmp_path / "c.png", 64, fmt="PNG")
            style = make_photo(tmp_path / "s.png", 64, fmt="PNG", sample="starry_night")
            long = {"size": 64, "iterations": 3000, "coarse_to_fine": False}
            running = client.submit(photo, style_files=[style], settings=long)
            deadline = time.monotonic() + 30
            while client.job(running["id"])["status"] != "running":     # the worker has taken it
                assert time.monotonic() < deadline
                time.sleep(0.05)
            waiting = client.submit(photo, style_files=[style], settings=long)
            refused = httpx.post(url + "/v1/jobs", files={"content": ("c.png", photo.read_bytes()),
                                                          "style_files": ("s.png", style.read_bytes())})
            assert refused.status_code == 429, refused.text
            body = refused.json()
            assert body["limit"] == "max_queued_jobs" and body["value"] == 1 and "queue is full" in body["error"]
            with pytest.raises(DaemonError) as err:
                client.submit(photo, style_files=[style], settings=long)
            assert err.value.status == 429

            root = make_hot(tmp_path)
            make_photo(root / "in" / "busy.jpg")
            watcher = Watcher(root, DaemonEngine(url, ""), stable_seconds=STABLE)
            runner = threading.Thread(target=watcher.run)
            runner.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and ("deferred", "busy.jpg") not in events(root):
                time.sleep(0.1)
            assert ("deferred", "busy.jpg") in events(root)
            assert files(root / "error") == [] and len(files(root / "working")) == 1
            client.cancel(waiting["id"])
            client.cancel(running["id"])
            wait_for(root / "done" / "busy.jpg", 60)               # retried every RECOVER_EVERY_SECONDS
            assert files(root / "out") == ["busy.psd"] and files(root / "error") == []
        finally:
            if watcher is not None:
                watcher.stop()
                runner.join(timeout=60)


def test_daemon_unreachable_in_once_mode_sends_to_error(tmp_path: Path) -> None:
    from bridge.hotfolder.process import DaemonEngine
    root = make_hot(tmp_path)
    make_photo(root / "in" / "a.jpg")
    rc = Watcher(root, DaemonEngine(f"http://127.0.0.1:{_free_port()}"), stable_seconds=STABLE, once=True).run()
    assert rc == 1
    assert "Stylebridge daemon not reachable at http://127.0.0.1:" in (root / "error" / "a.jpg.txt").read_text()


def test_daemon_refusing_a_job_too_big_for_its_memory_advises_scaling_down(tmp_path: Path) -> None:
    """A daemon whose per-job memory limit (413 max_job_memory, ``serve --max-job-memory-mb 1``) is below any
    job: the file goes to error/ with the daemon's limit and "scale the image down", not "fix the settings"."""
    from bridge.hotfolder.process import DaemonEngine
    with daemon_in_thread(tmp_path / "daemon", runner=lambda request, ctx: None, max_job_memory=2 ** 20) as url:
        root = make_hot(tmp_path)
        make_photo(root / "in" / "a.jpg")
        rc = Watcher(root, DaemonEngine(url), stable_seconds=STABLE, once=True).run()
    assert rc == 1
    note = (root / "error" / "a.jpg.txt").read_text()
    assert "max_job_memory" in note and "Scale the image down" in note, note
    assert "Fix the settings" not in note


@pytest.mark.e2e
def test_write_error_on_output_sends_input_to_error_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """A real write failure (the process may not write files over 64 KB: EFBIG, like a full disk)."""
    import resource
    import signal

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    root = make_hot(tmp_path)
    src = make_photo(root / "in" / "photo.jpg")
    original = src.read_bytes()
    proc = Forked(_watch_args(root, "--once"), preexec_fn=small_files)          # a real process: the limit is its own
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert files(root / "out") == []
    assert (root / "error" / "photo.jpg").read_bytes() == original
    note = (root / "error" / "photo.jpg.txt").read_text()
    assert "File too large" in note and "disk space" in note
    assert not any((root / ".stylebridge" / "tmp").iterdir())


def test_16bit_tiff_with_icc_gives_a_16bit_psd(tmp_path: Path) -> None:
    from PIL import ImageCms
    from psd_tools import PSDImage
    import tifffile
    root = make_hot(tmp_path)
    rgb8 = np.asarray(Image.open(make_photo(tmp_path / "p.png", 64, "PNG")).convert("RGB"))
    rgb16 = rgb8.astype(np.uint16) * 257
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tifffile.imwrite(root / "in" / "scan.tif", rgb16, photometric="rgb", extratags=[(34675, 7, len(icc), icc, True)])
    assert run_once(root) == 0
    psd = PSDImage.open(root / "out" / "scan.psd")
    assert psd.depth == 16
    assert psdcheck(root / "out" / "scan.psd").returncode == 0


def test_restart_after_original_linked_into_done_only_tidies_up(tmp_path: Path) -> None:
    """Died inside the final move (original linked into done/, not yet unlinked from working/)."""
    root = make_hot(tmp_path)
    make_photo(root / "in" / "photo.jpg")
    assert run_once(root) == 0
    journal = root / ".stylebridge" / "journal.jsonl"
    lines = journal.read_text().splitlines()
    claim_rec = json.loads(lines[0])
    journal.write_text("\n".join(lines[:-1]) + "\n")                  # no "done" record
    os.link(root / "done" / "photo.jpg", root / "working" / claim_rec["working"])
    assert run_once(root) == 0
    assert files(root / "done") == ["photo.jpg"] and files(root / "out") == ["photo.psd"]
    assert files(root / "working") == []
    assert [e for e, _ in events(root)].count("started") == 1


def test_deleted_folders_are_recreated_and_watched_again(tmp_path: Path) -> None:
    root = make_hot(tmp_path)
    watcher = Watcher(root, InProcessEngine(), stable_seconds=STABLE)
    runner = threading.Thread(target=watcher.run)
    runner.start()
    try:
        time.sleep(0.5)
        shutil.rmtree(root / "in")
        shutil.rmtree(root / "working")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ((root / "in").is_dir() and (root / "working").is_dir()):
            time.sleep(0.05)
        make_photo(tmp_path / "p.jpg")
        os.rename(tmp_path / "p.jpg", root / "in" / "p.jpg")
        wait_for(root / "done" / "p.jpg")
    finally:
        watcher.stop()
        runner.join(timeout=60)
    assert files(root / "out") == ["p.psd"]
