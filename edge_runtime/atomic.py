"""Atomic file writes and hashing shared by the bundle, map-cache and checkpoint writers."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (works for files larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temp file in the target folder, fsync, rename over ``path``, then fsync the folder (so
    the rename itself survives a power loss)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; bundles and caches are read by the service user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Flush every file and folder under ``root`` (and ``root`` itself) to disk, so that a folder renamed into place
    afterwards cannot show empty or partial files after a power loss."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_directory(folder)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def replace_directory(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename the finished folder ``src`` to ``dst``; an existing ``dst`` is moved aside first and deleted only once
    ``src`` is in place (moved back if that rename fails)."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(old / dst.name, dst)
            old.rmdir()
            raise
        fsync_directory(dst.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
        fsync_directory(dst.parent)


def verify_listed_files(
    root: str | os.PathLike[str], files: Any, kind: str, error: type[Exception]
) -> None:
    """Recompute the sha256 of every ``{relative name: sha256}`` entry of a manifest.

    Args:
        root: the folder the names are relative to.
        files: the manifest's ``files`` mapping.
        kind: ``bundle`` or ``cache``, for the messages.
        error: the exception type to raise, naming the first missing or modified file.
    """
    if not isinstance(files, dict) or not files:
        raise error(f"{Path(root) / 'manifest.json'} lists no files")
    for name, expected in sorted(files.items()):
        path = Path(root) / name
        if not path.is_file():
            raise error(f"{kind} file missing: {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise error(f"{kind} file {path} is corrupt or modified: sha256 {actual[:12]}..., "
                        f"manifest says {str(expected)[:12]}...")


@contextmanager
def atomic_directory(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name next to ``path`` and rename it into place on success.

    On any exception the temporary directory is removed and ``path`` is left untouched, so readers never see a
    half-written bundle or cache. With ``overwrite`` an existing ``path`` is replaced (moved aside, then deleted).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another output or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; bundles and caches are read by the service user
        fsync_tree(tmp)  # on disk before the rename (and before an overwritten folder is deleted)
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
