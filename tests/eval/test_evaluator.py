"""The evaluator on a hand-computed case, on random data against the metric functions, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.eval.evaluator import attribute_table, evaluate_predictions, format_table
from vestis.eval.metrics import (
    accuracy,
    calibrate_thresholds,
    micro_f1,
    one_hot,
    recall_at_k,
    recall_at_k_mmfashion,
    topk_accuracy,
)


def _taxonomy() -> Taxonomy:
    return Taxonomy.from_dict(
        {
            "attributes": [
                {"name": "neck", "kind": "single", "values": ["round", "v", "collar", "boat"], "roi": "small"},
                {"name": "pattern", "kind": "multi", "values": ["stripes", "dots", "floral", "checks"], "roi": "large"},
                {"name": "fit", "kind": "single", "values": ["slim", "loose"]},
            ]
        }
    )


def _hand_case():
    probs = {
        "neck": np.array(
            [
                [0.5, 0.3, 0.1, 0.1],  # true round: predicts {round, v}
                [0.2, 0.4, 0.3, 0.1],  # true collar: predicts {v, collar}; argmax v
                [0.1, 0.1, 0.6, 0.2],  # true collar: predicts {collar}
                [0.4, 0.3, 0.2, 0.1],  # unlabelled
            ]
        ),
        "pattern": np.array(
            [
                [0.9, 0.2, 0.35, 0.1],  # true {stripes}: predicts {stripes, floral}
                [0.1, 0.8, 0.6, 0.05],  # true {dots, floral}: predicts both
                [0.9, 0.9, 0.9, 0.9],  # unlabelled
                [0.2, 0.25, 0.1, 0.4],  # true {stripes, checks}: predicts {checks}
            ]
        ),
        "fit": np.array([[0.6, 0.4]] * 4),
    }
    targets = {
        "neck": np.array([0, 2, 2, -1]),
        "pattern": np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=np.float32),
        "fit": np.array([-1, -1, -1, -1]),
    }
    masks = {
        "neck": np.array([True, True, True, False]),
        "pattern": np.array([True, True, False, True]),
        "fit": np.zeros(4, bool),  # no labelled row at all
    }
    return probs, targets, masks


def test_hand_case_exact_values() -> None:
    probs, targets, masks = _hand_case()
    m = evaluate_predictions(_taxonomy(), probs, targets, masks, threshold=0.3)
    assert m["threshold"] == 0.3 and m["num_items"] == 4
    assert list(m["attributes"]) == ["neck", "pattern", "fit"]

    neck = m["attributes"]["neck"]
    assert (neck["kind"], neck["roi"], neck["num_values"], neck["n"]) == ("single", "small", 4, 3)
    assert neck["micro_f1"] == pytest.approx(0.75)  # TP 3, FP 2, FN 0
    assert neck["macro_f1"] == pytest.approx(2 / 3)  # round 1, v 0, collar 1; boat never occurs
    assert neck["per_value"]["round"] == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1, "average_precision": 1.0
    }  # fmt: skip
    assert neck["per_value"]["v"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "average_precision": None
    }  # fmt: skip
    # collar scores 0.1 (no), 0.3 (yes), 0.6 (yes): both positives ranked first
    assert neck["per_value"]["collar"]["average_precision"] == 1.0
    assert neck["mean_average_precision"] == 1.0  # over round and collar; v and boat have no positive
    # top-1 confidences 0.5 (right), 0.4 (wrong), 0.6 (right), each alone in its bin of 1/15
    assert neck["ece"] == pytest.approx((0.5 + 0.4 + 0.4) / 3)
    assert neck["accuracy"] == pytest.approx(2 / 3)
    assert neck["top1"] == pytest.approx(2 / 3)
    assert neck["top3"] == 1.0
    assert "top5" not in neck  # 5 >= K = 4
    assert neck["average_per_class_accuracy"] == pytest.approx(0.75)  # (1 + 0.5) / 2
    assert neck["weighted_f1"] == pytest.approx((1 * 1.0 + 2 * 2 / 3) / 3)  # F1 round 1, collar 2/3 (1 of 2, no FP)
    assert neck["per_class_accuracy"] == {
        "round": {"accuracy": 1.0, "support": 1},
        "v": {"accuracy": None, "support": 0},
        "collar": {"accuracy": 0.5, "support": 2},
        "boat": {"accuracy": None, "support": 0},
    }
    assert "recall_at_1" not in neck

    pattern = m["attributes"]["pattern"]
    assert (pattern["kind"], pattern["roi"], pattern["n"]) == ("multi", "large", 3)
    assert pattern["micro_f1"] == pytest.approx(0.8)  # TP 4, FP 1, FN 1
    assert pattern["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3 + 1) / 4)
    assert pattern["per_value"]["stripes"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2, "average_precision": 1.0}
    )
    assert pattern["per_value"]["floral"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1, "average_precision": 1.0}
    )
    assert "ece" not in pattern
    assert pattern["recall_at_1"] == pytest.approx(0.6)
    assert pattern["recall_at_3"] == 1.0
    assert pattern["mmfashion_recall_at_1"] == pytest.approx(0.625)
    assert pattern["mmfashion_recall_at_3"] == 1.0
    assert "recall_at_5" not in pattern and "accuracy" not in pattern

    fit = m["attributes"]["fit"]
    assert fit["n"] == 0
    assert fit["micro_f1"] is None and fit["accuracy"] is None and fit["top1"] is None
    assert fit["per_value"]["slim"] == {
        "precision": None, "recall": None, "f1": None, "support": 0, "average_precision": None
    }  # fmt: skip
    assert fit["ece"] is None and fit["mean_average_precision"] is None

    assert m["summary"] == pytest.approx(
        {
            "num_attributes": 3,
            "mean_micro_f1": 0.775,  # fit has no labelled row and is left out
            "mean_micro_f1_small_roi": 0.75,
            "mean_micro_f1_large_roi": 0.8,
            "mean_macro_f1": (2 / 3 + 5 / 6) / 2,
            "mean_accuracy": 2 / 3,
            "mean_weighted_f1": 7 / 9,
            "mean_average_per_class_accuracy": 0.75,
            "mean_average_precision": 1.0,
            "mean_kind_score": (2 / 3 + 0.8) / 2,  # neck's accuracy, pattern's micro-F1
            "mean_ece": 1.3 / 3,
        }
    )
    json.dumps(m, allow_nan=False)  # plain JSON, no nan


def test_hand_case_with_calibrated_thresholds() -> None:
    probs, targets, masks = _hand_case()
    m = evaluate_predictions(_taxonomy(), probs, targets, masks, thresholds={"pattern": np.full(4, 0.5)})
    cal = m["attributes"]["pattern"]["calibrated"]
    # at 0.5: row 0 predicts {stripes}, row 1 {dots, floral}, row 3 nothing: TP 3, FP 0, FN 2
    assert cal["micro_f1"] == pytest.approx(0.75)
    assert cal["thresholds"] == {"stripes": 0.5, "dots": 0.5, "floral": 0.5, "checks": 0.5}
    assert cal["per_value"]["checks"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert "calibrated" not in m["attributes"]["neck"]
    assert m["attributes"]["pattern"]["micro_f1"] == pytest.approx(0.8)  # the paper's score is unchanged
    assert m["summary"]["mean_micro_f1_calibrated"] == pytest.approx(0.75)


def test_random_case_agrees_with_metric_functions() -> None:
    rng = np.random.default_rng(0)
    tax = Taxonomy.from_dict(
        {
            "attributes": [
                {"name": "category", "kind": "single", "values": [f"c{i}" for i in range(8)]},
                {"name": "tags", "kind": "multi", "values": [f"t{i}" for i in range(12)], "roi": "small"},
            ]
        }
    )
    n = 64
    logits = rng.normal(size=(n, 8))
    probs = {"category": np.exp(logits) / np.exp(logits).sum(1, keepdims=True), "tags": rng.random((n, 12))}
    mask_c, mask_t = rng.random(n) > 0.1, rng.random(n) > 0.3
    labels = np.where(mask_c, rng.integers(0, 8, n), -1)
    tags = (rng.random((n, 12)) < 0.25).astype(np.float32)
    targets, masks = {"category": labels, "tags": tags}, {"category": mask_c, "tags": mask_t}
    thr = {"tags": calibrate_thresholds(probs["tags"], tags, mask_t)}
    m = evaluate_predictions(tax, probs, targets, masks, thresholds=thr)
    c, t = m["attributes"]["category"], m["attributes"]["tags"]
    assert c["micro_f1"] == pytest.approx(micro_f1(probs["category"], one_hot(labels, 8), 0.3, mask_c))
    assert c["accuracy"] == pytest.approx(accuracy(probs["category"], labels, mask_c))
    for k in (1, 3, 5):
        assert c[f"top{k}"] == pytest.approx(topk_accuracy(probs["category"], labels, k, mask_c))
        assert t[f"recall_at_{k}"] == pytest.approx(recall_at_k(probs["tags"], tags, k, mask_t))
        assert t[f"mmfashion_recall_at_{k}"] == pytest.approx(recall_at_k_mmfashion(probs["tags"], tags, k, mask_t))
    assert sum(v["support"] for v in c["per_class_accuracy"].values()) == mask_c.sum() == c["n"]
    assert t["calibrated"]["micro_f1"] == pytest.approx(micro_f1(probs["tags"], tags, thr["tags"], mask_t))
    assert t["calibrated"]["micro_f1"] >= t["micro_f1"] - 1e-12  # calibrated on the same rows
    s = m["summary"]
    assert s["mean_micro_f1"] == pytest.approx((c["micro_f1"] + t["micro_f1"]) / 2)
    assert s["mean_micro_f1_small_roi"] == pytest.approx(t["micro_f1"])
    assert s["mean_micro_f1_large_roi"] is None
    from sklearn.metrics import average_precision_score

    for j in range(12):
        want = average_precision_score(tags[mask_t, j], probs["tags"][mask_t, j])
        assert t["per_value"][f"t{j}"]["average_precision"] == pytest.approx(want)
    assert s["mean_kind_score"] == pytest.approx((c["accuracy"] + t["micro_f1"]) / 2)
    json.dumps(m, allow_nan=False)


def test_format_table() -> None:
    probs, targets, masks = _hand_case()
    m = evaluate_predictions(_taxonomy(), probs, targets, masks)
    text = format_table(m)
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "attribute"
    assert "micro-F1@0.3" in lines[0]
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines[2:5]}
    # kind, roi, n, micro-F1, macro-F1, accuracy, weighted F1, avg class acc, top-3 / R@3, top-5 / R@5, mAP, ECE
    neck = ["single", "small", "3", "0.750", "0.667", "0.667", "0.778", "0.750", "1.000", "–", "1.000", "0.433"]
    assert rows["neck"] == neck
    assert rows["pattern"] == ["multi", "large", "3", "0.800", "0.833", "–", "–", "–", "1.000", "–", "1.000", "–"]
    assert rows["fit"] == ["single", "–", "0", "–", "–", "–", "–", "–", "–", "–", "–", "–"]
    assert "mean micro-F1: 0.775 (small ROI 0.750, large ROI 0.800)" in text
    head, table_rows = attribute_table(m)
    assert len(head) == 13 and [r[0] for r in table_rows] == ["neck", "pattern", "fit"]
    assert "mean kind score (accuracy or micro-F1): 0.733" in text

    # a reference evaluation adds its kind score and mAP per attribute and a summary line
    ref = evaluate_predictions(_taxonomy(), {k: np.full_like(v, 0.25) for k, v in probs.items()}, targets, masks)
    head, table_rows = attribute_table({**m, "reference": ref})
    assert head[-2:] == ["reference acc / F1", "reference mAP"]
    # all tied: argmax is round, right once in 3; a constant score has AP = prevalence: (1/3 + 2/3) / 2
    assert table_rows[0][-2:] == ["0.333", "0.500"]
    assert "majority-value reference: mean kind score" in format_table({**m, "reference": ref})

    cal = evaluate_predictions(_taxonomy(), probs, targets, masks, thresholds={"pattern": np.full(4, 0.5)})
    text = format_table(cal)
    assert "micro-F1 calibrated" in text.splitlines()[0]
    assert "mean micro-F1 with calibrated thresholds: 0.750" in text


def test_input_errors() -> None:
    tax = _taxonomy()
    probs, targets, masks = _hand_case()
    with pytest.raises(VestisError, match="unknown attribute"):
        evaluate_predictions(tax, {**probs, "colour": probs["fit"]}, targets, masks)
    with pytest.raises(VestisError, match="masks: no entry for attribute 'neck'"):
        evaluate_predictions(tax, probs, targets, {k: v for k, v in masks.items() if k != "neck"})
    with pytest.raises(VestisError, match=r"probs\['neck'\]: expected shape \(N, 4\)"):
        evaluate_predictions(tax, {**probs, "neck": probs["neck"][:, :3]}, targets, masks)
    with pytest.raises(VestisError, match="3 rows, but other attributes have 4"):
        evaluate_predictions(tax, {**probs, "pattern": probs["pattern"][:3]}, targets, masks)
    with pytest.raises(VestisError, match=r"targets\['neck'\]: expected int class indices"):
        evaluate_predictions(tax, probs, {**targets, "neck": one_hot(targets["neck"], 4)}, masks)
    with pytest.raises(VestisError, match=r"thresholds\['pattern'\]: expected 4 thresholds"):
        evaluate_predictions(tax, probs, targets, masks, thresholds={"pattern": [0.5, 0.5]})
    with pytest.raises(VestisError, match="row 3 is labelled"):
        evaluate_predictions(tax, probs, targets, {**masks, "neck": np.ones(4, bool)})
    with pytest.raises(VestisError, match="at least one attribute"):
        evaluate_predictions(tax, {}, targets, masks)
    # a subset of the taxonomy is fine
    only = evaluate_predictions(tax, {"neck": probs["neck"]}, targets, masks)
    assert list(only["attributes"]) == ["neck"] and only["summary"]["mean_micro_f1_large_roi"] is None


def test_average_precision_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import average_precision_score

    tax = Taxonomy.from_dict({"attributes": [{"name": "tags", "kind": "multi", "values": [f"t{i}" for i in range(6)]}]})
    rng = np.random.default_rng(5)
    probs = np.round(rng.random((80, 6)), 1)  # one decimal: many tied scores
    tags = (rng.random((80, 6)) < 0.3).astype(np.float32)
    mask = rng.random(80) > 0.1
    m = evaluate_predictions(tax, {"tags": probs}, {"tags": tags}, {"tags": mask})
    for j in range(6):
        want = average_precision_score(tags[mask, j], probs[mask, j])
        assert m["attributes"]["tags"]["per_value"][f"t{j}"]["average_precision"] == pytest.approx(want, abs=1e-12)
