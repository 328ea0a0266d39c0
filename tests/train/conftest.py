"""Hostile and old-format checkpoint files (also imported by tests/cli)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vestis.train.checkpoint import FORMAT, load_checkpoint


class Payload:
    """Unpickling this creates ``marker``: the file a crafted checkpoint's code would leave behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def crafted_checkpoint(path: Path, marker: Path, *, raw: bool = False) -> Path:
    """A file that looks like an old vestis checkpoint (``torch.save`` zip, or a bare pickle with ``raw``)
    and runs code when unpickled; it holds no weights, so even a trusted load ends in an error."""
    state = {"format": FORMAT, "version": 1, "model": {}, "config": {}, "taxonomy": {}, "x": Payload(marker)}
    if raw:
        path.write_bytes(pickle.dumps(state, protocol=4))
    else:
        torch.save(state, path)
    return path


def legacy_checkpoint(src: Path, dst: Path) -> Path:
    """``src`` re-written in the old format: ``torch.save`` of the same dict, version 1."""
    state = load_checkpoint(src)
    torch.save({**state, "version": 1}, dst)
    return dst
