"""The hot folder's layout: its folders, and which names are inputs (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.hotfolder.layout import Layout, is_ignored


@pytest.fixture()
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "hot").create()


def test_layout_creates_every_folder(layout: Layout) -> None:
    for d in (layout.inbox, layout.working, layout.out, layout.done, layout.error, layout.locks, layout.tmp):
        assert d.is_dir()


@pytest.mark.parametrize("name", [".hidden.jpg", "photo.jpg.part", "x.tmp", "~lock.psd", ".DS_Store",
                                  "Thumbs.db", "preset.json", "photo.json", "a.crdownload"])
def test_ignored_names(name: str) -> None:
    assert is_ignored(name)


@pytest.mark.parametrize("name", ["photo.jpg", "scan.TIF", "notes.txt", "layered.psd"])
def test_candidate_names(name: str) -> None:
    assert not is_ignored(name)


def test_inputs_skip_ignored_and_hidden_folders(layout: Layout) -> None:
    (layout.inbox / "a.jpg").write_bytes(b"x")
    (layout.inbox / "a.jpg.part").write_bytes(b"x")
    (layout.inbox / "sub").mkdir()
    (layout.inbox / "sub" / "b.png").write_bytes(b"x")
    (layout.inbox / "sub" / "preset.json").write_text("{}")
    (layout.inbox / ".cache").mkdir()
    (layout.inbox / ".cache" / "c.jpg").write_bytes(b"x")
    assert [layout.rel(p) for p in layout.inputs()] == ["a.jpg", "sub/b.png"]
