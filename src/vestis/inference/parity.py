"""Parity checks: how closely one backend reproduces another on the same images.

An export is checked by running the written file (ONNX Runtime) and the checkpoint it came from (PyTorch) on
the same letterboxed images: :func:`compare_predictors` for classifiers, :func:`compare_embedders` for
embedding models. The reports are what :class:`~vestis.inference.exporter.ExportResult` carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vestis.errors import VestisError

if TYPE_CHECKING:
    from vestis.inference.embedder import Embedder
    from vestis.inference.predictor import Predictor

__all__ = ["EmbeddingParityReport", "ParityReport", "compare_embedders", "compare_predictors"]


@dataclass(frozen=True)
class ParityReport:
    """How closely a candidate backend reproduces a reference one on the same images.

    Attributes:
        num_images: images compared.
        max_abs_diff: attribute -> largest absolute difference of a probability.
        agreement: attribute -> fraction of decisions that agree: the argmax for single-label attributes,
            each value's ``score >= threshold`` decision for multi-label ones.
        heatmap_max_abs_diff: largest absolute difference of the raw heat-maps.
    """

    num_images: int
    max_abs_diff: dict[str, float]
    agreement: dict[str, float]
    heatmap_max_abs_diff: float

    @property
    def max_diff(self) -> float:
        """The largest probability difference over all attributes."""
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def min_agreement(self) -> float:
        """The lowest per-attribute agreement."""
        return min(self.agreement.values(), default=1.0)

    def summary(self) -> str:
        """One line: the largest difference and the lowest agreement."""
        return f"max |dp| = {self.max_diff:.2e}, lowest agreement = {self.min_agreement:.4f}"

    def table(self) -> str:
        """A plain-text table, one row per attribute."""
        width = max([9, *(len(k) for k in self.max_abs_diff)])
        lines = [f"{'attribute':<{width}}  max |dp|   agreement"]
        for k, d in self.max_abs_diff.items():
            lines.append(f"{k:<{width}}  {d:9.2e}  {self.agreement[k]:9.4f}")
        lines.append(f"{'heatmap':<{width}}  {self.heatmap_max_abs_diff:9.2e}")
        return "\n".join(lines)


@dataclass(frozen=True)
class EmbeddingParityReport:
    """How closely a candidate embedder reproduces a reference one on the same images.

    Attributes:
        num_images: images compared.
        max_abs_diff: attribute -> largest absolute difference of a sub-embedding component.
        min_cosine: attribute -> lowest cosine similarity between the two sub-embeddings of an image (1: same
            direction); a zero vector on either side counts as 0.
    """

    num_images: int
    max_abs_diff: dict[str, float]
    min_cosine: dict[str, float]

    @property
    def max_diff(self) -> float:
        """The largest component difference over all attributes."""
        return max(self.max_abs_diff.values(), default=0.0)

    @property
    def lowest_cosine(self) -> float:
        """The lowest per-attribute cosine similarity."""
        return min(self.min_cosine.values(), default=1.0)

    def summary(self) -> str:
        """One line: the largest difference and the lowest cosine similarity."""
        return f"max |de| = {self.max_diff:.2e}, lowest cosine = {self.lowest_cosine:.6f}"

    def table(self) -> str:
        """A plain-text table, one row per attribute."""
        width = max([9, *(len(k) for k in self.max_abs_diff)])
        lines = [f"{'attribute':<{width}}  max |de|   min cosine"]
        for k, d in self.max_abs_diff.items():
            lines.append(f"{k:<{width}}  {d:9.2e}  {self.min_cosine[k]:10.6f}")
        return "\n".join(lines)


def compare_predictors(reference: Predictor, candidate: Predictor, images: np.ndarray) -> ParityReport:
    """Run both predictors on ``images`` (``uint8`` ``(N, 3, S, S)``) and compare their raw outputs.

    Multi-label decisions use the reference's calibrated thresholds (or the default threshold).
    """
    ref_p, ref_h = reference.run(images)
    cand_p, cand_h = candidate.run(images)
    diff: dict[str, float] = {}
    agree: dict[str, float] = {}
    for a in reference.taxonomy:
        r, c = ref_p[a.name], cand_p[a.name]
        diff[a.name] = float(np.abs(r - c).max()) if r.size else 0.0
        if a.kind == "single":
            agree[a.name] = float((r.argmax(-1) == c.argmax(-1)).mean()) if len(r) else 1.0
        else:
            t = reference.thresholds_for(a.name)
            agree[a.name] = float(((r >= t) == (c >= t)).mean()) if r.size else 1.0
    heat = float(np.abs(ref_h - cand_h).max()) if ref_h.size else 0.0
    return ParityReport(len(images), diff, agree, heat)


def compare_embedders(reference: Embedder, candidate: Embedder, images: np.ndarray) -> EmbeddingParityReport:
    """Embed ``images`` (``uint8`` ``(N, 3, S, S)``) with both embedders and compare them per attribute.

    Raises:
        VestisError: the two embedders have different layouts.
    """
    if reference.layout != candidate.layout:
        raise VestisError(f"layouts differ: {reference.layout} against {candidate.layout}")
    ref = reference.embed_arrays(images)
    cand = candidate.embed_arrays(images)
    diff: dict[str, float] = {}
    cosine: dict[str, float] = {}
    for name, _ in reference.layout:
        r, c = ref[name].astype(np.float64), cand[name].astype(np.float64)
        diff[name] = float(np.abs(r - c).max()) if r.size else 0.0
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
        cos = np.where(norms > 0, (r * c).sum(1) / np.where(norms > 0, norms, 1.0), 0.0)
        cosine[name] = float(cos.min()) if len(cos) else 1.0
    return EmbeddingParityReport(len(images), diff, cosine)
