"""The tagging journal and the output files: what ``vestis predict`` writes, crash-safely, and reads back.

A run appends its rows to a JSONL *journal*, one line per image, batch by batch and ``fsync``-ed
(:func:`write_batches`, whose writer thread overlaps the next model call, at most :data:`WRITE_AHEAD` batches
behind). For a ``.jsonl`` output the journal is the output itself; for ``.csv`` and ``.parquet`` it is
``<out>.partial.jsonl`` (:func:`journal_path`), converted atomically when every image is done (:func:`finish`).
A rerun drops a torn last line and skips the ids already there (:func:`resume_state`); an advisory lock keeps two
runs off one journal (:class:`Journal`). :mod:`vestis.inference.tagging` drives it.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.inference.items import ImageItem
from vestis.io import atomic_write

try:  # advisory locks are POSIX-only; elsewhere concurrent runs are simply not detected
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

try:  # the fast row encoder (the ``serve`` extra); json gives the same rows without it
    orjson: Any = importlib.import_module("orjson")
except ImportError:  # pragma: no cover - depends on the installed extras
    orjson = None

__all__ = [
    "WRITE_AHEAD",
    "Journal",
    "encode_row",
    "finish",
    "flatten_row",
    "journal_path",
    "read_journal",
    "resume_state",
    "write_batches",
]

WRITE_AHEAD = 2  # batches of rows waiting for the writer thread, at most


def journal_path(out: str | os.PathLike[str]) -> Path:
    """Where results are journalled: the output itself for ``.jsonl``, else ``<out>.partial.jsonl``."""
    out = Path(out)
    return out if out.suffix.lower() == ".jsonl" else out.with_name(out.name + ".partial.jsonl")


def _repair(path: Path) -> None:
    """Cut a torn last line (no newline: a write interrupted by a kill) off the journal."""
    if not path.exists():
        return
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        pos = size
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            chunk = f.read(step)
            if pos == size and chunk.endswith(b"\n"):
                return
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                pos = pos - step + cut + 1
                break
            pos -= step
        f.truncate(pos)
        f.flush()
        os.fsync(f.fileno())


def _iter_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(byte offset, row)`` of every complete line; a torn last line is skipped."""
    if not path.exists():
        return
    with path.open("rb") as f:
        offset = 0
        for n, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                return
            if line.strip():
                try:
                    row = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as e:
                    col = e.start + 1
                    raise VestisError(
                        f"{path}:{n}: not UTF-8 (byte 0x{line[e.start]:02x} at column {col}); "
                        "expected the JSON rows of a vestis predict output"
                    ) from None
                except json.JSONDecodeError as e:
                    raise VestisError(f"{path}:{n}: not a JSON row ({e.msg}); not a vestis predict output?") from None
                except (ValueError, RecursionError) as e:  # an integer over 4,300 digits, nesting beyond the stack
                    why = "nested too deeply" if isinstance(e, RecursionError) else "an integer too long to read"
                    raise VestisError(f"{path}:{n}: not a JSON row ({why}); not a vestis predict output?") from None
                if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                    raise VestisError(f"{path}:{n}: expected a JSON object with an 'id'; not a vestis predict output?")
                yield offset, row
            offset += len(line)


def read_journal(path: str | os.PathLike[str], *, repair: bool = False) -> list[dict[str, Any]]:
    """The complete rows of a journal, in file order.

    A last line without its newline is a torn write: it is ignored, and with ``repair=True`` cut off the file.

    Raises:
        VestisError: a complete line that is not a row (the file is not a vestis predict output).
    """
    path = Path(path)
    if repair:
        _repair(path)
    return [row for _, row in _iter_rows(path)]


def _offsets(path: Path, models: set[Any] | None = None) -> dict[str, int]:
    """Id -> byte offset of its row (the first, should an id appear twice); only ids are kept in memory.

    Args:
        path: the journal.
        models: when given, gets the ``model`` of every row that records one.
    """
    out: dict[str, int] = {}
    for offset, row in _iter_rows(path):
        out.setdefault(row["id"], offset)
        model = row.get("model")
        if models is not None and model is not None:
            models.add(model if isinstance(model, str) else repr(model)[:80])  # a hostile row: not hashable
    return out


