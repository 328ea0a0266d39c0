"""How a vestis taxonomy maps onto a stage-2 model's two outputs, and back.

A stage-2 model has one softmax category output (C values) and one sigmoid attribute output (A values). A vestis
taxonomy names its ``category_attribute``; every other attribute is flattened, in taxonomy order and value by
value, into the A outputs (``("sleeve", "long")``, ...), so a single-label attribute is a block of sigmoid outputs
of which the largest is its prediction and a multi-label one keeps every value above the threshold. The object
type of a crop (the detector's class, an input of the label-sharing models) comes from the ``object_types`` list.

``allowed`` is the (C, A) matrix of :func:`~vestis.models.hierarchical.allowed_matrix` built from each attribute's
``applies_to``: the attributes taxonomy suppression keeps for each category.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.models.hierarchical.consistency import allowed_matrix

__all__ = ["OBJECT_TYPE_META", "Stage2Layout"]

OBJECT_TYPE_META = "object_type"  # the manifest metadata column (meta_object_type) holding a crop's detector class


@dataclass(frozen=True)
class Stage2Layout:
    """The category and the flattened attributes of a stage-2 model.

    Attributes:
        category: the taxonomy's category attribute.
        categories: its values, in logit order.
        attributes: ``(attribute, value)`` of each of the A attribute outputs, in order.
        blocks: attribute -> the slice of the A outputs holding its values.
        kinds: attribute -> ``single`` or ``multi``.
        object_types: the detector classes the model's object-type input indexes.
        allowed: (C, A) booleans: whether attribute output ``j`` applies to category ``i``.
    """

    category: str
    categories: tuple[str, ...]
    attributes: tuple[tuple[str, str], ...]
    blocks: dict[str, slice]
    kinds: dict[str, str]
    object_types: tuple[str, ...]
    allowed: np.ndarray = field(repr=False)

    @classmethod
    def from_taxonomy(cls, taxonomy: Taxonomy, object_types: Sequence[str]) -> Stage2Layout:
        """The layout of ``taxonomy`` (its ``category_attribute`` must be a single-label attribute).

        Raises:
            VestisError: no category attribute, a multi-label one, no other attribute, or no object type.
        """
        name = taxonomy.category_attribute
        if not name:
            raise VestisError("stage-2 model: the taxonomy needs a category_attribute (the garment category)")
        cat = taxonomy[name]
        if cat.kind != "single":
            raise VestisError(f"stage-2 model: the category attribute {name!r} must be single-label")
        if not object_types:
            raise VestisError("stage-2 model: model.object_types is empty")
        flat: list[tuple[str, str]] = []
        blocks: dict[str, slice] = {}
        kinds: dict[str, str] = {}
        allowed: dict[str, list[str]] = {c: [] for c in cat.values}
        for a in taxonomy:
            if a.name == name:
                continue
            start = len(flat)
            flat.extend((a.name, v) for v in a.values)
            blocks[a.name], kinds[a.name] = slice(start, len(flat)), a.kind
            for c in cat.values:
                if a.applies(c):
                    allowed[c].extend(f"{a.name}={v}" for v in a.values)
        if not flat:
            raise VestisError(f"stage-2 model: the taxonomy has no attribute besides the category {name!r}")
        matrix = allowed_matrix(allowed, cat.values, [f"{a}={v}" for a, v in flat])
        return cls(name, tuple(cat.values), tuple(flat), blocks, kinds, tuple(object_types), matrix)

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    def object_type_index(self, name: str | None) -> int:
        """The index of an object type name; ``-1`` (unknown) for ``None``, an empty or an unknown name."""
        return self.object_types.index(name) if name in self.object_types else -1

    def flat_targets(self, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Tensor:
        """(B, A) attribute targets in {0, 1, -1} from a batch's per-attribute targets and masks.

        A single-label attribute's index becomes a one-hot block; a missing label (mask false) makes its whole
        block ``-1`` (ignored by :func:`~vestis.losses.hierarchical.masked_attribute_bce`).
        """
        parts = []
        for attr, block in self.blocks.items():
            t, m = targets[attr], masks[attr].bool()
            k = block.stop - block.start
            if self.kinds[attr] == "single":
                t = torch.nn.functional.one_hot(t.long().clamp(0, k - 1), k).float()
            parts.append(torch.where(m[:, None], t.float(), torch.full_like(t.float(), -1.0)))
        return torch.cat(parts, dim=1)

    def category_targets(self, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> Tensor:
        """(B,) category indices, ``-1`` where the category is missing."""
        return torch.where(masks[self.category].bool(), targets[self.category].long(), -1)

    def split(self, attribute_probs: np.ndarray) -> dict[str, np.ndarray]:
        """attribute -> (N, K) columns of the flat (N, A) attribute probabilities."""
        return {attr: attribute_probs[:, block] for attr, block in self.blocks.items()}
