"""Outfit tagging: images through an :class:`~vestis.inference.pipeline.OutfitPipeline` into a JSONL file, resumably.

``vestis predict outfit.vestis IMAGES --out rows.jsonl`` (or an exported pipeline folder) writes one line per image::

    {"id", "image", "width", "height", "garments": [Garment.to_dict(), ...], "model": fingerprint}

or ``{"id", "image", "model", "error": reason}`` for an image that cannot be decoded (counted, never fatal). The
journal is the classifier tagger's (:mod:`vestis.inference.tagging`): rows appended and ``fsync``-ed batch by batch,
a torn last line cut off, a rerun predicting only the ids not yet in the file, a second writer refused by a lock,
and rows of another model (another fingerprint, which includes the pipeline's settings) refused unless
``restart``. Inputs are folders, manifests and image files (:func:`~vestis.inference.items.collect_inputs`).
Images are decoded whole (the crops need the original pixels) in ``workers`` DataLoader processes.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vestis.data.images import ImageError, load_image
from vestis.errors import VestisError
from vestis.inference.items import ImageItem, _as_list, _worker_init, collect_inputs
from vestis.inference.pipeline import OutfitPipeline
from vestis.inference.tagging import (
    TagResult,
    _check_same_model,
    _Journal,
    _offsets,
    _Progress,
    _repair,
)

__all__ = ["outfit_rows", "tag_outfits"]


class _DecodeWhole(Dataset):
    """``(index, (H, W, 3) uint8 or None, error or None)``; never raises."""

    def __init__(self, items: Sequence[ImageItem], max_pixels: int) -> None:
        self.items, self.max_pixels = list(items), max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        path = self.items[i].path
        try:
            with load_image(path, max_pixels=self.max_pixels) as img:
                return i, np.asarray(img.convert("RGB"), dtype=np.uint8), None
        except ImageError as e:
            msg = str(e)
            return i, None, msg[len(f"{path}: ") :] if msg.startswith(f"{path}: ") else msg
        except Exception as e:  # a decoder bug on a hostile file must not stop a catalog run
            return i, None, f"unreadable image ({type(e).__name__}: {e})"


def _decoded(
    items: Sequence[ImageItem], max_pixels: int, batch_size: int, workers: int
) -> Iterator[tuple[list[ImageItem], list[np.ndarray | None], list[str | None]]]:
    forked = workers > 0 and multiprocessing.get_start_method() == "fork"
    loader = DataLoader(
        _DecodeWhole(items, max_pixels),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=2 if workers else None,
        worker_init_fn=functools.partial(_worker_init, os.getpid() if forked else None) if workers else None,
    )
    for batch in loader:
        yield [items[b[0]] for b in batch], [b[1] for b in batch], [b[2] for b in batch]


def outfit_rows(
    pipeline: OutfitPipeline,
    items: Sequence[ImageItem],
    arrays: Sequence[np.ndarray | None],
    errors: Sequence[str | None],
) -> list[dict[str, Any]]:
    """Output rows of one decoded batch: every decoded image in one pipeline call, error rows for the others."""
    ok = [i for i, a in enumerate(arrays) if a is not None]
    images = [Image.fromarray(arrays[i]) for i in ok]  # type: ignore[arg-type]
    results = dict(zip(ok, pipeline.predict_images(images, [str(items[i].path) for i in ok]), strict=True))
    model = pipeline.fingerprint
    rows = []
    for i, it in enumerate(items):
        if i in results:
            rows.append({"id": it.id, **results[i].to_dict()})
        else:
            rows.append({"id": it.id, "image": str(it.path), "model": model, "error": errors[i] or "not decoded"})
    return rows


def tag_outfits(
    pipeline: str | os.PathLike[str] | OutfitPipeline,
    inputs: Sequence[str | os.PathLike[str]] | Sequence[ImageItem],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 8,
    workers: int = 2,
    device: str | None = None,
    restart: bool = False,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> TagResult:
    """Tag every image of ``inputs`` into the JSONL file ``out``, resuming a killed run (module docstring).

    Args:
        pipeline: a pipeline file, an exported pipeline folder or a loaded :class:`OutfitPipeline`.
        inputs: folders, manifests and image paths, or already collected items.
        out: the ``.jsonl`` output.
        batch_size: images per detector call (their crops go through stage 2 together).
        workers: decoding processes (0: decode here).
        device: as in :meth:`OutfitPipeline.load` (when ``pipeline`` is a path).
        restart: discard earlier results in ``out`` and start over.
        progress: progress with images/s on stderr.
        on_batch: called with the number of images after each batch is written.

    Returns:
        Counts and timing of this run.

    Raises:
        VestisError: an output that is not ``.jsonl``, bad arguments, inputs or pipeline, rows of another model in
            ``out``, an output being written by another run.
    """
    out = Path(out)
    if out.suffix.lower() != ".jsonl":
        raise VestisError(f"{out}: an outfit pipeline writes nested rows; expected a .jsonl output")
    if batch_size < 1 or workers < 0:
        raise VestisError(f"expected batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    items = list(inputs) if inputs and isinstance(next(iter(inputs)), ImageItem) else collect_inputs(inputs)
    pipe = pipeline if isinstance(pipeline, OutfitPipeline) else OutfitPipeline.load(pipeline, device=device)
    writer = _Journal(out)  # lock first, then read: a concurrent writer cannot slip in between
    try:
        if restart:
            writer.truncate()
        recorded: set[Any] = set()
        done = set(_offsets(out, recorded))
        _check_same_model(out, recorded, pipe.fingerprint)  # before _repair: a refused run changes nothing
        _repair(out)
        extra = len(done - {it.id for it in items})
        todo = [it for it in items if it.id not in done]
        predicted = errors = 0
        t0 = time.perf_counter()
        with _Progress(progress, len(items), len(items) - len(todo)) as bar:
            if todo:
                for its, arrays, errs in _decoded(todo, pipe.max_pixels, batch_size, workers):
                    rows = outfit_rows(pipe, its, arrays, errs)
                    writer.append(rows)
                    n_err = sum("error" in r for r in rows)
                    errors += n_err
                    predicted += len(rows) - n_err
                    bar.advance(len(rows))
                    if on_batch is not None:
                        on_batch(len(rows))
        seconds = time.perf_counter() - t0
    finally:
        writer.close()
    return TagResult(out, len(items), len(items) - len(todo), predicted, errors, seconds, extra)
