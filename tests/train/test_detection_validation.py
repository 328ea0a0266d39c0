"""The detector's validation scores the boxes `vestis detect --gt` would report (clipped, padding-only dropped)."""

import pytest
import torch
from torch import nn

from vestis.config import load_config
from vestis.data.synthetic import generate_catalog
from vestis.train.detection_task import DetectionTask, prepare_detection_data

TINY = ["model.name=centernet_tiny", "model.backbone=mobilenetv3_tiny", "data.image_size=64", "data.pad_value=0"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_catalog(root, n=12, size=48, seed=3, scenes=True)
    return root / "scenes" / "annotations.json"


def test_validation_clips_and_drops_boxes_outside_the_image(scenes):
    cfg = load_config("tiny", [*TINY, "data.val_fraction=0.5"]).resolved()
    train_ds, val_ds, taxonomy = prepare_detection_data(cfg, scenes, log=lambda *_: None)
    task = DetectionTask(cfg, taxonomy, train_ds, val_ds)
    s = cfg.data.image_size

    class Oracle(nn.Module):
        """The ground truth, each box stretched past the image's bottom-right corner (exact once clipped), and a
        best-scored box of every class lying beyond the image (dropped once clipped, a false positive otherwise)."""

        def __init__(self):
            super().__init__()
            self.seen = 0

        def forward(self, x):
            out = []
            for _ in range(len(x)):
                _, t = val_ds[self.seen]
                self.seen += 1
                boxes, labels = t["boxes"].clone(), t["labels"]
                lb = t["letterbox"]
                h, w = t["size"]
                right, bottom = w * lb.scale_x + lb.pad_x, h * lb.scale_y + lb.pad_y
                at_edge_x, at_edge_y = boxes[:, 2] >= right - 1e-3, boxes[:, 3] >= bottom - 1e-3
                boxes[at_edge_x, 2] += 7.0
                boxes[at_edge_y, 3] += 7.0
                n = len(labels)
                ghosts = torch.tensor([[s + 2.0, s + 2.0, s + 9.0, s + 9.0]]).repeat(4, 1)
                out.append({
                    "boxes": torch.cat([boxes, ghosts]),
                    "scores": torch.cat([torch.linspace(0.9, 0.5, n), torch.ones(4)]),
                    "labels": torch.cat([labels, torch.arange(4)]),
                })  # fmt: skip
            return out

    loader = torch.utils.data.DataLoader(val_ds, batch_size=3, collate_fn=task.collate)
    m = task.validate(Oracle(), None, loader, None, torch.device("cpu")).metrics
    assert m["summary"]["mAP"] == pytest.approx(1.0) and m["summary"]["AR@100"] == pytest.approx(1.0)
