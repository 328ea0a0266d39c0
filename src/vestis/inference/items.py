"""The images to tag and the stages every engine runs on them: inputs, decoding, rows.

Inputs (:func:`collect_inputs`). A folder gives every image file below it (ids are paths relative to the
folder); a ``.csv``/``.jsonl``/``.parquet`` file is a manifest (its ids and image paths); any other file is
an image (its id is the path as given). Ids must be unique: they are how a rerun knows what is done.

Decoding (:func:`decode_image`) never raises: an unreadable image becomes the reason of an error row.
:func:`decoded_batches` decodes in DataLoader worker processes (``workers``; 0 decodes in the main process); a
worker ends when the process that started it dies, even by ``SIGKILL`` (:func:`_worker_init`), instead of
lingering with its memory. A worker stacks its batch into one ``uint8`` tensor in shared memory, so the main
process gets a batch without copying its pixels through a pipe; the DataLoader keeps at most
``prefetch_factor`` (4) batches per worker decoded ahead, which bounds the memory (4 x 32 x 147 KB, about 19 MB
per worker, at 224 px) while decoding overlaps the model. When that shared memory runs out (``/dev/shm`` full,
as under Docker's 64 MB default), the run stops with a :class:`VestisError` saying what to change.

Cores (:func:`auto_threads`). How many decoding workers and model intra-op threads to use on the cores this
process may run on, when ``workers``/``threads`` are ``"auto"`` (:func:`resolve_split`).

Rows (:func:`make_rows`). ``{"id", "image", "attributes": {...}}`` with the :meth:`Predictor.decode` result
(scores rounded to 6 decimals), or ``{"id", "image", "error": reason}`` for an image that could not be decoded.

The local engine (:mod:`vestis.inference.tagging`), the Ray engine (:mod:`vestis.inference.ray_engine`) and
index building (:mod:`vestis.retrieval.index_build`) share these stages; this module imports none of them.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from vestis.data.images import ImageError, load_image
from vestis.data.manifest import FORMATS as MANIFEST_FORMATS
from vestis.data.manifest import read_manifest
from vestis.data.transforms import letterbox_array
from vestis.errors import VestisError
from vestis.inference.predictor import Predictor

__all__ = [
    "AUTO",
    "IMAGE_SUFFIXES",
    "ImageItem",
    "auto_threads",
    "available_cores",
    "collect_inputs",
    "decode_image",
    "decoded_batches",
    "decoded_stacks",
    "make_rows",
    "model_on_gpu",
    "resolve_split",
    "stack_rows",
]

AUTO = "auto"  # workers / threads chosen from the cores (auto_threads)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_DIGITS = 6  # decimals kept for scores in the output files
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_S = 0.5  # how often a worker checks, where the kernel cannot tell it, that its parent is gone
_PREFETCH = 4  # batches each decoding worker keeps ready (the DataLoader's prefetch_factor)


@dataclass(frozen=True)
class ImageItem:
    """One image to tag: its output id and where it is."""

    id: str
    path: Path


# --- cores --------------------------------------------------------------------------------------------------
def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: ``taskset``, a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def auto_threads(cores: int | None = None, *, gpu: bool = False) -> tuple[int, int]:
    """``(decoding workers, model intra-op threads)`` for ``cores`` CPU cores (default :func:`available_cores`).

    The rule, from ``bench/predict.py`` on the product photos (224 px JPEGs, the default EfficientNet-Lite0 at
    224 px): one core decodes and letterboxes about 1,700 images/s but runs the model at only about 100 images/s.
    Up to 3 cores, decoding runs in the main process between the model's batches (``0`` workers) and the model
    gets every core: decoding then costs about 6 % of the model's time per core, less than what a worker process
    costs the model's threads when it preempts one of them (on 2 cores, measured: 0 workers + 2 threads tagged
    186 images/s, 88 % of the model alone; 1 worker + 2 threads 163; 1 worker + 1 thread 100). From 4 cores the
    sequential share grows past what a dedicated decoder costs, so decoding overlaps the model in
    ``max(1, cores // 16)`` worker processes with cores of their own and the model gets the rest (4 cores: 1 + 3,
    32: 2 + 30; not measured here, the machine has 2). On a GPU (``gpu=True``) decoding is what limits, so every
    core but one decodes and the model keeps one CPU thread.
    """
    n = available_cores() if cores is None else max(1, int(cores))
    if gpu:
        return max(1, n - 1), 1
    if n <= 3:
        return 0, n
    workers = max(1, n // 16)
    return workers, n - workers


def _count(value: int | str, name: str, minimum: int) -> int | None:
    """``value`` as a number >= ``minimum``; ``None`` for ``"auto"``."""
    number: Any = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return None
        number = int(text) if text.isascii() and text.isdigit() else None
    if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
        raise VestisError(f"{name}: expected {AUTO!r} or a whole number >= {minimum}, got {value!r}")
    return number


def resolve_split(
    workers: int | str,
    threads: int | str,
    *,
    gpu: bool = False,
    cores: int | None = None,
    names: tuple[str, str] = ("workers", "threads"),
) -> tuple[int, int]:
    """``(workers, threads)`` with ``"auto"`` replaced by :func:`auto_threads`'s choice; numbers are kept.

    Args:
        workers: decoding workers, a number >= 0 or ``"auto"`` (also as text, as a command line gives it).
        threads: model intra-op threads, a number >= 1 or ``"auto"``.
        gpu: the model runs on a GPU (see :func:`auto_threads`).
        cores: the cores to split; default :func:`available_cores`.
        names: how errors name the two values (``--workers``, ``--threads`` on the command line).

    Raises:
        VestisError: a value that is neither ``"auto"`` nor a whole number in range.
    """
    w, t = _count(workers, names[0], 0), _count(threads, names[1], 1)
    auto_w, auto_t = auto_threads(cores, gpu=gpu)
    return (auto_w if w is None else w), (auto_t if t is None else t)


def model_on_gpu(model: str | os.PathLike[str], device: str | None) -> bool:
    """Whether :meth:`Predictor.from_path` puts ``model`` on a GPU for ``device``, known before it loads (the
    model's threads are set as it loads, so ``"auto"`` needs the device first).

    ``device`` ``None`` picks CUDA when present, as the loaders do: for an ``.onnx`` file when onnxruntime has its
    CUDA provider, for a checkpoint (or a combined model) when PyTorch sees a CUDA device.
    """
    if device is not None:
        return device.strip().lower().startswith("cuda")
    if Path(model).suffix.lower() == ".onnx":
        try:
            import onnxruntime as ort
        except ImportError:  # the loader reports it
            return False
        return "CUDAExecutionProvider" in ort.get_available_providers()
    return torch.cuda.is_available()


# --- inputs -------------------------------------------------------------------------------------------------
def collect_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[ImageItem]:
    """The images named by ``inputs``: folders, manifests and image files (rules in the module docstring).

    Raises:
        VestisError: a path that does not exist (other than an image path, which becomes an error row), a
            manifest with structural problems, duplicate ids for different images, or no image at all.
    """
    items: list[ImageItem] = []
    sources = [Path(p) for p in inputs]
    for src in sources:
        suffix = src.suffix.lower()
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            items += [ImageItem(p.relative_to(src).as_posix(), p) for p in files]
        elif suffix in MANIFEST_FORMATS:
            m = read_manifest(src)
            if m.problems:
                shown = "\n".join(f"  {p}" for p in m.problems[:5])
                more = f"\n  ... and {len(m.problems) - 5} more" if len(m.problems) > 5 else ""
                raise VestisError(f"{src}: {len(m.problems)} problem(s) in the manifest:\n{shown}{more}")
            items += [ImageItem(r.id, m.image_path(r)) for r in m.records]
        elif src.is_file() or suffix in IMAGE_SUFFIXES:
            items.append(ImageItem(str(src), src))
        else:
            raise VestisError(f"{src}: no such folder, manifest or image")
    unique: dict[str, ImageItem] = {}
    clashes: list[str] = []
    for it in items:
        seen = unique.setdefault(it.id, it)
        if seen.path != it.path:
            clashes.append(f"{it.id!r} ({seen.path} and {it.path})")
    if clashes:
        raise VestisError(f"duplicate image ids for different files: {', '.join(clashes[:5])}; ids must be unique")
    if not unique:
        raise VestisError(f"no images found in {', '.join(map(str, sources)) or '(no input)'}")
    return list(unique.values())


# --- decoding -----------------------------------------------------------------------------------------------
def decode_image(path: Path, size: int, pad_value: int, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """``(uint8 (3, size, size), None)`` for a readable image, else ``(None, reason)``; never raises."""
    try:
        img = load_image(path, max_pixels=max_pixels, min_side=size)
        return letterbox_array(img, size, pad_value), None
    except ImageError as e:
        msg = str(e)
        return None, msg[len(f"{path}: ") :] if msg.startswith(f"{path}: ") else msg
    except Exception as e:  # a decoder bug on a hostile file must not stop a catalog run
        return None, f"unreadable image ({type(e).__name__}: {e})"


class _DecodeDataset(Dataset):
    def __init__(self, items: Sequence[ImageItem], size: int, pad_value: int, max_pixels: int) -> None:
        self.items = list(items)
        self.size, self.pad_value, self.max_pixels = size, pad_value, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        arr, err = decode_image(self.items[i].path, self.size, self.pad_value, self.max_pixels)
        return i, arr, err


def _stack(batch: list[tuple[int, np.ndarray | None, str | None]]) -> tuple[list[int], list[int], list[Any], Any]:
    """DataLoader ``collate_fn``: ``(indices, ok, errors, pixels)``, the decoded images stacked into one tensor.

    ``pixels[k]`` is the image at position ``ok[k]`` of the batch, ``None`` when none decoded. In a worker process
    ``default_collate`` stacks into shared memory, so only a handle crosses to the main process.
    """
    ok = [k for k, b in enumerate(batch) if b[1] is not None]
    pixels = default_collate([torch.from_numpy(batch[k][1]) for k in ok]) if ok else None
    return [b[0] for b in batch], ok, [b[2] for b in batch], pixels


def _set_parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; ``False`` where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(_WATCH_S)
        if os.getppid() != ppid:  # re-parented: the process that started us is gone
            os._exit(1)


def _worker_init(parent: int | None, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: end this decoder when the process that started it dies.

    Without it, a ``vestis predict`` killed by ``SIGKILL`` or ``SIGTERM`` leaves its decoders behind,
    re-parented to PID 1, each blocked for ever writing to a result pipe that a sibling still holds open.
    On Linux the kernel kills the worker with its parent (``PR_SET_PDEATHSIG``); a daemon thread that polls
    the parent's pid covers the other systems and the parent's death itself while this ran. The kernel signal
    follows the *thread* that started the worker: the loader is iterated from the thread that created it.

    Args:
        parent: the pid the worker must have as its parent (the main process with ``fork``); ``None`` when the
            workers come from a fork server or ``spawn``, whose parent is that server.
        worker_id: given by the DataLoader.
    """
    del worker_id
    ppid = os.getppid()
    _set_parent_death_signal()
    if parent is not None and ppid != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(ppid,), name="vestis-parent-watch", daemon=True).start()


