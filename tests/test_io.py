"""Atomic writes under injected faults: a failed or killed write leaves the old file, and the data is fsync-ed
into a temporary file before the rename, the rename itself then fsync-ed through the directory."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import IO

import pytest

from vestis import io as vio


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_writes_the_content_with_the_usual_permissions(tmp_path):
    path = vio.atomic_write_text(tmp_path / "sub" / "a.txt", "h\u00e9llo")
    assert path.read_bytes() == "h\u00e9llo".encode()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert _siblings(path) == ["a.txt"]


def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        vio.atomic_write_text(path, "new content")
    assert path.read_text() == "old"
    assert _siblings(path) == ["a.txt"]


def test_a_failed_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        vio.atomic_write_text(path, "new content")
    assert path.read_text() == "old"
    assert _siblings(path) == ["a.txt"]


def test_a_writer_that_raises_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def writer(f: IO[bytes]) -> None:
        f.write(b"half of the new")
        f.flush()
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        vio.atomic_write(path, writer)
    assert path.read_text() == "old"
    assert _siblings(path) == ["a.txt"]


def test_the_full_temporary_file_is_fsynced_before_the_rename_then_the_directory(tmp_path, monkeypatch):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    data = os.urandom(100_000)
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, st.st_size, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("replace", os.stat(src).st_ino, Path(src).parent == path.parent, Path(dst) == path))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    vio.atomic_write_bytes(path, data)
    assert path.read_bytes() == data
    ino = path.stat().st_ino  # a rename keeps the inode: the file fsync-ed is the file now at ``path``
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0] == ("fsync", ino, len(data), False)  # every byte written before the fsync
    assert events[1] == ("replace", ino, True, True)  # a temporary beside the target, renamed over it
    assert events[2] == ("fsync", tmp_path.stat().st_ino, events[2][2], True)


def test_a_write_killed_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    script = textwrap.dedent(
        f"""
        import os, signal
        from vestis.io import atomic_write

        def writer(f):
            f.write(b"x" * 1_000_000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_write({str(path)!r}, writer)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(vio.__file__).parents[1])}  # the vestis under test
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert path.read_text() == "old"
    # the kill leaves its temporary behind (nothing cleans up after SIGKILL): a hidden file, never the target
    (leftover,) = [n for n in _siblings(path) if n != "a.txt"]
    assert leftover.startswith(".a.txt.") and leftover.endswith(".tmp")
    assert (tmp_path / leftover).stat().st_size == 1_000_000
