"""Branch networks: one small classifier per attribute on the shared fused feature vector.

Each branch is ``Linear(in, hidden) -> activation -> dropout -> Linear(hidden, num_values)`` (the paper's
"one fully connected layer followed by an output layer", §4.1.5) and returns logits: softmax or sigmoid
is the loss's and the predictor's business.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from vestis.errors import VestisError
from vestis.models.layers.conv import ActLayer

__all__ = ["OUTPUTS", "AttributeBranch", "AttributeHeads", "uses_softmax"]

# How logits become probabilities (``model.output``): ``kind`` follows each attribute's kind (softmax for
# single-label, sigmoid for multi-label); ``paper`` makes every attribute a multi-label sigmoid classifier trained
# with binary cross-entropy, as the multi-scale paper does (§4.1.5: "a multi-label classification problem").
OUTPUTS = ("kind", "paper")


def uses_softmax(kind: str, output: str = "kind") -> bool:
    """Whether an attribute of ``kind`` (``single``/``multi``) gets a softmax under ``output``; else a sigmoid."""
    if output not in OUTPUTS:
        raise VestisError(f"model.output: expected one of {list(OUTPUTS)}, got {output!r}")
    return kind == "single" and output == "kind"


class AttributeBranch(nn.Sequential):
    """One attribute's branch: hidden fully connected layer, activation, dropout, output layer.

    Args:
        in_features: width of the fused feature vector.
        hidden: width of the hidden layer.
        num_values: number of attribute values (output logits).
        dropout: dropout probability after the activation.
        act_layer: activation class.
    """

    def __init__(
        self, in_features: int, hidden: int, num_values: int, dropout: float = 0.0, act_layer: ActLayer = nn.ReLU
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, hidden)
        self.act = act_layer()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_values)


class AttributeHeads(nn.Module):
    """All branches, in attribute order; ``forward`` maps features to ``{attribute: logits (B, num_values)}``.

    Args:
        in_features: width of the fused feature vector.
        outputs: attribute name -> number of values, in output order.
        hidden: default hidden width of a branch.
        hidden_overrides: attribute name -> hidden width, for attributes that need more (or less) capacity.
        dropout: dropout probability inside each branch.
        act_layer: activation class inside each branch.
    """

    def __init__(
        self,
        in_features: int,
        outputs: Mapping[str, int],
        hidden: int = 512,
        hidden_overrides: Mapping[str, int] | None = None,
        dropout: float = 0.0,
        act_layer: ActLayer = nn.ReLU,
    ) -> None:
        super().__init__()
        overrides = dict(hidden_overrides or {})
        unknown = sorted(set(overrides) - set(outputs))
        if unknown:
            raise VestisError(
                f"model.branch_hidden_overrides: unknown attribute(s) {unknown}; the taxonomy has {list(outputs)}"
            )
        for name, width in {"": hidden, **overrides}.items():
            if width < 1:
                where = f"branch_hidden_overrides.{name}" if name else "branch_hidden"
                raise VestisError(f"model.{where}: expected a positive width, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise VestisError(f"model.dropout: expected a probability in [0, 1), got {dropout}")
        # a list, not a ModuleDict: attribute names may contain '.', which module names cannot
        self.names = tuple(outputs)
        self.branches = nn.ModuleList(
            AttributeBranch(in_features, overrides.get(name, hidden), n, dropout, act_layer)
            for name, n in outputs.items()
        )

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {name: branch(features) for name, branch in zip(self.names, self.branches, strict=True)}