def make_rows(
    predictor: Predictor,
    items: Sequence[ImageItem],
    arrays: Sequence[np.ndarray | None],
    errors: Sequence[str | None],
    calibrated: bool = True,
) -> list[dict[str, Any]]:
    """Output rows for one decoded batch: predictions for the decoded images, error rows for the others.

    Every row names the model that made it (``"model"``: the predictor's fingerprint, ``None`` for a model file
    that does not carry one), so a resumed output can refuse rows from another model.
    """
    ok = [i for i, a in enumerate(arrays) if a is not None]
    batch = np.stack([arrays[i] for i in ok]) if ok else None  # (B_ok, 3, S, S)
    return stack_rows(predictor, items, batch, ok, errors, calibrated)


def stack_rows(
    predictor: Predictor,
    items: Sequence[ImageItem],
    batch: np.ndarray | None,
    ok: Sequence[int],
    errors: Sequence[str | None],
    calibrated: bool = True,
) -> list[dict[str, Any]]:
    """:func:`make_rows` for a batch already stacked: ``batch[k]`` is the image of ``items[ok[k]]``."""
    results: dict[int, dict[str, Any]] = {}
    if ok:
        assert batch is not None and len(batch) == len(ok)
        decoded = predictor.decode(predictor.predict_arrays(batch), calibrated, digits=_DIGITS)
        results = dict(zip(ok, decoded, strict=True))
    model = getattr(predictor, "fingerprint", None)
    rows = []
    for i, it in enumerate(items):
        row: dict[str, Any] = {"id": it.id, "image": str(it.path), "model": model}
        if i in results:
            row["attributes"] = results[i]
        else:
            row["error"] = errors[i] or "not decoded"
        rows.append(row)
    return rows