def _check_same_model(journal: Path, recorded: set[Any], fingerprint: str | None) -> None:
    """Refuse to add rows of ``fingerprint`` to a journal holding rows of another model.

    Rows without a ``model`` (written before rows recorded it) cannot be told apart and are accepted.
    """
    others = sorted(str(m) for m in recorded if m != fingerprint)
    if not others:
        return
    mine = fingerprint or "a model without a fingerprint"
    raise VestisError(
        f"{journal}: model: expected rows of {mine}, but the output holds rows of {', '.join(others[:3])}; "
        "pass --restart (restart=True) to discard them, or choose another --out"
    )


class Journal:
    """Append-only JSONL with one ``fsync`` per batch, locked against a second writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[bytes] = path.open("ab")
        if fcntl is not None:
            try:
                fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._f.close()
                raise VestisError(f"{path}: another vestis predict is writing this output") from None

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        data = b"".join([encode_row(r) + b"\n" for r in rows])
        self._f.write(data)
        self._f.flush()
        os.fsync(self._f.fileno())

    def truncate(self) -> None:
        """Drop every row (``restart``)."""
        self._f.truncate(0)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def encode_row(row: dict[str, Any]) -> bytes:
    """One row as UTF-8 JSON: orjson when it is installed, else (and for what orjson would write otherwise) json.

    The two give the same row once read back; only the spacing differs. orjson writes a NaN or an infinity as
    ``null``, and refuses what is not plain JSON (non-text keys, integers beyond 64 bits): such rows take json,
    which writes ``NaN``/``Infinity`` (as rows always did) or raises as it always did.

    A file name that is not UTF-8 (Linux allows any bytes) comes as a string with lone surrogates (``b"\\xff"`` is
    ``"\\udcff"``), which no UTF-8 encoder takes: that row is written with its non-ASCII characters escaped
    (``"\\udcff"`` in the JSON text), valid UTF-8 that reads back to the same string, so a rerun knows the id.
    """
    if orjson is not None:
        try:
            data: bytes = orjson.dumps(row)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
        else:
            if b"null" not in data or not _has_non_finite(row):
                return data
    text = json.dumps(row, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a file name that is not UTF-8
        return json.dumps(row, ensure_ascii=True).encode("ascii")


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def flatten_row(row: dict[str, Any], taxonomy: Taxonomy) -> dict[str, Any]:
    """A journal row as flat columns (see the module docstring); keys in output column order."""
    flat: dict[str, Any] = {
        "id": row["id"],
        "image": row.get("image"),
        "error": row.get("error"),
        "model": row.get("model"),
    }
    attrs = row.get("attributes") or {}
    for a in taxonomy:
        r = attrs.get(a.name)
        flat[a.name] = None if r is None else (r["value"] if a.kind == "single" else "|".join(r["values"]))
    for a in taxonomy:
        r = attrs.get(a.name)
        for v in a.values:
            flat[f"{a.name}:{v}"] = None if r is None else r["scores"].get(v)
    return flat


_FREE_TEXT = ("id", "image", "error", "model")  # the flat columns that may hold a file name


def _utf8_text(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` with every free-text cell encodable as UTF-8: the bytes of a file name that are not UTF-8 (lone
    surrogates, ``"\\udcff"``) become ``\\xNN`` escapes (``"\\\\xff"``); other text is kept as it is."""
    for key in _FREE_TEXT:
        v = flat.get(key)
        if isinstance(v, str) and not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                try:
                    raw = v.encode("utf-8", "surrogateescape")  # the file name's own bytes
                except UnicodeEncodeError:  # a surrogate that no byte gave (an escaped one in a manifest)
                    raw = v.encode("utf-8", "backslashreplace")
                flat[key] = raw.decode("utf-8", "backslashreplace")
    return flat


