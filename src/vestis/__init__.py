"""vestis: fashion product images to catalog attributes, and attribute-aware substitutes.

The heavy parts (torch) are imported on first use, so ``import vestis`` stays fast.
"""

from __future__ import annotations

from typing import Any

from vestis.errors import VestisError

__version__ = "0.1.0"
__all__ = ["VestisError", "__version__", "list_models", "load"]


def list_models() -> list[str]:
    """Names of the registered models (the multi-scale paper's ``baseline``, ``a1``-``a4`` among them)."""
    from vestis.models import list_models as _list

    return _list()


def load(path: Any, *, map_location: Any = "cpu", trust: bool = False) -> Any:
    """Rebuild a trained model from a checkpoint file alone (see :func:`vestis.train.checkpoint.load`).

    Args:
        path: the checkpoint file.
        map_location: the device of the returned model.
        trust: also load an old pickle checkpoint; unpickling runs any code the file holds, so pass it only for
            a file from a source you trust.
    """
    from vestis.train.checkpoint import load as _load

    return _load(path, map_location=map_location, trust=trust)