def decoded_stacks(
    items: Sequence[ImageItem], size: int, pad_value: int, max_pixels: int, batch_size: int, workers: int
) -> Iterator[tuple[list[ImageItem], np.ndarray | None, list[int], list[str | None]]]:
    """``(items, pixels, ok, errors)`` batch by batch in input order, decoded by ``workers`` processes (0: here).

    ``pixels`` is ``uint8 (len(ok), 3, size, size)``, the letterboxed images of ``items[k]`` for ``k`` in ``ok``
    (``None`` when none decoded); ``errors[k]`` is the reason for each other image. With workers the pixels are a
    view of the shared memory the worker stacked them into (see the module docstring).

    Raises:
        VestisError: the workers ran out of shared memory (the DataLoader's own error, or a worker killed by
            ``SIGBUS``); the message gives the memory the settings need and what to change.
    """
    ds = _DecodeDataset(items, size, pad_value, max_pixels)
    forked = workers > 0 and multiprocessing.get_start_method() == "fork"
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_stack,
        prefetch_factor=_PREFETCH if workers else None,
        worker_init_fn=functools.partial(_worker_init, os.getpid() if forked else None) if workers else None,
    )
    batches: Iterator[Any] | None = None
    while True:
        try:  # starting the workers and every batch: where a full /dev/shm shows
            batches = iter(loader) if batches is None else batches
            indices, ok, errors, pixels = next(batches)
        except StopIteration:
            return
        except (RuntimeError, OSError) as e:
            if workers and _out_of_shared_memory(e):
                raise VestisError(_shm_advice(e, workers, batch_size, size)) from None
            raise
        yield [items[i] for i in indices], None if pixels is None else pixels.numpy(), ok, errors


