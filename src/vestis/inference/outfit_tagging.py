"""Outfit tagging: images through an :class:`~vestis.inference.pipeline.OutfitPipeline` into a JSONL file, resumably.

``vestis predict outfit.vestis IMAGES --out rows.jsonl`` (or an exported pipeline folder) writes one line per image::

    {"id", "image", "width", "height", "garments": [Garment.to_dict(), ...], "model": fingerprint}

or ``{"id", "image", "model", "error": reason}`` for an image that cannot be decoded (counted, never fatal). The
journal is the classifier tagger's (:mod:`vestis.inference.tagging`): rows appended and ``fsync``-ed batch by batch,
a torn last line cut off, a rerun predicting only the ids not yet in the file, a second writer refused by a lock,
and rows of another model (another fingerprint, which includes the pipeline's settings) refused unless
``restart``. Inputs are folders, manifests and image files (:func:`~vestis.inference.items.collect_inputs`).
Images are decoded whole (the crops need the original pixels) in ``workers`` threads, ahead of the batch being
predicted, with at most ``decode_budget`` bytes of decoded pixels in memory at a time (:data:`DEFAULT_DECODE_BYTES`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from vestis.data.images import ImageError, load_image
from vestis.errors import VestisError
from vestis.inference.items import ImageItem, collect_inputs
from vestis.inference.journal import Journal, resume_state, write_batches
from vestis.inference.pipeline import OutfitPipeline
from vestis.inference.tagging import TagResult, _Progress

__all__ = ["DEFAULT_DECODE_BYTES", "outfit_rows", "tag_outfits"]


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


DEFAULT_DECODE_BYTES = 1 << 30  # decoded pixels in memory at a time: the batch being predicted and those ahead


def _decoded_bytes(path: Path, max_pixels: int) -> int:
    """The RGB bytes an image will take decoded, from its header (what the cap allows when unreadable)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except Exception:  # the decoder reports the reason; the header costs nothing then
        return 0
    return 3 * min(int(w) * int(h), max_pixels)


def _decoded(
    items: Sequence[ImageItem],
    max_pixels: int,
    batch_size: int,
    workers: int,
    budget: int = DEFAULT_DECODE_BYTES,
) -> Iterator[tuple[list[ImageItem], list[np.ndarray | None], list[str | None]]]:
    """Batches of decoded images, in order, with at most ``budget`` bytes of pixels decoded at a time.

    ``workers`` threads decode ahead (Pillow decodes without the GIL) while a batch is predicted; an image is only
    started when its decoded size (read from its header) fits in what the batch being predicted and the images
    ahead leave of ``budget`` -- an image larger than the whole budget runs alone. A batch closes at
    ``batch_size`` images or when the next image would not fit beside it.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    dataset = _DecodeWhole(items, max_pixels)
    n = len(items)
    cost = [-1] * n  # decoded bytes, read from the header when first needed
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vestis-decode") if workers else None
    ahead: deque[tuple[int, Future[Any] | None]] = deque()  # submitted, not yet handed out
    held = 0  # bytes of the images ahead and of the batch last handed out
    nxt = 0

    def submit() -> None:
        nonlocal held, nxt
        while nxt < n and len(ahead) < max(batch_size * 2, 1):
            if cost[nxt] < 0:
                cost[nxt] = _decoded_bytes(items[nxt].path, max_pixels)
            c = cost[nxt]
            if held and held + c > budget:
                return
            held += c
            ahead.append((nxt, pool.submit(dataset.__getitem__, nxt) if pool is not None else None))
            nxt += 1

    try:
        last = 0
        while nxt < n or ahead:
            held -= last  # the caller is done with the batch it was handed
            last = 0
            submit()
            batch: list[tuple[int, np.ndarray | None, str | None]] = []
            while ahead and len(batch) < batch_size:
                i, fut = ahead.popleft()
                batch.append(fut.result() if fut is not None else dataset[i])
                last += cost[i]
                if pool is not None:
                    submit()  # the next images decode while this batch is predicted
            yield [items[b[0]] for b in batch], [b[1] for b in batch], [b[2] for b in batch]
    finally:
        if pool is not None:
            for _, fut in ahead:
                if fut is not None:
                    fut.cancel()
            pool.shutdown(wait=True)


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
    decode_budget: int = DEFAULT_DECODE_BYTES,
) -> TagResult:
    """Tag every image of ``inputs`` into the JSONL file ``out``, resuming a killed run (module docstring).

    Args:
        pipeline: a pipeline file, an exported pipeline folder or a loaded :class:`OutfitPipeline`.
        inputs: folders, manifests and image paths, or already collected items.
        out: the ``.jsonl`` output.
        batch_size: images per detector call (their crops go through stage 2 together).
        workers: decoding threads (0: decode here, between batches).
        device: as in :meth:`OutfitPipeline.load` (when ``pipeline`` is a path).
        restart: discard earlier results in ``out`` and start over.
        progress: progress with images/s on stderr.
        on_batch: called with the number of images after each batch is written.
        decode_budget: the most bytes of decoded pixels in memory at a time (an image larger than it runs alone).

    Returns:
        Counts and timing of this run.

    Raises:
        VestisError: an output that is not ``.jsonl``, bad arguments, inputs or pipeline, rows of another model in
            ``out``, an output being written by another run.
    """
    out = Path(out)
    if out.suffix.lower() != ".jsonl":
        raise VestisError(f"{out}: an outfit pipeline writes nested rows; expected a .jsonl output")
    if batch_size < 1 or workers < 0 or decode_budget < 1:
        raise VestisError(
            f"expected batch_size >= 1, workers >= 0 and decode_budget >= 1, got {batch_size}, {workers} and "
            f"{decode_budget}"
        )
    items = list(inputs) if inputs and isinstance(next(iter(inputs)), ImageItem) else collect_inputs(inputs)
    pipe = pipeline if isinstance(pipeline, OutfitPipeline) else OutfitPipeline.load(pipeline, device=device)
    writer = Journal(out)  # lock first, then read: a concurrent writer cannot slip in between
    try:
        if restart:
            writer.truncate()
        todo, extra = resume_state(out, items, pipe.fingerprint)
        predicted = errors = 0
        t0 = time.perf_counter()
        with _Progress(progress, len(items), len(items) - len(todo)) as bar:
            if todo:
                decoded = _decoded(todo, pipe.max_pixels, batch_size, workers, decode_budget)
                batches = (outfit_rows(pipe, its, arrays, errs) for its, arrays, errs in decoded)
                predicted, errors = write_batches(writer, batches, bar, on_batch)
        seconds = time.perf_counter() - t0
    finally:
        writer.close()
    return TagResult(out, len(items), len(items) - len(todo), predicted, errors, seconds, extra)
