"""Reading user text files: UTF-8 or a ``file:line`` error that says what the file is instead.

Every text input (manifests, taxonomies, configs, dataset label files) is UTF-8. A file saved in another
encoding fails on its first bad byte with the line, the column and a guess at the encoding (a UTF-16
byte-order mark, NUL bytes of UTF-16 without one, a Latin-1 accent), instead of a ``UnicodeDecodeError``
traceback from deep inside a reader.

The csv module refuses fields over 128 KiB with an exception that stops the whole file; readers call
:func:`allow_large_csv_fields` so that a long title is read, and only a field over
:data:`MAX_CSV_FIELD` (a stray quote swallowing the rest of the file, usually) is an error, on its line.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
from pathlib import Path

from vestis.errors import VestisError

__all__ = [
    "MAX_CSV_FIELD",
    "allow_large_csv_fields",
    "decode_utf8",
    "encoding_problem",
    "not_utf8_error",
    "open_utf8",
    "read_text",
    "utf8_problem",
]

MAX_CSV_FIELD = 4 * 1024 * 1024
"""The longest CSV field read (characters): far above any title, far below what hurts memory."""

# UTF-32 LE starts with the UTF-16 LE mark: test the longer marks first
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_RESAVE = "expected UTF-8 text (save the file as UTF-8)"


def allow_large_csv_fields() -> None:
    """Raise the csv module's field limit (a process-wide setting) to :data:`MAX_CSV_FIELD`; never lowers it."""
    if csv.field_size_limit() < MAX_CSV_FIELD:
        csv.field_size_limit(MAX_CSV_FIELD)


def encoding_problem(head: bytes) -> str | None:
    """What is wrong with a file starting with ``head`` when it is UTF-16 or UTF-32, else ``None``.

    Args:
        head: the first bytes of the file (a few KiB are plenty).
    """
    for bom, name in _BOMS:
        if head.startswith(bom):
            return f"not UTF-8: {name} text (byte-order mark {bom.hex(' ')}); {_RESAVE}"
    if b"\x00" in head:
        return f"not UTF-8: NUL bytes (UTF-16 text without a byte-order mark?); {_RESAVE}"
    return None


def _where(data: bytes, pos: int) -> tuple[int, int]:
    """1-based ``(line, column)`` of byte ``pos``, counting lines as text-mode reading does (\\n, \\r\\n, \\r)."""
    lines = (data[:pos] + b"x").splitlines()  # the sentinel stands for the byte at pos
    return len(lines), len(lines[-1])


def _describe(data: bytes, err: UnicodeDecodeError) -> tuple[int, str]:
    line, col = _where(data, err.start)
    # every byte UTF-8 rejects is >= 0x80: most often an accent from a Latin-1 / Windows-1252 export
    return line, f"not UTF-8: byte 0x{data[err.start]:02x} at column {col} (Latin-1 or Windows-1252?); {_RESAVE}"


def utf8_problem(data: bytes) -> tuple[int, str] | None:
    """``(line, message)`` for the first reason ``data`` is not UTF-8 text, else ``None``.

    A UTF-8 byte-order mark is fine; UTF-16/32 (with or without a mark), NUL bytes and invalid bytes are not.
    """
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        msg = encoding_problem(data[:4])
        return (1, msg) if msg else _describe(data, e)
    nul = data.find(b"\x00")  # valid UTF-8, but no text file holds one: UTF-16 (no mark) or binary data
    if nul < 0:
        return None
    line, col = _where(data, nul)
    head = encoding_problem(data[:4])
    if line == 1 and head:
        return 1, head
    return line, f"not UTF-8: a NUL byte at column {col} (binary data?); {_RESAVE}"


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as text; a UTF-8 byte-order mark is dropped.

    Raises:
        VestisError: ``source:line: not UTF-8: ...`` for UTF-16/32 data, NUL bytes or the first invalid byte.
    """
    problem = utf8_problem(data)
    if problem is not None:
        raise VestisError(f"{source}:{problem[0]}: {problem[1]}")
    return data.decode("utf-8-sig")


def not_utf8_error(path: str | os.PathLike[str]) -> VestisError:
    """The error for a file whose streamed decoding failed: reads it again to name the line of the bad byte."""
    path = Path(path)
    try:
        decode_utf8(path.read_bytes(), str(path))
    except VestisError as e:
        return e
    return VestisError(f"{path}: not UTF-8; {_RESAVE}")  # the file changed while it was read


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of ``path``.

    Args:
        path: the file.
        what: what the file is, for messages (``taxonomy``, ``config``).

    Raises:
        VestisError: the file cannot be read, or is not UTF-8 (with the line of the first bad byte).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise VestisError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    return decode_utf8(data, str(path))


def open_utf8(path: str | os.PathLike[str], what: str) -> io.StringIO:
    """The UTF-8 text of ``path`` as a stream that splits lines like ``open(path, newline="")``.

    The whole file is decoded first, so a bad byte is an error naming its line before any row is used.
    """
    return io.StringIO(read_text(path, what), newline="")
