"""Which metric picks best.ckpt, and which decision thresholds it carries.

The validation probabilities are scripted (``predict_loader`` patched in :mod:`vestis.train.tasks`), so every
metric below is computed by hand; the model and the loop around it are real.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vestis.train.tasks as tasks
from vestis.config import load_config
from vestis.data.taxonomy import load_taxonomy
from vestis.errors import VestisError
from vestis.eval.evaluator import evaluate_predictions
from vestis.inference.predictor import Predictor
from vestis.io import atomic_write_bytes
from vestis.train.checkpoint import encode_checkpoint, load, load_checkpoint
from vestis.train.loop import train

QUIET = {"progress": False, "log": lambda *_: None}
SLEEVE = ["short", "long", "sleeveless"]
# validation: sleeve short x5, long x4, sleeveless x3 (majority "short": 5/12); occasion casual on 10 rows,
# formal on 2 (a value too rare to calibrate a threshold on)
VAL_SLEEVE = ["short", "long", "sleeveless", "short", "long", "short", "sleeveless", "long", "short", "sleeveless"]
VAL_SLEEVE += ["long", "short"]
VAL_OCCASION = ["casual"] * 10 + ["formal"] * 2
TRAIN_SLEEVE = VAL_SLEEVE[::-1]
TRAIN_OCCASION = ["casual", "formal"] * 6

TAXONOMY = """\
name: selection
attributes:
- name: sleeve
  kind: single
  values: [short, long, sleeveless]
- name: occasion
  kind: multi
  values: [casual, formal]
