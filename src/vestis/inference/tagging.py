"""Catalog tagging: a folder, a manifest or a list of images through a :class:`Predictor`, into a file.

Crash safety. Results are appended to a JSONL *journal*, one line per image, written and ``fsync``-ed
batch by batch. For a ``.jsonl`` output the journal is the output itself; for ``.csv`` and ``.parquet`` it
is ``<out>.partial.jsonl``, converted (atomically) when every image is done, then removed. A rerun reads the
journal, drops a torn last line (a kill in the middle of a write), and predicts only the images whose id
is not in it yet, so after any number of kills and reruns the output holds every image exactly once. A
``.jsonl`` output that is complete is left as it is by a rerun; ``restart=True`` starts over. Two runs on
the same output at once are refused (an advisory lock on the journal).

Rows (:func:`~vestis.inference.items.make_rows`). ``{"id", "image", "model", "attributes": {...}}`` with the
:meth:`Predictor.decode` result (scores rounded to 6 decimals), or ``{"id", "image", "model", "error": reason}`` for
an image that cannot be decoded: an unreadable image is a row, never a crash. ``model`` is the fingerprint of the
model that made the row (:mod:`vestis.fingerprint`): a rerun into an output holding rows of another model is
refused, since one file would then mix two models' answers. CSV and Parquet flatten a row to ``id``, ``image``,
``error``, ``model``, one column per attribute (the value, or the values joined by ``|`` for multi-label attributes,
as in a manifest) and one score column per attribute value, ``<attribute>:<value>``; the cells of
attributes that do not apply to the predicted category are empty. A file name that is not UTF-8 keeps its exact id in
JSONL; in CSV and Parquet, which hold UTF-8 text, its bytes that are not UTF-8 are written as ``\\xNN`` escapes.

Inputs are folders, manifests and image files (:func:`~vestis.inference.items.collect_inputs`, rules there). Ids
must be unique: they are how a rerun knows what is done.

Engines. ``local`` decodes in DataLoader worker processes (``workers``; 0 decodes in the main process;
:func:`~vestis.inference.items.decoded_stacks`) while the main process runs the model on whole batches, with its
own intra-op ``threads``; ``"auto"`` (the default of both) splits the cores between them
(:func:`~vestis.inference.items.auto_threads`). Rows go to the journal from a writer thread
(:func:`write_batches`): encoding, writing and ``fsync`` overlap the next batch's model call, at most
:data:`WRITE_AHEAD` batches behind it. ``ray`` runs the same stages on Ray Data (:mod:`vestis.inference.ray_engine`),
for catalogs beyond one machine.

The inputs, decoding and rows live in :mod:`vestis.inference.items`, shared by both engines; their names are
importable from here too.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.inference.items import (
    AUTO,
    IMAGE_SUFFIXES,
    ImageItem,
    auto_threads,
    collect_inputs,
    decode_image,
    decoded_batches,
    decoded_stacks,
    make_rows,
    model_on_gpu,
    resolve_split,
    stack_rows,
)
from vestis.inference.predictor import Predictor
from vestis.inference.ray_engine import ray_batches
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
    "AUTO",
    "ENGINES",
    "IMAGE_SUFFIXES",
    "OUTPUT_FORMATS",
    "WRITE_AHEAD",
    "ImageItem",
    "TagResult",
    "auto_threads",
    "collect_inputs",
    "decode_image",
    "decoded_batches",
    "flatten_row",
    "journal_path",
    "make_rows",
    "read_journal",
    "resolve_split",
    "resume_state",
    "tag_catalog",
    "write_batches",
]

OUTPUT_FORMATS = (".jsonl", ".csv", ".parquet")
ENGINES = ("local", "ray")
WRITE_AHEAD = 2  # batches of rows waiting for the writer thread, at most


@dataclass(frozen=True)
class TagResult:
    """Summary of a :func:`tag_catalog` run.

    Attributes:
        out: the output file.
        total: images in the input.
        done_before: images already in the journal when the run started.
        predicted: images predicted in this run.
        errors: error rows written in this run.
        seconds: wall time of this run's predictions.
        extra_rows: rows in the journal whose id is not in this input (kept).
    """

    out: Path
    total: int
    done_before: int
    predicted: int
    errors: int
    seconds: float
    extra_rows: int = 0

    @property
    def images_per_s(self) -> float:
        return (self.predicted + self.errors) / self.seconds if self.seconds > 0 else 0.0


def _local_batches(
    predictor: Predictor, items: Sequence[ImageItem], batch_size: int, workers: int, calibrated: bool
) -> Iterator[list[dict[str, Any]]]:
    pad = int(predictor.preprocessing["pad_value"])
    for its, pixels, ok, errors in decoded_stacks(
        items, predictor.image_size, pad, predictor.max_pixels, batch_size, workers
    ):
        yield stack_rows(predictor, its, pixels, ok, errors, calibrated)


# --- journal and output -------------------------------------------------------------------------------------
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


class _Journal:
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
        data = b"".join([_encode_row(r) + b"\n" for r in rows])
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


def _encode_row(row: dict[str, Any]) -> bytes:
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


def _finish(out: Path, journal: Path, order: Sequence[str], taxonomy: Taxonomy) -> None:
    """CSV/Parquet: rows in input order (other ids last), written atomically; then the journal goes."""
    _write_table(out, _ordered_rows(journal, order), taxonomy)
    journal.unlink()


class _Progress:
    """Progress on stderr: a Rich bar with images/s on a terminal, else one plain line every ``every`` batches.

    A bar drawn into a file or a pipe (a CI log, ``nohup``) is dumped only when it stops; plain lines show the
    progress as it happens, numbers to 4 significant digits.
    """

    def __init__(self, enabled: bool, total: int, done: int, label: str = "tagging", every: int = 10) -> None:
        self._bar = None
        self._lines = enabled and not sys.stderr.isatty()
        self._label, self._total, self._done, self._every, self._batches = label, total, done, max(1, every), 0
        self._t0 = time.perf_counter()
        self._n = 0
        if enabled and not self._lines:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._task = self._bar.add_task(label, total=total, completed=done, rate="")

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def _rate(self) -> float:
        return self._n / max(1e-9, time.perf_counter() - self._t0)

    def _line(self) -> None:
        pct = 100.0 * self._done / self._total if self._total else 100.0
        print(
            f"{self._label}: {self._done}/{self._total} images ({pct:.4g} %), {self._rate():.4g} images/s",
            file=sys.stderr,
            flush=True,
        )

    def advance(self, n: int) -> None:
        self._n += n
        self._done += n
        self._batches += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{self._rate():.1f} img/s")
        elif self._lines and self._batches % self._every == 0:
            self._line()

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._lines and self._batches % self._every:  # the last, partial stretch
            self._line()


def tag_catalog(
    model: str | os.PathLike[str] | Predictor,
    inputs: Sequence[str | os.PathLike[str]] | Sequence[ImageItem],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    workers: int | str = AUTO,
    engine: str = "local",
    device: str | None = None,
    calibrated: bool = True,
    restart: bool = False,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
    threads: int | str = AUTO,
) -> TagResult:
    """Tag every image of ``inputs`` into ``out`` (``.jsonl``, ``.csv`` or ``.parquet``), resuming a killed run.

    Args:
        model: a checkpoint or ONNX path, or a :class:`Predictor` (the ``ray`` engine needs one built from a file).
        inputs: folders, manifests and image paths (:func:`collect_inputs`), or already collected items.
        out: the output file; its suffix picks the format.
        batch_size: images per model call.
        workers: decoding processes (local engine) or parallel decode tasks (ray engine); ``"auto"``: from the
            cores (:func:`~vestis.inference.items.auto_threads`; on a GPU every core but one).
        engine: ``local`` or ``ray``.
        device: as in :meth:`Predictor.from_path` (when ``model`` is a path).
        calibrated: use the model's calibrated multi-label thresholds.
        restart: discard earlier results in ``out`` and start over.
        progress: show progress with images/s on stderr: a bar on a terminal, else a line every 10 batches.
        on_batch: called with the number of images after each batch is written (from the writer thread, see
            :func:`write_batches`).
        threads: the model's intra-op threads when ``model`` is a path (a :class:`Predictor` keeps its own);
            ``"auto"``: from the cores, as ``workers``.

    Returns:
        Counts and timing of this run.

    Raises:
        VestisError: bad arguments, inputs or model; an output being written by another run.
    """
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise VestisError(f"{out}: unsupported output format {out.suffix or '(none)'!r}; expected {OUTPUT_FORMATS}")
    if engine not in ENGINES:
        raise VestisError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
    if batch_size < 1:
        raise VestisError(f"expected batch_size >= 1, got {batch_size}")
    resolve_split(workers, threads)  # bad values are refused before any work
    items = list(inputs) if inputs and isinstance(next(iter(inputs)), ImageItem) else collect_inputs(inputs)
    if isinstance(model, Predictor):
        predictor = model
    else:
        n_threads = resolve_split(workers, threads, gpu=model_on_gpu(model, device))[1]
        predictor = Predictor.from_path(model, device=device, threads=n_threads)
    workers = resolve_split(workers, threads, gpu=predictor.device != "cpu")[0]
    if engine == "ray" and predictor.path is None:
        raise VestisError("engine ray: the model must be a file (checkpoint or ONNX)")
    journal = journal_path(out)

    writer = _Journal(journal)  # lock first, then read: a concurrent writer cannot slip in between
    try:
        if restart:
            writer.truncate()
            if out != journal:
                out.unlink(missing_ok=True)
        todo, extra = resume_state(journal, items, getattr(predictor, "fingerprint", None))
        predicted = errors = 0
        t0 = time.perf_counter()
        with _Progress(progress, len(items), len(items) - len(todo)) as bar:
            if todo:
                if engine == "ray":
                    assert predictor.path is not None  # checked above
                    batches = ray_batches(
                        predictor.path, todo, batch_size=batch_size, workers=workers, device=device,
                        calibrated=calibrated,
                    )  # fmt: skip
                else:
                    batches = _local_batches(predictor, todo, batch_size, workers, calibrated)
                predicted, errors = write_batches(writer, batches, bar, on_batch)
        seconds = time.perf_counter() - t0
    finally:
        writer.close()
    if journal != out:
        _finish(out, journal, [it.id for it in items], predictor.taxonomy)
    return TagResult(out, len(items), len(items) - len(todo), predicted, errors, seconds, extra)


def resume_state(journal: Path, items: Sequence[ImageItem], fingerprint: str | None) -> tuple[list[ImageItem], int]:
    """What a (resumed) tagging run still has to do: ``(items not in the journal, rows of ids not in items)``.

    Refuses a journal another model wrote, before repairing a torn last line: a refused run leaves the file byte
    for byte as it was. Call it with the journal's lock held (:class:`_Journal` open).
    """
    recorded: set[Any] = set()
    done = set(_offsets(journal, recorded))
    _check_same_model(journal, recorded, fingerprint)
    _repair(journal)
    extra = len(done - {it.id for it in items})
    return [it for it in items if it.id not in done], extra


def write_batches(
    writer: _Journal, batches: Iterable[list[dict[str, Any]]], bar: Any, on_batch: Callable[[int], None] | None
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
