"""`vestis train --task detect`: the detector in the one training loop, on COCO boxes."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import vestis
import vestis.cli
from vestis.config import load_config
from vestis.data.detection import OBJECT_TYPES, read_coco_detection
from vestis.data.synthetic import generate_catalog
from vestis.errors import VestisError
from vestis.inference.predictor import Predictor
from vestis.train.detection_task import DetectionTask, _hflip, prepare_detection_data
from vestis.train.loop import train

QUIET = {"progress": False, "log": lambda *_: None}
TINY = ["model.name=centernet_tiny", "model.backbone=mobilenetv3_tiny", "data.image_size=64", "data.pad_value=0"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_catalog(root, n=40, size=48, seed=3, scenes=True)
    return root / "scenes" / "annotations.json"


def _cfg(*extra):
    return load_config("tiny", [*TINY, *extra])


def test_train_writes_a_detector_checkpoint_selected_on_map(scenes, tmp_path):
    result = train(_cfg("train.epochs=2", "data.val_fraction=0.3"), scenes, tmp_path / "run", **QUIET)
    assert result.metric == "mAP" and len(result.history) == 2
    summary = result.history[-1]["val"]
    assert set(summary) == {"mAP", "AP50", "AP75", "AR@100"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in summary.values())
    model = vestis.load(result.last)
    assert model.classes == OBJECT_TYPES and model.taxonomy.names == ["object_type"]
    assert model.config.data.image_size == 64 and not model.training
    x = torch.zeros(1, 3, 64, 64)
    det = model(x)[0]
    assert set(det) == {"boxes", "scores", "labels"} and det["boxes"].shape[1] == 4
    # the checkpoint rebuilds the trained weights exactly
    torch.testing.assert_close(model.heatmap.out.weight, result.model.heatmap.out.weight)
    with pytest.raises(VestisError, match="garment detector"):  # not an attribute classifier
        Predictor.from_path(result.best)


def test_validation_scores_perfect_boxes_as_map_1(scenes):
    cfg = _cfg("data.val_fraction=0.5").resolved()
    train_ds, val_ds, taxonomy = prepare_detection_data(cfg, scenes, log=lambda *_: None)
    task = DetectionTask(cfg, taxonomy, train_ds, val_ds)

    class Oracle(nn.Module):  # detects exactly the letterboxed ground truth of the validation images, in order
        def __init__(self):
            super().__init__()
            self.seen = 0

        def forward(self, x):
            out = []
            for _ in range(len(x)):
                _, t = val_ds[self.seen]
                self.seen += 1
                n = len(t["labels"])
                out.append({"boxes": t["boxes"], "scores": torch.linspace(1.0, 0.5, n), "labels": t["labels"]})
            return out

    loader = torch.utils.data.DataLoader(val_ds, batch_size=3, collate_fn=task.collate)
    m = task.validate(Oracle(), None, loader, None, torch.device("cpu")).metrics
    assert m["summary"]["mAP"] == pytest.approx(1.0) and m["summary"]["AR@100"] == pytest.approx(1.0)


def test_hflip_mirrors_boxes_with_the_image():
    torch.manual_seed(0)
    img = torch.zeros(1, 3, 4, 10)
    img[0, :, :, 1] = 1.0  # a bright column at x = 1
    boxes = [torch.tensor([[1.0, 0.0, 3.0, 2.0]])]
    out, flipped = _hflip(img, boxes, p=1.0)
    assert out[0, 0, 0, 8] == 1.0 and out[0, 0, 0, 1] == 0.0  # x = 1 -> 10 - 1 - 1
    torch.testing.assert_close(flipped[0], torch.tensor([[7.0, 0.0, 9.0, 2.0]]))  # [10 - 3, 0, 10 - 1, 2]
    same, kept = _hflip(img, boxes, p=0.0)
    assert same is img and kept is boxes


def test_validation_json_and_balancing(scenes, tmp_path):
    images, _ = read_coco_detection(scenes)
    doc = json.loads(scenes.read_text())
    val_path = scenes.parent / "val.json"
    keep = {im["id"] for im in doc["images"][:3]}
    val_doc = {**doc, "images": [im for im in doc["images"] if im["id"] in keep],
               "annotations": [a for a in doc["annotations"] if a["image_id"] in keep]}  # fmt: skip
    val_path.write_text(json.dumps(val_doc))
    cfg = _cfg(f"data.val_data={val_path}").resolved()
    lines = []
    train_ds, val_ds, _ = prepare_detection_data(cfg, scenes, log=lines.append)
    assert len(train_ds) == len(images) and len(val_ds) == 3
    assert "MeanIR" in lines[0]
    cfg = _cfg("data.balance=downsample").resolved()
    lines = []
    train_ds, _, _ = prepare_detection_data(cfg, scenes, log=lines.append)
    counts = np.zeros(len(OBJECT_TYPES), int)
    for im in train_ds.images:
        counts[sorted(set(im.labels.tolist()))] += 1
    before = np.zeros(len(OBJECT_TYPES), int)
    for im in images:
        before[sorted(set(im.labels.tolist()))] += 1
    assert len(train_ds) < len(images) and counts.max() <= before[before > 0].min() + len(OBJECT_TYPES)
    assert "downsample" in lines[1]
    cfg = _cfg("data.balance=upsample").resolved()
    lines = []
    train_ds, _, _ = prepare_detection_data(cfg, scenes, log=lines.append)
    assert len(train_ds) > len(images) and "upsample" in lines[1]


@pytest.mark.parametrize(
    ("override", "message"),
    [("data.image_size=48", "multiple of 32"), ("data.pad_value=255", "pad_value"), ("data.balance=up", "balance")],
)
def test_bad_settings_are_refused(scenes, override, message):
    with pytest.raises(VestisError, match=message):
        prepare_detection_data(_cfg(override).resolved(), scenes, log=lambda *_: None)


def test_cli_task_detect_and_a_mismatched_task(scenes, tmp_path):
    runner = CliRunner()
    args = ["train", "--task", "detect", "--data", str(scenes), "--config", "tiny", "--out", str(tmp_path / "r"),
            "--epochs", "1", *TINY]  # fmt: skip
    res = runner.invoke(vestis.cli.app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "best.ckpt").is_file() and "mAP" in res.output
    res = runner.invoke(vestis.cli.app, [*args[:7], "--out", str(tmp_path / "r2"), "model.name=a3"])
    assert res.exit_code != 0 and "classification model" in res.output
