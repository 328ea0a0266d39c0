"""Crash-safe file writing: a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file beside the target, which is flushed and ``fsync``-ed before
``os.replace`` renames it over the target (a rename within one directory is atomic on POSIX and Windows).
Without the fsync a power cut after the rename can leave the target empty on some file systems
(ext4 ``data=writeback``, XFS); the directory is fsync-ed afterwards so that the rename itself is durable.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]

# mkstemp creates files with mode 0600; give written files the usual permissions (0666 less the umask)
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[IO[bytes]], None]) -> Path:
    """Call ``writer`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Args:
        path: the file to write; its folder is created when missing.
        writer: writes the whole content to the binary file it is given.

    Returns:
        ``path``.

    Raises:
        Whatever ``writer``, the fsync or the rename raised; ``path`` then still holds its old content
        (or does not exist) and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder``; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) refuse fsync on a directory; the file itself is on disk
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
