"""Checkpoints: one file holding weights, model config, taxonomy, preprocessing, training config,
training state and validation metrics, so that :func:`load` rebuilds the model from it alone.

Format. A checkpoint is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: every tensor
(model weights, optimiser moments, RNG states, NumPy arrays) is a safetensors tensor, and everything else
is JSON in the header's string metadata, one entry per field (``config``, ``taxonomy``, ``preprocessing``,
``metrics``, ``thresholds``, ``train_state``, ``model``, ``fingerprint``, and ``embedding`` for an embedding model)
plus ``format`` and ``version``. Reading it parses
JSON and raw tensor bytes only, so a downloaded or shared model file cannot run code, unlike the pickle
that ``torch.save`` writes. Any safetensors reader sees the weights under ``model/<parameter name>``.

Tree codec. A field is a tree of dicts, lists, tuples, str, int, float, bool, None, tensors and NumPy
arrays; it is written as JSON where

* str, int, bool, None, lists and finite floats are themselves (JSON keeps ``1`` and ``1.0`` apart);
* a dict whose keys are all str not starting with ``$`` is a JSON object;
* anything else is an object with one ``$`` key: ``{"$tuple": [...]}``, ``{"$dict": [[key, value], ...]}``
  (other keys, e.g. the int parameter ids of an optimiser state), ``{"$float": "nan" | "inf" | "-inf"}``,
  ``{"$tensor": name}`` and ``{"$ndarray": name}`` (``name`` is the safetensors tensor holding it, named
  by its place in the tree, e.g. ``train_state/optimizer/state/0/exp_avg``).

NumPy scalars are written as the Python number they hold. Loading gives back the same structure and values:
resuming a run from a checkpoint is bit-exact.

Embedding models (those with ``embedding_layout()``, :mod:`vestis.models.embedding`) also store ``embedding``:
``{"model": <registered name>, "layout": [[attribute, width], ...], "similarity": ...}``, the layout a search index
built from the model relies on. :func:`load` rebuilds the model from the config as for a classifier and refuses it
when its layout or name disagrees with the stored one. Classifier checkpoints have no ``embedding`` entry.

Fingerprint. ``fingerprint`` is :func:`vestis.fingerprint.fingerprint` of the stored weights, taxonomy and
preprocessing, written by :func:`save_checkpoint`. :func:`load` sets it as ``model.fingerprint``, computing it
for a checkpoint written before the field existed, so every loaded model can be named.

Old checkpoints (``torch.save`` pickles, version 1) are refused unless the caller trusts the file
(``trust=True``, ``--trust-checkpoint`` on the command line): unpickling one runs whatever code it holds.

Written atomically (temporary file, fsync, rename): a crash mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from vestis.config import Config
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.fingerprint import PREFIX, fingerprint
from vestis.io import atomic_write_bytes

__all__ = [
    "FORMAT",
    "MAX_HEADER_BYTES",
    "SIMILARITY",
    "VERSION",
    "TreeDecoder",
    "TreeEncoder",
    "embedding_entry",
    "fingerprint_of",
    "load",
    "load_checkpoint",
    "rebuild_model",
    "save_checkpoint",
    "sniff_checkpoint",
    "validate_state",
]

FORMAT = "vestis-checkpoint"
VERSION = 2  # 1: a torch.save pickle; 2: safetensors + JSON metadata
# The JSON header is read into memory before anything is checked; a model's config, taxonomy, metrics and
# tensor index are far below this, so a larger header is a damaged or hostile file.
MAX_HEADER_BYTES = 64 * 2**20
FIELDS = (
    "model",
    "config",
    "taxonomy",
    "preprocessing",
    "metrics",
    "thresholds",
    "train_state",
    "embedding",
    "fingerprint",
)
# how two images compare under an embedding model's layout (see vestis.models.embedding.base)
SIMILARITY = "inner product of L2-normalised sub-embeddings"
# deeper trees than any checkpoint holds are refused instead of exhausting the recursion limit
_MAX_DEPTH = 64
_TRUST_HINT = "pass --trust-checkpoint (trust=True) only for a file from a source you trust"

log = logging.getLogger(__name__)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    config: Config,
    taxonomy: Taxonomy,
    metrics: dict[str, Any] | None = None,
    thresholds: dict[str, list[float]] | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint. ``train_state`` (optimiser, scheduler, RNG, epoch...) is what ``--resume`` needs."""
    from vestis.pretrained import source_for

    config = config.resolved()  # normalisation left to the weights is written as numbers
    src = source_for(config.model.backbone, config.model.pretrained)
    state = {
        "model": dict(model.state_dict()),
        "config": config.to_dict(),
        "taxonomy": taxonomy.to_dict(),
        # everything inference needs to reproduce the input pipeline, duplicated here for readers without vestis
        "preprocessing": {
            "image_size": config.data.image_size,
            "mean": list(config.data.mean),
            "std": list(config.data.std),
            "pad_value": config.data.pad_value,
            "resize": "letterbox",
            # what the initial weights expect, so a reader can tell a deliberate change of resolution from a slip
            "pretrained": None
            if not config.model.pretrained
            else {
                "source": config.model.pretrained,  # a source name or the local file's path
                "package": src.package if src is not None else None,
                "mean": list(src.mean) if src is not None else None,
                "std": list(src.std) if src is not None else None,
                "resolution": src.resolution if src is not None else None,
            },
        },
        "metrics": metrics or {},
        "thresholds": thresholds or {},
        "train_state": train_state,
    }
    entry = embedding_entry(model, config.model.name)
    if entry is not None:
        state["embedding"] = entry
    state["fingerprint"] = fingerprint(state["model"], state["taxonomy"], state["preprocessing"])
    return atomic_write_bytes(path, encode_checkpoint(state))


