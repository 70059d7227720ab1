"""Atomic folder writes (bundles, caches): flushed before they are renamed into place, and an overwritten folder is
never lost when the rename fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import edge_runtime.atomic as atomic


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_failed_rename_puts_the_overwritten_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    (out / "sub").mkdir(parents=True)
    (out / "manifest.json").write_text("old")
    (out / "sub" / "graph.onnx").write_bytes(b"old graph")
    before = _tree(out)
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src).name.endswith(".partial"):  # the new folder's rename into place
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"), atomic.atomic_directory(out, overwrite=True) as tmp:
        (tmp / "manifest.json").write_text("new")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no partial or moved-aside folder left


def test_every_file_is_flushed_before_the_folder_is_renamed_into_place(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync:" + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("replace:" + Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    out = tmp_path / "cache"
    with atomic.atomic_directory(out) as tmp:
        (tmp / "maps").mkdir()
        (tmp / "maps" / "coarse.npy").write_bytes(b"x" * 100)
        (tmp / "manifest.json").write_text("{}")
    rename = events.index("replace:cache")
    assert {"fsync:coarse.npy", "fsync:manifest.json", "fsync:maps"} <= set(events[:rename])
    assert events[rename + 1:] == [f"fsync:{tmp_path.name}"]  # the parent's entry for the rename
    assert _tree(out) == {"maps/coarse.npy": b"x" * 100, "manifest.json": b"{}"}
