"""The guard at the models' entry: tensors in, with a pointer to :class:`vestis.Predictor` for anything else."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vestis.errors import VestisError

__all__ = ["EMBED_HINT", "PREDICT_HINT", "require_tensor"]


PREDICT_HINT = "to predict from images (PIL, paths, arrays) use vestis.Predictor.from_path(checkpoint).predict(image)"
EMBED_HINT = "to embed PIL images use vestis.inference.Embedder.from_path(checkpoint).embed([image])"


def require_tensor(images: Any, model: object, hint: str = PREDICT_HINT) -> None:
    """Refuse a model input that is not a tensor (a PIL image, a path, an array) with a message saying what to use.

    Without it such a call fails deep inside the first convolution with an unrelated ``TypeError``.

    Args:
        images: what the model was called on.
        model: the model, named in the message.
        hint: what to use instead.

    Raises:
        VestisError: ``images`` is not a ``torch.Tensor``.
    """
    if not isinstance(images, Tensor):
        raise VestisError(
            f"{type(model).__name__}: expected a normalised float tensor (B, 3, H, W), got {type(images).__name__}; "
            f"{hint}"
        )
