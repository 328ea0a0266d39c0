"""An embedding model (csn, csn_fixed, triplet, datrnet) behind the service's predictor stages.

``vestis serve EMBEDDING_MODEL --index INDEX`` serves substitute search with the index's
:class:`~vestis.inference.embedder.Embedder`, and answers ``POST /v1/attributes`` only with what the model really
has, the same way the index predicted its items (:mod:`vestis.retrieval.catalog_embed`):

* an attribute with a recognition column (a CSN with ``model.columns=multi|single``): the column's probabilities
  (softmax for a single-label attribute, sigmoid otherwise; multi-label values at or above
  :data:`~vestis.retrieval.catalog_embed.MULTI_THRESHOLD`), exactly as for a classifier;
* any other attribute: the value of the most similar prototype of the index, and as ``scores`` the cosine
  similarity of the sub-embedding to each value's prototype (values without one are left out). These are not
  probabilities, and each result says so with ``"source": "prototype"``.

An embedding model has no class activation to show, so there is no ``POST /v1/heatmap`` for it: the route is
absent from the app and from the OpenAPI, and ``GET /v1/taxonomy`` says ``"heatmap": false`` (the page tells the
user why its heat-map switch is off).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from vestis.models.heads import uses_softmax
from vestis.retrieval.catalog_embed import MULTI_THRESHOLD

if TYPE_CHECKING:
    from vestis.inference.embedder import Embedder
    from vestis.retrieval.catalog_index import CatalogIndex

__all__ = ["COLUMNS", "PROTOTYPE", "EmbeddingAttributes", "embedding_model_name"]

COLUMNS = "columns"  # the attribute's scores are the probabilities of a recognition column
PROTOTYPE = "prototype"  # the value is the nearest prototype's; the scores are cosine similarities


class EmbeddingAttributes:
    """The predictor the service runs for an embedding model (see the module docstring).

    Attributes:
        taxonomy: the model's attributes.
        preprocessing: the embedder's (``image_size``, ``pad_value``, ...).
        thresholds: always empty (multi-label columns use the index's fixed threshold).
        sources: attribute -> :data:`COLUMNS` or :data:`PROTOTYPE`.
        embedding: the embedding model's name (``csn``, ``triplet``, ...).
    """

    def __init__(self, embedder: Embedder, index: CatalogIndex) -> None:
        self.embedder = embedder
        self.taxonomy = embedder.taxonomy
        self.preprocessing: dict[str, Any] = dict(embedder.preprocessing)
        self.thresholds: dict[str, list[float]] = {}
        self.embedding = str(embedder.info.get("model", "")) or "embedding"
        self.fingerprint: str | None = embedder.fingerprint
        self._prototypes = index.prototypes
        net = getattr(embedder.module, "model", None)
        self._output = str(getattr(net, "output", "kind"))
        side = embedder.image_size
        pad = int(self.preprocessing["pad_value"])
        # which attributes have a column is a property of the network: one blank image tells
        _, logits = self._forward(np.full((1, 3, side, side), pad, np.uint8))
        self.sources = {a: COLUMNS if a in logits else PROTOTYPE for a in self.taxonomy.names}

    @classmethod
    def from_index(cls, index: CatalogIndex, device: str | None = None) -> EmbeddingAttributes:
        """The predictor of the model ``index`` was built with (the file checked against its sha256)."""
        return cls(index.embedder(device), index)

    @property
    def backend(self) -> str:
        return self.embedder.backend

    @property
    def device(self) -> str:
        return self.embedder.device

    # --- stages ---------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> ``uint8`` ``(B, 3, S, S)``, letterboxed as for the index."""
        return self.embedder.preprocess(images)

    def _forward(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """``(vectors (B, D), logits {attr: (B, K)})``; ONNX and column-less models have no logits."""
        module = self.embedder.module
        net = getattr(module, "model", None)
        if module is None or net is None:
            return self.embedder.embed_concat(batch), {}
        arr = np.ascontiguousarray(batch)
        with torch.inference_mode():
            x = torch.from_numpy(arr).to(module.mean.device)
            # EmbeddingInferenceModule's normalisation, so that the vectors are the Embedder's (and the index's)
            out = net((x.float().div(255.0) - module.mean) / module.std)
            vectors = net.concat(out["embeddings"]).float().cpu().numpy()  # (B, D)
        return vectors, {a: z.float().cpu() for a, z in (out.get("logits") or {}).items()}

    def predict_arrays(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, 3, S, S)`` -> ``{attribute: (B, K)}``: column probabilities, else prototype similarities.

        A value without a prototype has NaN similarity (it can never be the nearest).
        """
        vectors, logits = self._forward(batch)
        parts = self.embedder.split(vectors)  # {attr: (B, d_t)}
        out: dict[str, np.ndarray] = {}
        for a in self.taxonomy:
            if a.name in logits:
                z = logits[a.name]
                out[a.name] = (z.softmax(dim=1) if uses_softmax(a.kind, self._output) else z.sigmoid()).numpy()
                continue
            sims = np.full((len(vectors), len(a.values)), np.nan, np.float32)  # (B, K)
            codes = self._prototypes.values.get(a.name)
            if codes is not None and len(codes):
                sims[:, np.asarray(codes, np.int64)] = parts[a.name] @ self._prototypes.vectors[a.name].T
            out[a.name] = sims
        return out

    def decode(self, probs: Mapping[str, np.ndarray], calibrated: bool = True) -> list[dict[str, dict[str, Any]]]:
        """Per-image results (the classifier's format, plus ``source`` on nearest-prototype attributes).

        ``calibrated`` is accepted for the service's sake; an embedding model has no calibrated thresholds.
        An attribute none of whose values has a prototype is left out: nothing predicts it.
        """
        tax = self.taxonomy
        n = len(next(iter(probs.values()))) if probs else 0
        results: list[dict[str, dict[str, Any]]] = []
        for i in range(n):
            res = {a.name: got for a in tax if (got := self._one(a, probs[a.name][i])) is not None}
            cat_attr = tax.category_attribute
            category = res.get(cat_attr, {}).get("value") if cat_attr else None
            if category is None and cat_attr and cat_attr in res:  # a multi-label category: its first value
                category = next(iter(res[cat_attr].get("values") or []), None)
            results.append({name: r for name, r in res.items() if tax[name].applies(category)})
        return results

    def _one(self, attr: Any, p: np.ndarray) -> dict[str, Any] | None:
        if self.sources[attr.name] == COLUMNS:
            scores = {v: float(s) for v, s in zip(attr.values, p, strict=True)}
            if attr.kind == "single":
                j = int(np.argmax(p))
                return {"value": attr.values[j], "score": float(p[j]), "scores": scores}
            order = np.argsort(-p, kind="stable")
            return {"values": [attr.values[j] for j in order if p[j] >= MULTI_THRESHOLD], "scores": scores}
        known = np.flatnonzero(~np.isnan(p))
        if known.size == 0:
            return None
        j = int(known[np.argmax(p[known])])  # the first of equal similarities, as the index's argmax
        scores = {attr.values[int(c)]: float(p[c]) for c in known}
        best = {"score": float(p[j]), "scores": scores, "source": PROTOTYPE}
        # a multi-label attribute gets the nearest prototype's value alone, as the index stores it
        return {"value": attr.values[j], **best} if attr.kind == "single" else {"values": [attr.values[j]], **best}


def embedding_model_name(model: str | os.PathLike[str], *, trust: bool = False) -> str | None:
    """The embedding model's name (``csn``, ...) when ``model`` is one, else ``None`` (a classifier, or no model).

    A checkpoint says so in its ``embedding`` entry or by its model's registered task; an ONNX file by its
    ``vestis.task`` metadata. A file that is missing or not a model gives ``None``: the Predictor names the problem.

    Raises:
        VestisError: a checkpoint that cannot be read.
    """
    model = Path(model)
    if not model.is_file():
        return None
    if model.suffix.lower() == ".onnx":
        import onnx

        try:
            meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
        except Exception:  # not an ONNX file (onnx raises several types): the Predictor says what is wrong
            return None
        if meta.get("vestis.task") != "embedding":
            return None
        try:
            return str(json.loads(meta.get("vestis.embedding") or "{}").get("model") or "embedding")
        except (ValueError, AttributeError):
            return "embedding"
    import vestis.models  # noqa: F401 (registers the models)
    from vestis.registry import MODELS
    from vestis.train.checkpoint import load_checkpoint

    state = load_checkpoint(model, trust=trust)
    if state.get("embedding"):
        return str(state["embedding"].get("model") or "embedding")
    name = ((state.get("config") or {}).get("model") or {}).get("name")
    is_embedding = isinstance(name, str) and name in MODELS and MODELS.meta(name).get("task") == "embedding"
    return name if is_embedding else None
