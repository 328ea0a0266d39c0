"""Report sections by hand: confident mistakes, meta_ breakdowns, selection and threshold text, PR-curve notes,
and a gallery image over the pixel cap left out with a note."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vestis.data.taxonomy import Taxonomy
from vestis.eval.evaluator import evaluate_predictions
from vestis.eval.metrics import one_hot
from vestis.eval.report import write_report
from vestis.eval.report_figures import pr_curves
from vestis.eval.report_sections import confident_mistakes, meta_breakdowns, selection_text, threshold_rows

TAX = Taxonomy.from_dict(
    {
        "attributes": [
            {"name": "sleeve", "kind": "single", "values": ["short", "long", "none"]},
            {"name": "tags", "kind": "multi", "values": ["a", "b", "c"]},
        ]
    }
)
PROBS = {
    "sleeve": np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]]),
    "tags": np.array([[0.9, 0.1, 0.2], [0.2, 0.8, 0.1], [0.1, 0.1, 0.95], [0.6, 0.6, 0.6]]),
}
TARGETS = {
    "sleeve": np.array([1, 1, 0, 0]),  # row 0 wrong at 0.9, row 2 wrong at 0.6, row 3 right
    "tags": np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=np.float32),
}
MASKS = {"sleeve": np.array([True, True, True, True]), "tags": np.array([True, True, True, False])}


def test_confident_mistakes_by_hand() -> None:
    got = confident_mistakes(TAX["sleeve"], PROBS["sleeve"], TARGETS["sleeve"], MASKS["sleeve"], 0.3)
    assert [(m.row, m.confidence, m.true, m.predicted) for m in got] == [
        (0, 0.9, "long", "short"),
        (2, 0.6, "short", "none"),
    ]
    assert len(confident_mistakes(TAX["sleeve"], PROBS["sleeve"], TARGETS["sleeve"], MASKS["sleeve"], 0.3, 1)) == 1
    # multi: row 2's false "c" at 0.95 beats row 1's false "b" at 0.8; row 0 is right, row 3 unlabelled
    got = confident_mistakes(TAX["tags"], PROBS["tags"], TARGETS["tags"], MASKS["tags"], 0.3)
    assert [(m.row, m.confidence, m.true, m.predicted) for m in got] == [
        (2, 0.95, "nothing", "c"),
        (1, 0.8, "nothing", "b"),
    ]


def test_meta_breakdowns_match_subset_evaluations() -> None:
    meta = {"shop": ["n", "s", "n", None]}
    got = meta_breakdowns(TAX, PROBS, TARGETS, MASKS, meta, 0.3)["shop"]
    assert list(got) == ["n", "s", "(none)"] and [r["n"] for r in got.values()] == [2, 1, 1]
    rows = np.array([0, 2])
    want = evaluate_predictions(TAX, {k: v[rows] for k, v in PROBS.items()}, {k: v[rows] for k, v in TARGETS.items()},
                                {k: v[rows] for k, v in MASKS.items()})  # fmt: skip
    assert got["n"]["mean_kind_score"] == pytest.approx(want["summary"]["mean_kind_score"])
    assert got["n"]["mean_accuracy"] == 0.0  # both rows wrong
    many = meta_breakdowns(TAX, PROBS, TARGETS, MASKS, {"id": [f"x{i}" for i in range(4)]}, 0.3)["id"]
    assert len(many) == 4  # under the cap: every value kept


def test_selection_and_threshold_text() -> None:
    assert "not recorded" in selection_text({})
    sel = {"selection": {"metric": "mean_micro_f1", "value": 0.5, "epoch": 3, "mode": "max"}}
    assert selection_text(sel) == (
        "Selection metric: mean_micro_f1 (highest wins); "
        "the checkpoint is epoch 3 with validation mean_micro_f1 = 0.500."
    )
    m = evaluate_predictions(TAX, PROBS, TARGETS, MASKS, thresholds={"tags": np.array([0.3, 0.85, 0.3])})
    assert threshold_rows(m) is None
    m["threshold_choice"] = {
        "tags": {"a": {"threshold": 0.3, "source": "default", "positives": 2},
                 "b": {"threshold": 0.85, "source": "calibrated", "positives": 12}},
        "sleeve": {"short": {"threshold": 0.3, "source": "default", "positives": 1}},  # single-label: not shown
    }  # fmt: skip
    head, rows = threshold_rows(m)
    assert head[-2:] == ["F1 @0.3", "F1 @ used threshold"]
    # b: at 0.3 row 1 predicts b (false), at 0.85 nothing: F1 0 either way, no positive
    assert rows == [["tags", "a", "0.300", "default", "2", "1.000", "1.000"],
                    ["tags", "b", "0.850", "calibrated", "12", "0.000", "0.000"]]  # fmt: skip


def test_pr_curves_note_above_ten_values() -> None:
    tax = Taxonomy.from_dict({"attributes": [{"name": "c", "kind": "single", "values": [f"v{i}" for i in range(12)]}]})
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 12
    probs = rng.dirichlet(np.ones(12), 24)
    png, note = pr_curves(tax["c"], probs, one_hot(labels, 12), np.ones(24, bool), 0.3)
    assert png.startswith(b"\x89PNG") and note == "the 10 values with the most positives of 12 are drawn"
    _, note = pr_curves(tax["c"], probs, one_hot(labels % 5, 12), np.ones(24, bool), 0.3)
    assert note is None


def test_gallery_respects_the_pixel_cap(tmp_path) -> None:
    paths = []
    for i in range(4):
        size = (400, 400) if i == 0 else (40, 40)  # row 0, the surest mistake, is over the cap
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", size, (10, 20, 30)).save(paths[-1])
    m = evaluate_predictions(TAX, PROBS, TARGETS, MASKS)
    written = write_report(m, tmp_path / "rep", probs=PROBS, targets=TARGETS, masks=MASKS, taxonomy=TAX,
                           images=paths, max_pixels=10_000)  # fmt: skip
    assert "figures/errors/sleeve_2.jpg" in written and "figures/errors/sleeve_1.jpg" not in written
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "sleeve: a mistake's image could not be shown" in md and "over the cap of 10,000" in md
    assert "Selection metric: not recorded" in md and "Threshold choice: not recorded." in md


def test_training_curves_read_what_history_holds() -> None:
    from vestis.eval.report_figures import _series, training_curves

    history = [
        {"epoch": 1, "train": {"loss": 2.0}, "val": {"mean_kind_score": 0.3}},
        {"epoch": 2, "train": {"loss": 1.5}},  # an epoch without validation rows
        {"epoch": 3, "train": {"loss": 1.0}, "val": {"mean_kind_score": None}},
    ]
    assert _series(history, "train", "loss") == ([1, 2, 3], [2.0, 1.5, 1.0])
    assert _series(history, "val", "mean_kind_score") == ([1], [0.3])
    assert training_curves(history, "mean_kind_score").startswith(b"\x89PNG")
    assert training_curves([{"epoch": 1}], "mean_kind_score") is None
