"""Paths named by data files, kept inside the folder they belong to.

A manifest, a label file or an annotation file names images by path. Such a path is data, not an
instruction: ``../../secret/s``, an absolute path or a symlink planted in a dataset must not make vestis
read a file outside the folder the user pointed it at, nor write one outside an output folder.

Two levels of checks:

* :func:`name_problem` / :func:`relative_problem`: the text alone. A *plain name* is one path component
  (an id that becomes a file name); a *relative path* has only plain components (no ``..``, no root, no
  drive, no backslash, no NUL).
* :func:`confine`: the file system. The real path (every symlink resolved) must lie inside the real root.
  The root itself may be a symlink (the user chose it); what the data adds below it may not lead out.

:class:`UnsafePath` is the error of both; its ``kind`` says which rule was broken.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PureWindowsPath
from typing import Literal

from vestis.errors import VestisError

__all__ = ["UnsafeKind", "UnsafePath", "confine", "is_within", "name_problem", "relative_problem"]

UnsafeKind = Literal["unsafe-name", "outside", "not-a-file"]


class UnsafePath(VestisError):
    """A path that breaks a confinement rule.

    Attributes:
        kind: ``unsafe-name`` (the text is not a plain name or relative path), ``outside`` (it resolves
            outside the root) or ``not-a-file`` (a folder, a device, a FIFO...).
        detail: what was wrong, without a file name prefix.
    """

    def __init__(self, kind: UnsafeKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name (one component), or ``None`` when it is."""
    if not name or name in (".", ".."):
        return "expected a plain file name"
    if "/" in name or "\\" in name:
        return "expected a plain file name without '/' or '\\'"
    if "\0" in name:
        return "expected a plain file name without NUL"
    if ":" in name and PureWindowsPath(name).drive:  # a drive needs a colon: skip the slow parse otherwise
        return "expected a plain file name without a drive"
    return None


def relative_problem(path: str) -> str | None:
    """Why ``path`` is not a relative path of plain components (``a/b.jpg``), or ``None`` when it is."""
    if not path:
        return "expected a relative path, got an empty one"
    if path.startswith("/") or ((":" in path or "\\" in path) and PureWindowsPath(path).anchor):
        return "expected a relative path, got an absolute one"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return "expected a relative path to a file"
    if ".." in parts:
        return "expected a relative path without '..'"
    for p in parts:
        if (why := name_problem(p)) is not None:
            return why.replace("plain file name", "relative path")
    return None


def is_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``root`` or lies below it, comparing the strings as given (resolve them first)."""
    p, r = os.fspath(path), os.fspath(root)
    return p == r or p.startswith(os.path.join(r, ""))


def confine(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    *,
    follow_symlinks: bool = False,
    regular: bool = True,
) -> Path:
    """The real path of ``path`` when it lies inside ``root``.

    Args:
        path: the path to check (absolute, or relative to the working directory).
        root: the folder it must stay in; resolved too, so the root may itself be a symlink.
        follow_symlinks: accept a path whose symlinks lead outside ``root`` (then only ``regular`` is checked).
        regular: when the path exists, it must be a regular file (after following symlinks). A path that does
            not exist passes: whether it must exist is the caller's question.

    Raises:
        UnsafePath: ``outside`` or ``not-a-file``.
    """
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError) as e:  # a NUL byte, a name the OS refuses
        raise UnsafePath("not-a-file", f"{os.fspath(path)!r} is not a usable path ({e})") from None
    if not follow_symlinks:
        real_root = os.path.realpath(root)
        if not is_within(real, real_root):
            shown = os.fspath(path)
            via = "" if os.path.normpath(os.path.abspath(shown)) == real else f" (it resolves to {real})"
            raise UnsafePath("outside", f"{shown!r} lies outside {os.fspath(root)!r}{via}")
    if regular:
        try:
            st = os.stat(real)
        except OSError:
            return Path(real)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath("not-a-file", f"{os.fspath(path)!r} is not a regular file")
    return Path(real)
