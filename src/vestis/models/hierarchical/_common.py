"""Small pieces the stage-2 models share: label embeddings with an "unknown" row, the category to share."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LabelEmbedding", "shared_category"]


class LabelEmbedding(nn.Module):
    """Learnable vectors for ``num`` labels plus one for "unknown" (index ``-1`` or ``None``).

    A crop whose object type the detector did not give (or a category that is missing) still gets a
    vector, learned like the others, instead of being refused.

    Args:
        num: number of labels.
        dim: embedding width.
    """

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.num = num
        self.table = nn.Embedding(num + 1, dim)

    def forward(self, labels: Tensor | None, batch: int) -> Tensor:
        """(B, dim) vectors for (B,) indices in ``[-1, num)``; ``None`` means all unknown."""
        if labels is None:
            labels = torch.full((batch,), -1, dtype=torch.long, device=self.table.weight.device)
        idx = torch.where(labels < 0, torch.full_like(labels, self.num), labels).long()
        return self.table(idx)


def shared_category(logits: Tensor, categories: Tensor | None, teacher_forcing: bool, training: bool) -> Tensor:
    """The category index handed to the attribute stage: the prediction, or the truth when teacher-forcing.

    The argmax is not differentiable, so the attribute loss reaches the category head only through the shared
    trunk, as in label sharing: the next stage receives a *label*, not a distribution. With teacher forcing (in
    training only) rows whose true category is known get it instead; rows with ``-1`` keep the prediction.

    Args:
        logits: (B, C) category logits.
        categories: (B,) true categories with ``-1`` for missing, or ``None``.
        teacher_forcing: whether to use the truth in training.
        training: the module's mode.

    Returns:
        (B,) long indices.
    """
    pred = logits.detach().argmax(dim=1)
    if teacher_forcing and training and categories is not None:
        return torch.where(categories >= 0, categories.long(), pred)
    return pred
