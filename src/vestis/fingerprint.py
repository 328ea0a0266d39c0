"""Model fingerprints: one short string that names exactly which weights, taxonomy and preprocessing made a result.

A fingerprint is ``"sha256:" + hex`` of a SHA-256 over, in order,

1. every tensor of the state dict, sorted by name: its name, dtype, shape and raw bytes;
2. the taxonomy as canonical JSON (sorted keys, no spaces, UTF-8);
3. the preprocessing dict as canonical JSON.

Each piece is length-prefixed, so no two different inputs can concatenate to the same bytes. The same model
gives the same fingerprint on any machine and in any process (tensor bytes are little-endian on every platform
PyTorch supports); a changed weight, a renamed taxonomy value or another image size gives a different one.
Checkpoints store it (:mod:`vestis.train.checkpoint`), ONNX exports carry it as ``vestis.fingerprint``, and
predictions, service responses and metrics name it, so a result can be traced to the model that made it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import torch

from vestis.data.taxonomy import Taxonomy

__all__ = ["PREFIX", "canonical_json", "fingerprint"]

PREFIX = "sha256:"


def canonical_json(obj: Any) -> bytes:
    """``obj`` as JSON with sorted keys and no whitespace, UTF-8: equal trees give equal bytes.

    Raises:
        TypeError: ``obj`` holds something JSON cannot carry.
        ValueError: ``obj`` holds a NaN or an infinity (JSON has no spelling for them that all readers share).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _feed(h: Any, data: bytes) -> None:
    h.update(struct.pack("<Q", len(data)))  # the length first: pieces cannot run into each other
    h.update(data)


def fingerprint(
    state_dict: Mapping[str, torch.Tensor],
    taxonomy: Taxonomy | Mapping[str, Any],
    preprocessing: Mapping[str, Any],
) -> str:
    """The ``sha256:...`` fingerprint of a model (see the module docstring).

    Args:
        state_dict: parameter and buffer name -> tensor (``model.state_dict()`` or a checkpoint's ``model``).
        taxonomy: the taxonomy, or its ``to_dict()`` form as stored in a checkpoint.
        preprocessing: the input pipeline settings (a checkpoint's ``preprocessing``).
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        _feed(h, name.encode())
        _feed(h, str(t.dtype).removeprefix("torch.").encode())
        _feed(h, canonical_json(list(t.shape)))
        # a byte view works for every dtype, bfloat16 and 0-d tensors included, which .numpy() does not
        _feed(h, t.reshape(-1).view(torch.uint8).numpy().tobytes())
    tax = taxonomy.to_dict() if isinstance(taxonomy, Taxonomy) else dict(taxonomy)
    _feed(h, canonical_json(tax))
    _feed(h, canonical_json(dict(preprocessing)))
    return PREFIX + h.hexdigest()