# what the DataLoader and torch's shared-memory allocator say when /dev/shm is full (a container's 64 MB default)
_SHM_SIGNS = ("shared memory", "/dev/shm", "no space left on device", "killed by signal: bus error")


def _out_of_shared_memory(error: BaseException) -> bool:
    text = str(error).lower()
    if "too many open files" in text:  # out of file descriptors (torch's file_descriptor sharing), not of memory
        return False
    return getattr(error, "errno", None) == errno.ENOSPC or any(sign in text for sign in _SHM_SIGNS)


def _shm_advice(error: BaseException, workers: int, batch_size: int, size: int) -> str:
    """The message for a decoding stage that ran out of shared memory: what it needs and what to change."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    cause = next((ln for ln in reversed(lines) if any(s in ln.lower() for s in _SHM_SIGNS)), lines[-1] if lines else "")
    need = workers * _PREFETCH * batch_size * 3 * size * size / 2**20
    return (
        f"the decoding workers ran out of shared memory (/dev/shm): {cause}; {workers} worker(s) keep up to "
        f"{_PREFETCH} batches of {batch_size} images at {size} px ready, about {need:.0f} MB; use fewer --workers "
        "(0 decodes without shared memory), a smaller --batch-size, or give the container more shared memory "
        "(docker run --shm-size=1g)"
    )


def decoded_batches(
    items: Sequence[ImageItem], size: int, pad_value: int, max_pixels: int, batch_size: int, workers: int
) -> Iterator[tuple[list[ImageItem], list[np.ndarray | None], list[str | None]]]:
    """``(items, arrays, errors)`` batch by batch in input order, decoded by ``workers`` processes (0: here).

    The local engine's decoding stage, shared by tagging and index building (:mod:`vestis.retrieval.index_build`):
    an array is ``uint8 (3, size, size)`` letterboxed pixels, or ``None`` with the reason in ``errors``.
    """
    for its, pixels, ok, errors in decoded_stacks(items, size, pad_value, max_pixels, batch_size, workers):
        arrays: list[np.ndarray | None] = [None] * len(its)
        for k, i in enumerate(ok):
            assert pixels is not None
            arrays[i] = pixels[k]
        yield its, arrays, errors
