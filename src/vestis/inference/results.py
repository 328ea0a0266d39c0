"""Typed prediction results: what :meth:`vestis.Predictor.predict` returns for one image.

A :class:`Prediction` maps attribute names to a :class:`SingleLabelResult` (the argmax ``value``, its ``score`` and
every value's ``scores``) or a :class:`MultiLabelResult` (the chosen ``values``, every value's ``scores`` and the
``thresholds`` each decision was taken at); attributes that do not apply to the predicted category are absent::

    pred = predictor.predict("shirt.jpg")
    pred["colour"].value, pred["colour"].score     # "blue", 0.91
    pred["occasion"].values                        # ["casual"]
    pred["occasion"].thresholds["formal"]          # 0.3: formal scored below it
    pred.to_dict()                                 # the JSON-able dict of Predictor.decode

The results also read as that dict (``pred["colour"]["value"]``, ``pred["occasion"].get("values")``, ``==`` with
a dict), so code written against the dict results of earlier versions keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AttributeResult", "MultiLabelResult", "Prediction", "SingleLabelResult"]


class _ReadsAsDict:
    """Read access by the keys of ``to_dict()``: the dict results these types replace."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def keys(self) -> list[str]:
        return list(self.to_dict())

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _ReadsAsDict):
            return type(self) is type(other) and self.to_dict() == other.to_dict()
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable contents, as the dicts they stand for


@dataclass(frozen=True, eq=False)
class SingleLabelResult(_ReadsAsDict):
    """A single-label (softmax) attribute.

    Attributes:
        value: the value with the highest score.
        score: its score.
        scores: value -> score, for every value in taxonomy order.
    """

    value: str
    score: float
    scores: dict[str, float]

    kind = "single"

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "score", "scores"}``."""
        return {"value": self.value, "score": self.score, "scores": dict(self.scores)}


@dataclass(frozen=True, eq=False)
class MultiLabelResult(_ReadsAsDict):
    """A multi-label (sigmoid) attribute: one yes/no decision per value.

    Attributes:
        values: the values whose score reaches their threshold, highest score first.
        scores: value -> score, for every value in taxonomy order.
        thresholds: value -> the threshold its decision used (calibrated or the default), for every value.
    """

    values: list[str]
    scores: dict[str, float]
    thresholds: dict[str, float]

    kind = "multi"

    def to_dict(self) -> dict[str, Any]:
        """``{"values", "scores", "thresholds"}``."""
        return {"values": list(self.values), "scores": dict(self.scores), "thresholds": dict(self.thresholds)}


AttributeResult = SingleLabelResult | MultiLabelResult


@dataclass(frozen=True, eq=False)
class Prediction(Mapping[str, AttributeResult]):
    """The attributes predicted for one image, by name, in taxonomy order.

    Attributes:
        attributes: attribute -> result; attributes that do not apply to the predicted category are absent.
    """

    attributes: dict[str, AttributeResult]

    @classmethod
    def from_dict(cls, result: Mapping[str, Mapping[str, Any]]) -> Prediction:
        """The typed form of one :meth:`~vestis.inference.predictor.Predictor.decode` result."""
        out: dict[str, AttributeResult] = {}
        for name, r in result.items():
            if "values" in r:
                out[name] = MultiLabelResult(list(r["values"]), dict(r["scores"]), dict(r["thresholds"]))
            else:
                out[name] = SingleLabelResult(r["value"], float(r["score"]), dict(r["scores"]))
        return cls(out)

    def __getitem__(self, name: str) -> AttributeResult:
        return self.attributes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Attribute -> the result's dict: plain JSON-able types, as :meth:`Predictor.decode` gives them."""
        return {name: r.to_dict() for name, r in self.attributes.items()}
