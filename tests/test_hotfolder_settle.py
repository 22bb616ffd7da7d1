"""How a hot-folder job's files end: moves that never overwrite (no engine needed)."""

from __future__ import annotations

from pathlib import Path

from bridge.hotfolder.settle import place


def test_place_never_overwrites(tmp_path: Path) -> None:
    dest = tmp_path / "done" / "a.jpg"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    for i in range(3):
        src = tmp_path / f"src{i}"
        src.write_bytes(f"new{i}".encode())
        got = place(src, dest)
        assert not src.exists()
        assert got.name == f"a-{i + 2}.jpg" and got.read_bytes() == f"new{i}".encode()
    assert dest.read_bytes() == b"old"