def _ordered_rows(journal: Path, order: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The journal's rows with the ids of ``order`` first, in that order, then the others in file order."""
    offsets = _offsets(journal)
    wanted = [offsets[i] for i in order if i in offsets]
    known = set(order)
    rest = [off for i, off in offsets.items() if i not in known]
    with journal.open("rb") as f:
        for off in wanted + rest:
            f.seek(off)
            yield json.loads(f.readline())


def _write_table(out: Path, rows: Iterable[dict[str, Any]], taxonomy: Taxonomy, chunk: int = 8192) -> None:
    """Flattened rows to CSV or Parquet, atomically, streaming (a chunk of rows in memory at a time)."""
    columns = list(flatten_row({"id": ""}, taxonomy))
    if out.suffix.lower() == ".csv":

        def write_csv(f: IO[bytes]) -> None:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            w = csv.writer(text, lineterminator="\n")
            w.writerow(columns)
            for row in rows:
                flat = _utf8_text(flatten_row(row, taxonomy))
                w.writerow(["" if flat[c] is None else flat[c] for c in columns])
            text.flush()
            text.detach()  # atomic_write closes the underlying file itself

        atomic_write(out, write_csv)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    text_columns = {"id", "image", "error", "model", *taxonomy.names}
    schema = pa.schema([(c, pa.string() if c in text_columns else pa.float32()) for c in columns])

    def write_parquet(f: IO[bytes]) -> None:
        with pq.ParquetWriter(f, schema) as writer:
            batch: list[dict[str, Any]] = []
            for row in rows:
                batch.append(_utf8_text(flatten_row(row, taxonomy)))
                if len(batch) == chunk:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))

    atomic_write(out, write_parquet)


def finish(out: Path, journal: Path, order: Sequence[str], taxonomy: Taxonomy) -> None:
    """CSV/Parquet: rows in input order (other ids last), written atomically; then the journal goes."""
    _write_table(out, _ordered_rows(journal, order), taxonomy)
    journal.unlink()


def resume_state(journal: Path, items: Sequence[ImageItem], fingerprint: str | None) -> tuple[list[ImageItem], int]:
    """What a (resumed) tagging run still has to do: ``(items not in the journal, rows of ids not in items)``.

    Refuses a journal another model wrote, before repairing a torn last line: a refused run leaves the file byte
    for byte as it was. Call it with the journal's lock held (:class:`Journal` open).
    """
    recorded: set[Any] = set()
    done = set(_offsets(journal, recorded))
    _check_same_model(journal, recorded, fingerprint)
    _repair(journal)
    extra = len(done - {it.id for it in items})
    return [it for it in items if it.id not in done], extra


def write_batches(
    writer: Journal, batches: Iterable[list[dict[str, Any]]], bar: Any, on_batch: Callable[[int], None] | None
) -> tuple[int, int]:
    """Append every batch of rows to the journal as it comes; ``(rows predicted, error rows)``.

    ``batches`` is consumed here (where the model runs, batch by batch); a writer thread appends, ``fsync``-s and
    reports (``bar``, then ``on_batch``) each batch in order, at most :data:`WRITE_AHEAD` batches behind, so the
    file work overlaps the next model call. What the journal holds is unchanged: whole batches in order, each on
    disk before it is reported. An exception in the writer (``on_batch`` raising included) stops it at once --
    no later batch is written -- and is raised here; an exception here (a model error, ``KeyboardInterrupt``)
    lets the writer finish the batches it was given, then propagates.
    """
    todo: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=WRITE_AHEAD)
    counts = [0, 0]  # predicted, errors
    failed: list[BaseException] = []

    def write() -> None:
        while (rows := todo.get()) is not None:
            if failed:
                continue  # drain, so the producer never blocks on a full queue
            try:
                writer.append(rows)
                n_err = sum("error" in r for r in rows)
                counts[1] += n_err
                counts[0] += len(rows) - n_err
                bar.advance(len(rows))
                if on_batch is not None:
                    on_batch(len(rows))
            except BaseException as e:  # raised again in the thread that consumes the batches
                failed.append(e)

    thread = threading.Thread(target=write, name="vestis-journal", daemon=True)
    thread.start()
    it = iter(batches)
    try:
        for rows in it:
            todo.put(rows)
            if failed:
                break
    finally:
        todo.put(None)
        thread.join()
        close = getattr(it, "close", None)
        if failed and close is not None:
            close()  # stop the decoders now rather than when the generator is collected
    if failed:
        raise failed[0]
    return counts[0], counts[1]