"""


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("selection")
    (root / "images").mkdir()
    (root / "taxonomy.yaml").write_text(TAXONOMY)
    rng = np.random.default_rng(0)
    rows = []
    for split, sleeves, occasions in (("train", TRAIN_SLEEVE, TRAIN_OCCASION), ("val", VAL_SLEEVE, VAL_OCCASION)):
        for sleeve, occasion in zip(sleeves, occasions, strict=True):
            i = len(rows)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
            rows.append({"id": f"r{i}", "image": f"images/{i}.png", "split": split, "sleeve": sleeve,
                         "occasion": occasion})  # fmt: skip
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv"


def _cfg(*extra: str):
    return load_config("tiny", ["data.image_size=32", "data.augment.enabled=false", "train.batch_size=4", *extra])


def constant(labels: np.ndarray) -> np.ndarray:
    """Always the majority value, hardly surer than a uniform guess: every value clears the 0.3 threshold."""
    return np.tile([0.34, 0.33, 0.33], (len(labels), 1))


def better(labels: np.ndarray) -> np.ndarray:
    """Right on every other row; when right it also lets a second value over 0.3, when wrong it is sure."""
    out = np.zeros((len(labels), 3))
    for i, y in enumerate(labels):
        if i % 2 == 0:
            out[i, y], out[i, (y + 1) % 3], out[i, (y + 2) % 3] = 0.6, 0.35, 0.05
        else:
            out[i] = 0.1
            out[i, (y + 1) % 3] = 0.8
    return out


def occasion(targets: np.ndarray) -> np.ndarray:
    """casual: 0.9 on its positives, 0.1 elsewhere; formal: 0.25 on its positives (under 0.3), 0.05 elsewhere."""
    return np.where(targets[:, :1] == 1, 0.9, 0.1) * [1, 0] + np.where(targets[:, 1:] == 1, 0.25, 0.05) * [0, 1]


# Hand computation on the 12 validation rows (threshold 0.3):
#   constant: sleeve predicts all 3 values on every row: TP 12, FP 24, FN 0 -> micro-F1 24/48 = 0.5; accuracy 5/12
#   better:   sleeve right rows TP 1 FP 1 (x6), wrong rows FP 1 FN 1 (x6) -> micro-F1 12/30 = 0.4; accuracy 6/12
#   occasion (both): casual TP 10, formal FN 2 -> micro-F1 20/22
OCC_F1 = 20 / 22
KIND = {"constant": (5 / 12 + OCC_F1) / 2, "better": (0.5 + OCC_F1) / 2}
MICRO = {"constant": (0.5 + OCC_F1) / 2, "better": (0.4 + OCC_F1) / 2}


@pytest.fixture
def scripted(monkeypatch):
    """Validation epoch ``e`` sees the sleeve predictor ``script[e]`` (the last one once the script runs out)."""

    def use(script: Sequence) -> None:
        calls = []

        def predict_loader(model, loader, data_cfg, taxonomy, device, **kwargs):
            enc = loader.dataset.encoded
            sleeve = script[min(len(calls), len(script) - 1)]
            calls.append(sleeve.__name__)
            return {"sleeve": sleeve(enc.targets["sleeve"]), "occasion": occasion(enc.targets["occasion"])}

        monkeypatch.setattr(tasks, "predict_loader", predict_loader)

    return use


def test_hand_case_scores(catalog) -> None:
    """The numbers the selection tests rely on, from the evaluator itself."""
    taxonomy = load_taxonomy(catalog.parent / "taxonomy.yaml")
    labels = np.array([SLEEVE.index(s) for s in VAL_SLEEVE])
    occ = np.array([[o == "casual", o == "formal"] for o in VAL_OCCASION], dtype=np.float32)
    masks = {"sleeve": np.ones(12, bool), "occasion": np.ones(12, bool)}
    for name, fn in (("constant", constant), ("better", better)):
        probs = {"sleeve": fn(labels), "occasion": occasion(occ)}
        m = evaluate_predictions(taxonomy, probs, {"sleeve": labels, "occasion": occ}, masks)
        assert m["attributes"]["sleeve"]["accuracy"] == pytest.approx(5 / 12 if name == "constant" else 0.5)
        assert m["summary"]["mean_micro_f1"] == pytest.approx(MICRO[name])
        assert tasks.mean_kind_score(m["attributes"]) == pytest.approx(KIND[name])
        # the evaluator's own summary (what reports show) uses the same definition
        assert m["summary"]["mean_kind_score"] == pytest.approx(KIND[name])
    # the constant guess wins on micro-F1, loses on the kind-fitting score
    assert MICRO["constant"] > MICRO["better"] and KIND["constant"] < KIND["better"]


def test_mean_kind_score_skips_undefined_attributes() -> None:
    attrs = {
        "a": {"kind": "single", "accuracy": 0.5, "micro_f1": 0.9},
        "b": {"kind": "multi", "accuracy": None, "micro_f1": 0.7},
        "c": {"kind": "single", "accuracy": None, "micro_f1": None},
    }
    assert tasks.mean_kind_score(attrs) == pytest.approx(0.6)
    assert tasks.mean_kind_score({"c": attrs["c"]}) is None


def _selected(ckpt: Path) -> dict:
    return load(ckpt).metrics["selection"]


def test_auto_does_not_choose_the_constant_predictor(catalog, tmp_path, scripted) -> None:
    scripted([better, constant])  # epoch 2's constant guess has the higher micro-F1
    result = train(_cfg("train.epochs=2"), catalog, tmp_path / "auto", **QUIET)
    assert result.metric == "mean_kind_score" and result.best_epoch == 1
    sel = _selected(result.best)
    assert sel == {"metric": "mean_kind_score", "value": pytest.approx(KIND["better"]), "epoch": 1, "mode": "max"}
    hist = [h["val"] for h in result.history]
    assert [h["mean_kind_score"] for h in hist] == pytest.approx([KIND["better"], KIND["constant"]])
    assert [h["mean_micro_f1"] for h in hist] == pytest.approx([MICRO["better"], MICRO["constant"]])
    # the stored summary agrees with the mean over its own per-attribute results
    m = load(result.best).metrics
    a = m["attributes"]
    assert m["summary"]["mean_kind_score"] == pytest.approx((a["sleeve"]["accuracy"] + a["occasion"]["micro_f1"]) / 2)


@pytest.mark.parametrize(
    ("overrides", "metric"),
    [
        (["train.selection_metric=mean_micro_f1"], "mean_micro_f1"),
        # the older name wins over the new one, so old configs keep their meaning
        (["train.selection_metric=mean_accuracy", "train.early_stop_metric=mean_micro_f1"], "mean_micro_f1"),
    ],
)
def test_micro_f1_selection_chooses_the_constant_predictor(catalog, tmp_path, scripted, overrides, metric) -> None:
    scripted([better, constant])
    result = train(_cfg("train.epochs=2", *overrides), catalog, tmp_path / "micro", **QUIET)
    assert result.metric == metric and result.best_epoch == 2
    assert _selected(result.best) == {"metric": metric, "value": pytest.approx(MICRO["constant"]), "epoch": 2,
                                      "mode": "max"}  # fmt: skip


def test_min_mode_keeps_the_smallest(catalog, tmp_path, scripted) -> None:
    scripted([constant, better])
    result = train(
        _cfg("train.epochs=2", "train.selection_metric=mean_accuracy", "train.early_stop_mode=min"),
        catalog, tmp_path / "min", **QUIET,
    )  # fmt: skip
    assert _selected(result.best) == {"metric": "mean_accuracy", "value": pytest.approx(5 / 12), "epoch": 1,
                                      "mode": "min"}  # fmt: skip


def test_tiny_validation_split_falls_back_to_the_default_threshold(catalog, tmp_path, scripted) -> None:
    scripted([better])
    result = train(_cfg("train.epochs=1"), catalog, tmp_path / "fallback", **QUIET)
    state = load_checkpoint(result.best)
    # casual has 10 validation positives (the default minimum): calibrated midway between 0.9 and 0.1;
    # formal has 2: it keeps train.threshold; no sleeve value reaches 10 positives
    assert state["thresholds"] == {"sleeve": [0.3, 0.3, 0.3], "occasion": [pytest.approx(0.5), 0.3]}
    choice = state["metrics"]["threshold_choice"]
    assert choice["occasion"] == {
        "casual": {"threshold": pytest.approx(0.5), "source": "calibrated", "positives": 10},
        "formal": {"threshold": 0.3, "source": "default", "positives": 2},
    }
    assert choice["sleeve"] == {
        v: {"threshold": 0.3, "source": "default", "positives": n} for v, n in zip(SLEEVE, (5, 4, 3), strict=True)
    }
    # the predictor decides formal at the default threshold
    np.testing.assert_allclose(Predictor.from_path(result.best).thresholds_for("occasion"), [0.5, 0.3])

    # with a minimum of 2 formal is calibrated: midway between its positives' 0.25 and the negatives' 0.05
    result = train(_cfg("train.epochs=1", "train.calibration_min_positives=2"), catalog, tmp_path / "two", **QUIET)
    state = load_checkpoint(result.best)
    assert state["thresholds"]["occasion"] == pytest.approx([0.5, 0.15])
    assert state["metrics"]["threshold_choice"]["occasion"]["formal"]["source"] == "calibrated"
    assert {c["source"] for c in state["metrics"]["threshold_choice"]["sleeve"].values()} == {"calibrated"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.selection_metric=accuracy", r"train\.selection_metric: 'accuracy' is not one of \[.*'mean_kind_score'"),
        ("train.early_stop_metric=nope", r"train\.early_stop_metric: 'nope' is not one of"),
        ("train.early_stop_mode=largest", "train.early_stop_mode: expected max or min"),
        ("train.calibration_min_positives=0", r"train\.calibration_min_positives: expected an integer >= 1"),
    ],
)
def test_bad_selection_settings_fail_before_training(catalog, tmp_path, override, message) -> None:
    with pytest.raises(VestisError, match=message):
        train(_cfg(override), catalog, tmp_path / "bad", **QUIET)
    assert not (tmp_path / "bad" / "last.ckpt").exists()  # refused before the first epoch


def test_resume_keeps_the_selection_metric(catalog, tmp_path, scripted) -> None:
    scripted([better])
    run = tmp_path / "run"
    train(_cfg("train.epochs=1"), catalog, run, **QUIET)
    with pytest.raises(VestisError, match=r"chose best\.ckpt on mean_kind_score, this configuration on mean_micro_f1"):
        train(_cfg("train.epochs=2", "train.selection_metric=mean_micro_f1"), catalog, run, resume=True, **QUIET)
    # another spelling of the same metric resumes
    result = train(_cfg("train.epochs=2", "train.early_stop_metric=mean_kind_score"), catalog, run, resume=True,
                   **QUIET)  # fmt: skip
    assert result.epochs_run == 1 and result.best_epoch == 1  # epoch 2 (the same scores) does not beat epoch 1


def test_resume_of_a_run_from_before_selection_metric(catalog, tmp_path, scripted) -> None:
    scripted([better])
    run = tmp_path / "old"
    train(_cfg("train.epochs=1"), catalog, run, **QUIET)
    state = load_checkpoint(run / "last.ckpt")  # rewritten as such a run left it: none of the new settings
    del state["config"]["train"]["selection_metric"], state["config"]["train"]["calibration_min_positives"]
    del state["train_state"]["selection_metric"], state["train_state"]["best_epoch"]
    atomic_write_bytes(run / "last.ckpt", encode_checkpoint(state))
    # that run calibrated every value with a positive
    with pytest.raises(VestisError, match=r"train\.calibration_min_positives: 1 -> 10"):
        train(_cfg("train.epochs=2"), catalog, run, resume=True, **QUIET)
    # and chose best.ckpt on the micro-F1
    with pytest.raises(VestisError, match=r"chose best.ckpt on mean_micro_f1.*train\.selection_metric=mean_micro_f1"):
        train(_cfg("train.epochs=2", "train.calibration_min_positives=1"), catalog, run, resume=True, **QUIET)
    old = ["train.selection_metric=mean_micro_f1", "train.calibration_min_positives=1"]
    result = train(_cfg("train.epochs=2", *old), catalog, run, resume=True, **QUIET)
    assert result.epochs_run == 1 and result.metric == "mean_micro_f1"
