"""postprocess_boxes: the one decoded-boxes -> original-pixels post-processing (detector, pipeline, validation)."""

import numpy as np
import pytest
import torch

from vestis.data.detection import Letterbox
from vestis.models.detection.boxes import DEFAULT_NMS_IOU, postprocess_boxes

# a 100 x 50 image letterboxed into 64 x 64: scale 0.64, the image 64 x 32 placed at y = 16
LB = Letterbox(0.64, 0.64, 0, 16)


def _letterboxed(xyxy):
    x0, y0, x1, y1 = xyxy
    return [x0 * 0.64, y0 * 0.64 + 16, x1 * 0.64, y1 * 0.64 + 16]


def test_hand_computed_case():
    boxes = torch.tensor(
        [
            _letterboxed([10, 10, 40, 30]),  # kept
            _letterboxed([11, 10, 41, 30]),  # same class, IoU ~0.94 with the first: suppressed
            _letterboxed([11, 10, 41, 30]),  # another class: kept
            _letterboxed([80, 20, 130, 60]),  # beyond the image: clipped to [80, 20, 100, 50]
            [0.0, 0.0, 64.0, 10.0],  # in the padding only: empty after clipping, dropped
            _letterboxed([0, 0, 5, 5]),  # below min_score: dropped
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.99, 0.1])
    labels = torch.tensor([0, 0, 1, 2, 0, 0])
    b, s, lab = postprocess_boxes(boxes, scores, labels, LB, 100, 50, min_score=0.2)
    np.testing.assert_allclose(b, [[10, 10, 40, 30], [11, 10, 41, 30], [80, 20, 100, 50]], atol=1e-4)
    np.testing.assert_allclose(s, [0.9, 0.7, 0.6], rtol=1e-6)
    assert lab.tolist() == [0, 1, 2] and b.dtype == np.float32 and lab.dtype == np.int64
    # no NMS: the near-duplicate stays; max_detections cuts the list
    b, s, lab = postprocess_boxes(boxes, scores, labels, LB, 100, 50, min_score=0.2, nms_iou=None, max_detections=2)
    np.testing.assert_allclose(s, [0.9, 0.8], rtol=1e-6)
    # numpy input and an empty input
    b, s, lab = postprocess_boxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), LB, 100, 50)
    assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)


def test_defaults_are_the_ones_of_vestis_detect():
    import inspect

    from vestis.cli.detect import detect_cmd

    params = inspect.signature(detect_cmd).parameters
    assert params["nms_iou"].default == DEFAULT_NMS_IOU
    assert params["max_detections"].default == 100


@pytest.mark.parametrize("nms_iou", [0.5, None])
def test_detector_and_pipeline_decoding_agree(nms_iou):
    """The Detector and the pipeline's decode_detections give the same boxes on the same maps."""
    from vestis.inference.pipeline_format import PipelineSettings
    from vestis.inference.pipeline_graphs import decode_detections
    from vestis.models.detection import decode_centernet

    g = torch.Generator().manual_seed(0)
    heat = torch.rand(1, 3, 16, 16, generator=g)
    size = torch.rand(1, 2, 16, 16, generator=g) * 6
    off = torch.rand(1, 2, 16, 16, generator=g)
    settings = PipelineSettings(min_score=0.3, nms_iou=nms_iou if nms_iou is not None else 1.0, max_garments=20)
    [got] = decode_detections(
        heat.numpy(), size.numpy(), off.numpy(), stride=4, candidates=50, letterboxes=[LB], image_sizes=[(100, 50)],
        settings=settings,
    )  # fmt: skip
    [d] = decode_centernet(heat, size, off, 4, 50, image_size=(64, 64))
    b, s, lab = postprocess_boxes(
        d["boxes"], d["scores"], d["labels"], LB, 100, 50, min_score=0.3, nms_iou=settings.nms_iou, max_detections=20,
        across_classes=settings.one_type_per_garment,
    )  # fmt: skip
    np.testing.assert_allclose(got.boxes, b, atol=1e-5)
    np.testing.assert_allclose(got.scores, s, atol=1e-6)
    assert got.labels.tolist() == lab.tolist() and len(lab) > 0


def test_across_classes_keeps_one_type_per_object():
    boxes = torch.tensor(
        [_letterboxed([10, 10, 40, 30]), _letterboxed([11, 10, 41, 30]), _letterboxed([60, 5, 90, 45])]
    )
    scores = torch.tensor([0.6, 0.8, 0.5])
    labels = torch.tensor([0, 1, 0])  # the first two: one garment given two classes
    _, s, lab = postprocess_boxes(boxes, scores, labels, LB, 100, 50)
    assert lab.tolist() == [1, 0, 0] and s.tolist() == pytest.approx([0.8, 0.6, 0.5])  # class-wise: both kept
    _, s, lab = postprocess_boxes(boxes, scores, labels, LB, 100, 50, across_classes=True)
    assert lab.tolist() == [1, 0] and s.tolist() == pytest.approx([0.8, 0.5])  # the better-scored type only
