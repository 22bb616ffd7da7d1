"""bridge/daemon/command.py: ``stylebridge serve`` refuses bad options and an unusable data folder with one
line and exit 1, before it binds a port or loads any weights (in-process, no engine, no server)."""

from __future__ import annotations

import pytest

from bridge.cli import build_parser


def _serve(capsys, *options: str) -> tuple[int, str]:
    args = build_parser().parse_args(["serve", *options])
    code = args.func(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("options", "message"), [
    (("--keep-results", "0"), "--keep-results must be > 0 minutes"),
    (("--max-upload-mb", "-1"), "--max-upload-mb must be > 0"),
    (("--max-queued-jobs", "0"), "--max-queued-jobs must be >= 1"),
    (("--checkpoint-seconds", "nan"), "--checkpoint-seconds must be > 0"),
    (("--memory-budget-mb", "-1"), "--memory-budget-mb must be >= 0"),
    (("--max-job-memory-mb", "0"), "--max-job-memory-mb must be >= 1"),
    (("--faithful-iterations", "0"), "--faithful-iterations must be >= 1"),
])
def test_an_option_out_of_range_is_one_line_and_exit_1(capsys, tmp_path, options, message):
    code, err = _serve(capsys, "--data-dir", str(tmp_path / "data"), "--port", "0", *options)
    assert code == 1 and err == f"stylebridge serve: {message}\n"
    assert not (tmp_path / "data").exists()            # refused before anything was made


def test_the_first_wrong_option_is_named(capsys, tmp_path):
    code, err = _serve(capsys, "--data-dir", str(tmp_path), "--keep-results", "-1", "--max-queued-jobs", "0")
    assert code == 1 and err == "stylebridge serve: --keep-results must be > 0 minutes\n"


def test_a_data_folder_that_cannot_be_made_is_named(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = _serve(capsys, "--data-dir", str(blocker / "data"), "--port", "0")
    assert code == 1 and err.startswith(f"stylebridge serve: cannot create the data folder {blocker / 'data'}: ")
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_remote_bind_without_a_token_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("STYLEBRIDGE_TOKEN", raising=False)
    code, err = _serve(capsys, "--data-dir", str(tmp_path), "--host", "0.0.0.0")
    assert code == 1 and err.startswith("stylebridge serve: ") and err.count("\n") == 1
