"""The stage-1 Detector: letterbox in, boxes back in original pixels, class-wise NMS, checkpoint kinds refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.inference.conftest import make_checkpoint
from tests.inference.detector_fixtures import FULL_IMAGE_BIAS, fixed_centernet, full_image_checkpoint, sigmoid
from vestis.data.detection import OBJECT_TYPES
from vestis.errors import VestisError
from vestis.inference.detector import Detections, Detector
from vestis.train.checkpoint import load_checkpoint

S = 64  # letterbox side; centernet_tiny's stride is 4, so the maps are 16 x 16 cells


def _detector(peaks):
    return Detector(fixed_centernet(S, peaks), classes=OBJECT_TYPES, image_size=S, pad_value=0, device="cpu")


# A 100 x 50 image letterboxed to 64: scale 0.64, resized to 64 x 32, padded by 16 rows above and below.
# Peak A (full-body, logit 4) at cell (6, 7), offset (0.5, 0.25), size (5, 2.5) cells:
#   centre (6.5 * 4, 7.25 * 4) = (26, 29), half sides (10, 5) -> letterboxed box (16, 24, 36, 34)
#   -> original ((16 - 0) / 0.64, (24 - 16) / 0.64, 36 / 0.64, (34 - 16) / 0.64) = (25, 12.5, 56.25, 28.125)
PEAK_A = (2, 6, 7, 4.0, (5.0, 2.5), (0.5, 0.25))
BOX_A = [25.0, 12.5, 56.25, 28.125]
# Peak B, same class, logit 3, two cells right (not a neighbour, so both are peaks): letterboxed (24, 24, 44, 34),
# IoU with A = 12 / 28 = 0.43 -> kept at NMS 0.5, suppressed at NMS 0.4. Original: (37.5, 12.5, 68.75, 28.125)
PEAK_B = (2, 8, 7, 3.0, (5.0, 2.5), (0.5, 0.25))
BOX_B = [37.5, 12.5, 68.75, 28.125]
# Peak C, upper-body, logit 2, the very same box as A: another class, never suppressed by A
PEAK_C = (0, 6, 7, 2.0, (5.0, 2.5), (0.5, 0.25))
# Peak D, footwear, logit 5, in the bottom padding only (letterboxed y 54..58 -> original y > 50): dropped
PEAK_D = (3, 2, 14, 5.0, (2.0, 1.0), (0.0, 0.0))


def test_unletterboxed_box_is_the_hand_computed_one():
    det = _detector([PEAK_A])
    [d] = det.detect([Image.new("RGB", (100, 50), (90, 90, 90))])
    np.testing.assert_allclose(d.boxes, [BOX_A], atol=1e-4)
    np.testing.assert_allclose(d.scores, [sigmoid(4.0)], rtol=1e-6)
    assert d.labels.tolist() == [2] and d.names == ("full-body",)
    assert (d.width, d.height) == (100, 50) and d.boxes.dtype == np.float32


def test_class_wise_nms_min_score_clipping_and_max_detections():
    det = _detector([PEAK_A, PEAK_B, PEAK_C, PEAK_D])
    img = Image.new("RGB", (100, 50))
    [d] = det.detect([img], nms_iou=0.5)
    assert d.names == ("full-body", "full-body", "upper-body")  # D lies in the padding: nothing left of it
    np.testing.assert_allclose(d.boxes, [BOX_A, BOX_B, BOX_A], atol=1e-4)
    np.testing.assert_allclose(d.scores, [sigmoid(4.0), sigmoid(3.0), sigmoid(2.0)], rtol=1e-6)
    [d] = det.detect([img], nms_iou=0.4)  # B overlaps A by 0.43 within its class; C is another class
    assert d.names == ("full-body", "upper-body")
    [d] = det.detect([img], nms_iou=None, min_score=float(sigmoid(2.5)))
    assert d.names == ("full-body", "full-body")
    [d] = det.detect([img], max_detections=1)
    assert d.names == ("full-body",)
    [d] = det.detect([img], min_score=0.0, nms_iou=None)  # the other cells score sigmoid(-10): 100 peaks in all
    assert 3 <= len(d) <= 99 and d.scores.max() < sigmoid(4.5)  # D (and any box in the padding) is dropped
    assert (d.boxes[:, :2] >= 0).all() and (d.boxes[:, 2] <= 100).all() and (d.boxes[:, 3] <= 50).all()
    assert (d.boxes[:, 2:] > d.boxes[:, :2]).all()


def test_batches_and_paths_give_the_same_boxes(tmp_path):
    det = _detector([PEAK_A])
    path = tmp_path / "wide.png"
    Image.new("RGB", (100, 50), (10, 200, 10)).save(path)
    square = Image.new("RGB", (64, 64))
    out = det.detect([path, square, path], batch_size=2)
    np.testing.assert_allclose(out[0].boxes, [BOX_A], atol=1e-4)
    np.testing.assert_allclose(out[2].boxes, out[0].boxes)
    # the square image is not padded: the box is the letterboxed one, (16, 24, 36, 34)
    np.testing.assert_allclose(out[1].boxes, [[16.0, 24.0, 36.0, 34.0]], atol=1e-4)


def test_decoding_is_bounded_and_arguments_are_checked(tmp_path):
    det = _detector([PEAK_A])
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 50)).save(path)
    det.max_pixels = 4999
    with pytest.raises(VestisError, match="over the cap"):
        det.detect([path])
    img = Image.new("RGB", (10, 10))
    for kwargs, msg in (({"min_score": 1.5}, "min_score"), ({"nms_iou": -0.1}, "nms_iou"),
                        ({"max_detections": 0}, "max_detections"), ({"batch_size": 0}, "batch_size")):  # fmt: skip
        with pytest.raises(VestisError, match=msg):
            det.detect([img], **kwargs)
    with pytest.raises(VestisError, match="a single image"):
        det.detect(img)


def test_to_coco_entries():
    d = Detections(
        boxes=np.array([[10.0, 20.0, 40.0, 25.5], [0.0, 0.0, 1.0, 2.0]], dtype=np.float32),
        scores=np.array([0.75, 0.5], dtype=np.float32),
        labels=np.array([3, 0]),
        names=("footwear", "upper-body"),
        classes=OBJECT_TYPES,
        width=50,
        height=30,
    )
    assert d.to_coco(7) == [
        {"image_id": 7, "category_id": 4, "bbox": [10.0, 20.0, 30.0, 5.5], "score": 0.75},
        {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 2.0], "score": 0.5},
    ]


def test_from_checkpoint(tmp_path):
    path = full_image_checkpoint(tmp_path / "det.ckpt")
    det = Detector.from_checkpoint(path, device="cpu")
    assert det.classes == OBJECT_TYPES and det.image_size == 32 and det.pad_value == 0
    assert det.fingerprint == load_checkpoint(path)["fingerprint"]
    [d] = det.detect([Image.new("RGB", (40, 30), (200, 0, 0))])
    assert d.names == ("upper-body", "footwear")
    np.testing.assert_allclose(d.boxes, [[0, 0, 40, 30], [0, 0, 40, 30]], atol=1e-4)
    np.testing.assert_allclose(d.scores, [sigmoid(FULL_IMAGE_BIAS[0]), sigmoid(FULL_IMAGE_BIAS[3])], rtol=1e-6)


def test_a_checkpoint_that_is_not_a_detector_is_refused(tmp_path):
    path = make_checkpoint(tmp_path / "classifier.ckpt")
    with pytest.raises(VestisError, match=r"'a3' is not a detector"):
        Detector.from_checkpoint(path, device="cpu")
    with pytest.raises(VestisError, match="checkpoint not found"):
        Detector.from_checkpoint(tmp_path / "missing.ckpt")
