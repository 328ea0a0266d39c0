"""COCO detection metrics (pycocotools) on hand-made cases with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from vestis.errors import VestisError

pytest.importorskip("pycocotools")

from vestis.eval.detection import coco_detection_metrics

TWO = [{"boxes": [[0, 0, 100, 100], [200, 200, 300, 300]], "labels": [0, 0]}]


def test_perfect_predictions_score_one() -> None:
    gt = [*TWO, {"boxes": [[10, 10, 60, 90]], "labels": [1]}]
    pred = [
        {
            "boxes": torch.tensor([[0.0, 0, 100, 100], [200, 200, 300, 300]]),
            "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([0, 0]),
        },
        {"boxes": [[10, 10, 60, 90]], "scores": [0.7], "labels": [1]},
    ]
    m = coco_detection_metrics(pred, gt, ["upper-body", "lower-body"])
    assert m["map"] == pytest.approx(1.0) and m["ap50"] == pytest.approx(1.0) and m["ap75"] == pytest.approx(1.0)
    assert m["ar100"] == pytest.approx(1.0)
    assert m["per_class_ap"] == pytest.approx({"upper-body": 1.0, "lower-body": 1.0})


def test_one_of_two_found() -> None:
    m = coco_detection_metrics([{"boxes": [[0, 0, 100, 100]], "scores": [0.9], "labels": [0]}], TWO, ["a", "b"])
    assert m["ar100"] == pytest.approx(0.5)
    # precision 1 up to recall 0.5, none beyond: 51 of COCO's 101 recall points
    assert m["map"] == pytest.approx(51 / 101)
    assert m["per_class_ap"]["a"] == pytest.approx(51 / 101)
    assert math.isnan(m["per_class_ap"]["b"])  # no ground truth of class b


def test_shifted_box_counts_at_ap50_not_ap75() -> None:
    gt = [{"boxes": [[0, 0, 100, 100]], "labels": [0]}]
    pred = [{"boxes": [[24, 0, 124, 100]], "scores": [0.9], "labels": [0]}]  # IoU 76 / 124 = 0.613
    m = coco_detection_metrics(pred, gt, ["a"])
    assert m["ap50"] == pytest.approx(1.0) and m["ap75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.3)  # a hit at IoU 0.50, 0.55 and 0.60 of the ten thresholds
    assert m["ar100"] == pytest.approx(0.3)


def test_wrong_class_and_no_predictions_score_zero() -> None:
    wrong = coco_detection_metrics([{"boxes": [[0, 0, 100, 100]], "scores": [0.9], "labels": [1]}], TWO[:1], ["a", "b"])
    assert wrong["per_class_ap"]["a"] == 0.0 and wrong["ar100"] == 0.0
    empty = coco_detection_metrics([{"boxes": [], "scores": [], "labels": []}], TWO, ["a"])
    assert empty["map"] == 0.0 and empty["ar100"] == 0.0


def test_bad_inputs_are_vestis_errors() -> None:
    with pytest.raises(VestisError, match="2 predictions but 1 images"):
        coco_detection_metrics([{}, {}], TWO, ["a"])
    with pytest.raises(VestisError, match="labels outside"):
        coco_detection_metrics([{"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [5]}], TWO, ["a"])
    with pytest.raises(VestisError, match="one row per box"):
        coco_detection_metrics([{"boxes": [[0, 0, 1, 1]], "scores": [], "labels": [0]}], TWO, ["a"])
    with pytest.raises(VestisError, match="finite"):
        coco_detection_metrics([{"boxes": [[0, 0, math.nan, 1]], "scores": [1.0], "labels": [0]}], TWO, ["a"])
