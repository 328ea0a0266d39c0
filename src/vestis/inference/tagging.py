"""Catalog tagging: a folder, a manifest or a list of images through a :class:`Predictor`, into a file.

Crash safety. Results are appended to a JSONL *journal*, one line per image, written and ``fsync``-ed
batch by batch. For a ``.jsonl`` output the journal is the output itself; for ``.csv`` and ``.parquet`` it
is ``<out>.partial.jsonl``, converted (atomically) when every image is done, then removed. A rerun reads the
journal, drops a torn last line (a kill in the middle of a write), and predicts only the images whose id
is not in it yet, so after any number of kills and reruns the output holds every image exactly once. A
``.jsonl`` output that is complete is left as it is by a rerun; ``restart=True`` starts over. Two runs on
the same output at once are refused (an advisory lock on the journal). The journal and the output files live in
:mod:`vestis.inference.journal`.

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

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from vestis.inference.journal import (
    WRITE_AHEAD,
    Journal,
    finish,
    flatten_row,
    journal_path,
    read_journal,
    resume_state,
    write_batches,
)
from vestis.inference.predictor import Predictor
from vestis.inference.ray_engine import ray_batches

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

    writer = Journal(journal)  # lock first, then read: a concurrent writer cannot slip in between
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
        finish(out, journal, [it.id for it in items], predictor.taxonomy)
    return TagResult(out, len(items), len(items) - len(todo), predicted, errors, seconds, extra)
