"""vestis: fashion product images to catalog attributes, and attribute-aware substitutes.

The Python API in three lines::

    import vestis

    predictor = vestis.Predictor.from_path("runs/a3/best.ckpt")  # or a "model.onnx" from `vestis export`
    predictor.predict("shirt.jpg")["colour"].value               # a path, a PIL image, an array, or a list

The heavy parts (torch) are imported on first use, so ``import vestis`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vestis.errors import VestisError

if TYPE_CHECKING:
    from vestis.inference.predictor import Predictor

__version__ = "0.1.0"
__all__ = ["Predictor", "VestisError", "__version__", "list_models", "load"]


def __getattr__(name: str) -> Any:
    # PEP 562: vestis.Predictor imports torch and the inference stack only when first used
    if name == "Predictor":
        from vestis.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'vestis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "Predictor"})


def list_models() -> list[str]:
    """Names of the registered models (the multi-scale paper's ``baseline``, ``a1``-``a4`` among them)."""
    from vestis.models import list_models as _list

    return _list()


def load(path: Any, *, map_location: Any = "cpu", trust: bool = False) -> Any:
    """Rebuild the trained ``torch.nn.Module`` from a checkpoint file alone (see :func:`vestis.train.checkpoint.load`).

    The module takes normalised float tensors ``(B, 3, H, W)`` and returns logits per attribute, for training,
    fine-tuning or inspection; calling it on a PIL image or a path raises a :class:`VestisError`. To predict
    attributes of images, use :class:`vestis.Predictor` (``vestis.Predictor.from_path(path).predict(image)``),
    which letterboxes, normalises and decodes as ``vestis predict`` does.

    Args:
        path: the checkpoint file.
        map_location: the device of the returned model.
        trust: also load an old pickle checkpoint; unpickling runs any code the file holds, so pass it only for
            a file from a source you trust.

    Returns:
        The model in eval mode, carrying ``.config``, ``.taxonomy`` and ``.thresholds``.
    """
    from vestis.train.checkpoint import load as _load

    return _load(path, map_location=map_location, trust=trust)
