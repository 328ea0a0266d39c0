"""MTL with RNN and visual attention (the paper's §3.2, Figure 1b, eqs. 1-7).

The backbone's last map gives ``n = h * w`` feature vectors ``f_i`` (width ``d``). A GRU decoder runs two steps;
before each, Bahdanau attention (eqs. 1-3) turns the previous hidden state into a context vector over the map::

    e_ti = V . tanh((W1 f_i + b1) + (W2 h_{t-1} + b2))        (1)
    a_ti = softmax_i(e_ti)                                    (2)
    c_t  = sum_i a_ti f_i                                     (3)
    h_1  = GRU(h_0, [c_1; E_o])   h_0 = 0                     (4)
    category logits   = U2c(U1c(h_1))                         (5)
    h_2  = GRU(h_1, [c_2; E_c])                               (6)
    attribute logits  = U2a(U1a(h_2))                         (7)

``E_o`` embeds the object type and ``E_c`` the category handed on (the prediction, or the truth with teacher
forcing in training). One GRU cell serves both steps, so ``E_o`` and ``E_c`` share a width. ``U1`` is followed by
a ReLU: two stacked linear maps without one would collapse into a single linear map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vestis.models.backbones.base import Backbone
from vestis.models.hierarchical._common import LabelEmbedding, shared_category
from vestis.models.hierarchical.base import STAGE2_MODELS, Stage2Model, check_sizes, resolve_backbone
from vestis.models.hierarchical.stl import TINY_BACKBONE

__all__ = ["BahdanauAttention", "RNNVAModel"]


class BahdanauAttention(nn.Module):
    """Additive attention of eqs. 1-3 over a set of feature vectors.

    Args:
        feature_dim: ``d``, the width of each ``f_i``.
        hidden_dim: ``s``, the width of the decoder state.
        attention_dim: ``u``, the width of the scoring space.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(feature_dim, attention_dim)  # W1, b1
        self.w2 = nn.Linear(hidden_dim, attention_dim)  # W2, b2
        self.v = nn.Linear(attention_dim, 1, bias=False)  # V

    def forward(self, feats: Tensor, hidden: Tensor, projected: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Context and weights for features (B, n, d) and a state (B, s).

        Args:
            feats: the ``f_i``, (B, n, d).
            hidden: ``h_{t-1}``, (B, s).
            projected: ``W1 f + b1`` (B, n, u) when the caller computed it once for every step.

        Returns:
            ``(c_t, a_t)``: (B, d) and (B, n), the weights summing to 1 over ``n``.
        """
        keys = self.w1(feats) if projected is None else projected  # (B, n, u)
        scores = self.v(torch.tanh(keys + self.w2(hidden).unsqueeze(1))).squeeze(-1)  # (B, n)
        weights = scores.softmax(dim=1)  # (B, n)
        context = torch.bmm(weights.unsqueeze(1), feats).squeeze(1)  # (B, d)
        return context, weights


def _two_dense(inp: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    # U1 then U2; the softmax / sigmoid of the paper lives in the loss and in decoding
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, out))


class RNNVAModel(Stage2Model):
    """The GRU + visual attention decoder on a vestis backbone.

    Args:
        backbone: the image encoder; its last selected map is attended.
        num_categories: garment categories.
        num_attributes: attributes.
        num_object_types: detector classes.
        embedding_dim: width of ``E_o`` and ``E_c``.
        hidden_dim: ``s``, the GRU state.
        attention_dim: ``u``.
        dense_dim: width of ``U1c`` and ``U1a``.
        teacher_forcing: in training, feed ``E_c`` of the true category where known (default) instead of the
            prediction; evaluation always feeds the prediction.
        dropout: dropout between ``U1`` and ``U2``.
        kind: the registered name.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_categories: int,
        num_attributes: int,
        num_object_types: int = 4,
        embedding_dim: int = 32,
        hidden_dim: int = 256,
        attention_dim: int = 128,
        dense_dim: int = 256,
        teacher_forcing: bool = True,
        dropout: float = 0.0,
        kind: str = "rnn_va",
    ) -> None:
        super().__init__(
            backbone,
            num_categories=num_categories,
            num_attributes=num_attributes,
            num_object_types=num_object_types,
            kind=kind,
        )
        check_sizes(
            embedding_dim=embedding_dim, hidden_dim=hidden_dim, attention_dim=attention_dim, dense_dim=dense_dim
        )
        d = self.feature_channels
        self.hidden_dim = hidden_dim
        self.teacher_forcing = teacher_forcing
        self.attention = BahdanauAttention(d, hidden_dim, attention_dim)
        self.gru = nn.GRUCell(d + embedding_dim, hidden_dim)
        self.object_type_embedding = LabelEmbedding(num_object_types, embedding_dim)  # E_o
        self.category_embedding = LabelEmbedding(num_categories, embedding_dim)  # E_c
        self.category_head = _two_dense(hidden_dim, dense_dim, num_categories, dropout)  # U1c, U2c
        self.attribute_head = _two_dense(hidden_dim, dense_dim, num_attributes, dropout)  # U1a, U2a

    def decode(
        self, fmap: Tensor, object_types: Tensor | None = None, categories: Tensor | None = None
    ) -> dict[str, Any]:
        """Eqs. 1-7 on a feature map (B, d, h, w); the outputs of :meth:`forward`."""
        b, _, h, w = fmap.shape
        feats = fmap.flatten(2).transpose(1, 2)  # (B, n, d), n = h * w in row-major order
        keys = self.attention.w1(feats)  # (B, n, u): the same for both steps
        h0 = feats.new_zeros(b, self.hidden_dim)
        c1, a1 = self.attention(feats, h0, keys)
        h1 = self.gru(torch.cat([c1, self.object_type_embedding(object_types, b)], dim=1), h0)  # (B, s)
        cat_logits = self.category_head(h1)  # (B, C)
        shared = shared_category(cat_logits, categories, self.teacher_forcing, self.training)
        c2, a2 = self.attention(feats, h1, keys)
        h2 = self.gru(torch.cat([c2, self.category_embedding(shared, b)], dim=1), h1)  # (B, s)
        attr_logits = self.attribute_head(h2)  # (B, A)
        attention = torch.stack([a1, a2], dim=1).reshape(b, 2, h, w)  # (B, T=2, h, w)
        return {"category": cat_logits, "attributes": attr_logits, "attention": attention, "shared_category": shared}

    def forward(
        self, images: Tensor, object_types: Tensor | None = None, categories: Tensor | None = None
    ) -> dict[str, Any]:
        """Logits, ``"attention"`` (B, 2, h, w) maps ``a_1`` and ``a_2`` (each sums to 1), ``"shared_category"``."""
        b = images.shape[0]
        self.check_labels(object_types, self.num_object_types, "object_types", b)
        self.check_labels(categories, self.num_categories, "categories", b)
        return self.decode(self.features(images), object_types, categories)


def _builder(name: str, default_backbone: str | None, defaults: dict[str, int], doc: str) -> None:
    def build(*, backbone: Backbone | str | None = None, **kwargs: Any) -> RNNVAModel:
        bb = resolve_backbone(backbone if backbone is not None else (default_backbone or "efficientnet_lite0"))
        return RNNVAModel(bb, kind=name, **{**defaults, **kwargs})

    build.__doc__ = doc
    STAGE2_MODELS.register(name, tiny=default_backbone == TINY_BACKBONE, description=doc)(build)


_builder("rnn_va", None, {}, "MTL w/ RNN+VA: GRU decoder with Bahdanau attention over the feature map (eqs. 1-7)")
_builder(
    "rnn_va_tiny",
    TINY_BACKBONE,
    {"embedding_dim": 8, "hidden_dim": 16, "attention_dim": 8, "dense_dim": 16},
    "MTL w/ RNN+VA on a tiny backbone with narrow decoder widths, for tests",
)