def embedding_entry(model: nn.Module, name: str) -> dict[str, Any] | None:
    """The ``embedding`` field of an embedding model's checkpoint; ``None`` for a model without a layout.

    Args:
        model: the model; it has a layout when it has ``embedding_layout()``.
        name: the registered model name, used when the model has no ``kind``.
    """
    layout_of = getattr(model, "embedding_layout", None)
    if not callable(layout_of):
        return None
    return {
        "model": str(getattr(model, "kind", name)),
        "layout": [[str(attr), int(width)] for attr, width in layout_of()],
        "similarity": SIMILARITY,
    }


def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file for the fields of ``state`` (the keys of :data:`FIELDS`)."""
    enc = TreeEncoder()
    metadata = {"format": FORMAT, "version": str(VERSION)}
    for field in FIELDS:
        if field in state:
            tree = enc.encode(state[field], field, 0)
            metadata[field] = json.dumps(tree, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    return safetensors.torch.save(enc.tensors, metadata=metadata)


def load_checkpoint(path: str | os.PathLike[str], *, trust: bool = False) -> dict[str, Any]:
    """Read a checkpoint dict (tensors on CPU): ``format``, ``version`` and the :data:`FIELDS`.

    Args:
        path: the checkpoint file.
        trust: also load an old pickle checkpoint (version 1). Unpickling runs any code the file holds;
            a warning is logged when it happens.

    Raises:
        VestisError: a missing file, a file that is not a vestis checkpoint, a damaged one, one without its
            config, taxonomy or weights, or an old pickle checkpoint without ``trust``.
    """
    path = Path(path)
    if not path.is_file():
        raise VestisError(f"{path}: checkpoint not found")
    kind = sniff_checkpoint(path)
    if kind == "pickle":
        if not trust:
            raise VestisError(f"{path}: an old pickle checkpoint, which can run code when loaded; {_TRUST_HINT}")
        state = _load_pickle(path)
    elif kind == "safetensors":
        state = _load_safetensors(path)
    else:
        raise VestisError(f"{path}: not a readable checkpoint (expected a safetensors file)")
    validate_state(state, path)
    return state


def rebuild_model(
    state: dict[str, Any], *, source: str = "<checkpoint>", map_location: str | torch.device = "cpu"
) -> nn.Module:
    """The trained model of a checkpoint dict from :func:`load_checkpoint`, in eval mode (see :func:`load`)."""
    from vestis.models import create_model

    cfg = Config.from_dict(state["config"], source=source)
    taxonomy = Taxonomy.from_dict(state["taxonomy"], source=source)
    cfg.model.pretrained = None  # the checkpoint holds the weights
    # image_size: backbones that size layers by the input (DAtRNet's ASE trunk) are rebuilt as they were trained
    model = create_model(cfg.model, taxonomy, image_size=cfg.data.image_size)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:  # missing/unexpected keys or shapes: the weights do not fit the config
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0])[:300] if lines else ""
        raise VestisError(f"{source}: model: expected weights that fit the model config ({detail})") from None
    _check_embedding(state.get("embedding"), model, cfg.model.name, source)
    model.config = cfg
    model.thresholds = state.get("thresholds") or {}
    model.metrics = state.get("metrics") or {}
    model.fingerprint = fingerprint_of(state)
    return model.to(map_location).eval()


def fingerprint_of(state: dict[str, Any]) -> str:
    """The fingerprint of a checkpoint dict: the stored one, or computed for a file written before it was stored."""
    stored = state.get("fingerprint")
    if isinstance(stored, str):
        return stored
    return fingerprint(state["model"], state["taxonomy"], state["preprocessing"])


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu", trust: bool = False) -> nn.Module:
    """Rebuild the trained model from a checkpoint alone, in eval mode.

    The model carries ``.config`` (:class:`Config`), ``.taxonomy`` and ``.thresholds`` (calibrated per-value
    thresholds, possibly empty) for prediction, and ``.fingerprint`` (``sha256:...``, :mod:`vestis.fingerprint`).

    Args:
        path: the checkpoint file.
        map_location: the device of the returned model.
        trust: also load an old pickle checkpoint (see :func:`load_checkpoint`).
    """
    return rebuild_model(load_checkpoint(path, trust=trust), source=str(path), map_location=map_location)


def _check_embedding(stored: Any, model: nn.Module, name: str, source: str) -> None:
    """Refuse a rebuilt model whose layout (or kind) is not the one its checkpoint recorded."""
    if stored is None:
        return  # a classifier, or an embedding checkpoint written before layouts were recorded
    rebuilt = embedding_entry(model, name)
    if rebuilt is None:
        raise VestisError(
            f"{source}: embedding: the checkpoint records an embedding layout, but its config builds "
            f"{type(model).__name__}, which has none"
        )
    for key in ("model", "layout"):
        if stored.get(key) != rebuilt[key]:
            raise VestisError(
                f"{source}: embedding.{key}: expected {rebuilt[key]!r} (what the config and weights build), "
                f"got {stored.get(key)!r}"
            )


# --- reading ------------------------------------------------------------------------------------------------


def sniff_checkpoint(path: Path) -> str:
    """``pickle`` (a torch zip or a raw pickle), ``safetensors`` or ``unknown``, from the first bytes only."""
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "pickle"  # torch.save's zip archive
    # before the pickle test: a header length such as 0x0280 starts with the bytes of a PROTO 2 opcode
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if n > MAX_HEADER_BYTES:
            raise VestisError(f"{path}: checkpoint header of {n} bytes is over the limit of {MAX_HEADER_BYTES}")
        if n > path.stat().st_size - 8:
            raise VestisError(f"{path}: truncated checkpoint (the header runs past the end of the file)")
        return "safetensors"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # a PROTO opcode (protocols 2-5): a bare pickle, or torch.save's pre-1.6 format
    return "unknown"


def _load_pickle(path: Path) -> dict[str, Any]:
    log.warning(
        "%s: loading an old pickle checkpoint because it is trusted (--trust-checkpoint); this runs any code "
        "the file holds",
        path,
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise VestisError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(state, dict):
        raise VestisError(f"{path}: not a vestis checkpoint (expected a dict, got {type(state).__name__})")
    return state


def _load_safetensors(path: Path) -> dict[str, Any]:
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as e:  # safetensors raises its own error type, and OSError
        raise VestisError(f"{path}: not a readable checkpoint ({e})") from None
    if metadata.get("format") != FORMAT:
        raise VestisError(f"{path}: not a vestis checkpoint (no format={FORMAT!r} in its metadata)")
    try:
        version = int(metadata.get("version", ""))
    except ValueError:
        raise VestisError(f"{path}: version: expected an integer, got {metadata.get('version')!r}") from None
    if version > VERSION:
        raise VestisError(f"{path}: checkpoint version {version} is newer than this vestis ({VERSION})")
    state: dict[str, Any] = {"format": FORMAT, "version": version}
    dec = TreeDecoder(tensors, path)
    for field in FIELDS:
        if field in metadata:
            try:
                tree = json.loads(metadata[field])
            except (json.JSONDecodeError, RecursionError) as e:
                raise VestisError(f"{path}: {field}: expected JSON ({e})") from None
            state[field] = dec.decode(tree, field, 0)
    return state


def validate_state(state: dict[str, Any], path: Path) -> None:
    """The structure :func:`load` and the training loop rely on, each gap as ``path: field: expected``."""
    if state.get("format") != FORMAT:
        raise VestisError(f"{path}: not a vestis checkpoint")
    version = state.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise VestisError(f"{path}: checkpoint version {version!r} is newer than this vestis ({VERSION})")
    for field in ("config", "taxonomy"):
        if not isinstance(state.get(field), dict):
            raise VestisError(f"{path}: the checkpoint has no {field} (expected a '{field}' table)")
    weights = state.get("model")
    if not isinstance(weights, dict) or not weights:
        raise VestisError(f"{path}: the checkpoint has no model weights (expected a 'model' table of tensors)")
    bad = next((k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise VestisError(f"{path}: model.{bad}: expected a tensor")
    prep = state.get("preprocessing")
    missing = [k for k in ("image_size", "mean", "std", "pad_value") if not isinstance(prep, dict) or k not in prep]
    if missing:
        raise VestisError(f"{path}: preprocessing: expected a table with {', '.join(missing)}")
    for field in ("metrics", "thresholds"):
        state[field] = state.get(field) or {}
        if not isinstance(state[field], dict):
            raise VestisError(f"{path}: {field}: expected a table, got {type(state[field]).__name__}")
    _validate_embedding(state.get("embedding"), path)
    fp = state.get("fingerprint")
    digest = fp.removeprefix(PREFIX) if isinstance(fp, str) and fp.startswith(PREFIX) else ""
    if fp is not None and not (len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise VestisError(f"{path}: fingerprint: expected '{PREFIX}' and 64 hex digits, got {str(fp)[:80]!r}")
    state.setdefault("train_state", None)
    if not isinstance(state["train_state"], dict | None):
        raise VestisError(f"{path}: train_state: expected a table, got {type(state['train_state']).__name__}")


def _validate_embedding(entry: Any, path: Path) -> None:
    if entry is None:
        return
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
        raise VestisError(f"{path}: embedding: expected a table with the model name")
    layout = entry.get("layout")
    ok = isinstance(layout, list) and all(
        isinstance(p, list)
        and len(p) == 2
        and isinstance(p[0], str)
        and isinstance(p[1], int)
        and not isinstance(p[1], bool)
        and p[1] > 0
        for p in layout
    )
    if not ok:
        raise VestisError(f"{path}: embedding.layout: expected a list of [attribute, positive width] pairs")


# --- the tree codec ------------------------------------------------------------------------------------------


class TreeEncoder:
    """Tree -> JSON-able tree, collecting tensors in :attr:`tensors` (see the module docstring)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[int] = set()

    def encode(self, obj: Any, where: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise ValueError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
        if obj is None or isinstance(obj, bool | int | str):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"$float": "nan" if math.isnan(obj) else str(obj)}
        if isinstance(obj, torch.Tensor):
            return {"$tensor": self._add(obj, where)}
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in "biuf":
                raise TypeError(f"{where}: cannot store a NumPy array of dtype {obj.dtype}")
            arr = obj if obj.flags.c_contiguous else obj.copy(order="C")  # ascontiguousarray would make 0-d 1-d
            return {"$ndarray": self._add(torch.from_numpy(arr), where)}
        if isinstance(obj, np.generic):
            return self.encode(obj.item(), where, depth)
        if isinstance(obj, list):
            return [self.encode(v, f"{where}/{i}", depth + 1) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"$tuple": [self.encode(v, f"{where}/{i}", depth + 1) for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in obj):
                return {k: self.encode(v, f"{where}/{k}", depth + 1) for k, v in obj.items()}
            return {
                "$dict": [
                    [self.encode(k, f"{where}/key", depth + 1), self.encode(v, f"{where}/{k}", depth + 1)]
                    for k, v in obj.items()
                ]
            }
        raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint")

    def _add(self, t: torch.Tensor, where: str) -> str:
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr in self._storages:
            t = t.clone()  # safetensors refuses tensors that share memory (tied weights, views)
        self._storages.add(t.untyped_storage().data_ptr())
        name, n = where, 1
        while name in self.tensors:  # two keys with the same text, e.g. 0 and "0"
            name, n = f"{where}#{n}", n + 1
        self.tensors[name] = t
        return name


class TreeDecoder:
    """JSON tree -> tree, with the tensors of the file; anything malformed is a :class:`VestisError`."""

    def __init__(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        self.tensors = tensors
        self.path = path

    def _fail(self, where: str, what: str) -> VestisError:
        return VestisError(f"{self.path}: {where}: expected {what}")

    def decode(self, node: Any, where: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self._fail(where, f"at most {_MAX_DEPTH} levels of nesting")
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [self.decode(v, f"{where}/{i}", depth + 1) for i, v in enumerate(node)]
        if not isinstance(node, dict):
            raise self._fail(where, f"a JSON value, got {type(node).__name__}")
        tags = [k for k in node if k.startswith("$")]
        if not tags:
            return {k: self.decode(v, f"{where}/{k}", depth + 1) for k, v in node.items()}
        if len(node) != 1:
            raise self._fail(where, f"one tag alone in its object, got keys {sorted(node)[:5]}")
        tag, value = tags[0], node[tags[0]]
        if tag in ("$tensor", "$ndarray"):
            if not isinstance(value, str) or value not in self.tensors:
                raise self._fail(where, f"a tensor stored in the file, got {value!r}")
            t = self.tensors[value]
            return t if tag == "$tensor" else t.numpy()
        if tag == "$float":
            if value not in ("nan", "inf", "-inf"):
                raise self._fail(where, f"'nan', 'inf' or '-inf', got {value!r}")
            return float(value)
        if tag == "$tuple":
            if not isinstance(value, list):
                raise self._fail(where, "a list in $tuple")
            return tuple(self.decode(v, f"{where}/{i}", depth + 1) for i, v in enumerate(value))
        if tag == "$dict":
            if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
                raise self._fail(where, "a list of [key, value] pairs in $dict")
            out = {}
            for k, v in value:
                key = self.decode(k, f"{where}/key", depth + 1)
                if not isinstance(key, str | int | float | bool | tuple) and key is not None:
                    raise self._fail(where, f"a hashable key, got {type(key).__name__}")
                try:
                    out[key] = self.decode(v, f"{where}/{key}", depth + 1)
                except TypeError:  # a tuple key holding a list
                    raise self._fail(where, "a hashable key") from None
            return out
        raise self._fail(where, f"a known tag ($tuple, $dict, $float, $tensor, $ndarray), got {tag!r}")
