"""Box IoU, class-wise NMS (against a naive reference) and CenterNet decoding on hand-built maps."""

from __future__ import annotations

import pytest
import torch

from vestis.errors import VestisError
from vestis.models.detection import box_iou, decode_centernet, nms, xywh_to_xyxy, xyxy_to_xywh


def test_iou_hand_cases() -> None:
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [2, 2, 4, 4], [20, 0, 30, 5]])
    expected = torch.tensor([[1.0, 50 / 150, 0.0, 4 / 100, 0.0]])
    assert torch.allclose(box_iou(a, b), expected)
    assert box_iou(b, a).shape == (5, 1)
    # two degenerate boxes have an empty union: IoU 0, not nan
    z = torch.tensor([[3.0, 3, 3, 3]])
    assert box_iou(z, z).item() == 0.0


def test_xywh_round_trip() -> None:
    xywh = torch.tensor([[1.0, 2, 3, 4]])
    assert xywh_to_xyxy(xywh).tolist() == [[1.0, 2, 4, 6]]
    assert torch.equal(xyxy_to_xywh(xywh_to_xyxy(xywh)), xywh)


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _naive_nms(boxes: list[list[float]], scores: list[float], labels: list[int], thr: float) -> list[int]:
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(labels[j] != labels[i] or _iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_naive_reference(seed: int, thr: float) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 60
    xy = torch.rand(n, 2, generator=g) * 10  # crowded, so that every threshold suppresses some
    wh = torch.rand(n, 2, generator=g) * 20 + 20
    boxes = torch.cat([xy, xy + wh], dim=1).double()
    scores = torch.rand(n, generator=g).double()
    labels = torch.randint(0, 3, (n,), generator=g)
    got = nms(boxes, scores, labels, thr).tolist()
    assert got == _naive_nms(boxes.tolist(), scores.tolist(), labels.tolist(), thr)
    assert 0 < len(got) < n  # the random case does exercise suppression


def test_nms_is_class_wise_and_handles_empty() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [0, 2]
    assert nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)).numel() == 0
    with pytest.raises(VestisError, match="iou_threshold"):
        nms(boxes, scores, torch.tensor([0, 0, 1]), 1.5)


def test_decode_known_peak_gives_known_box() -> None:
    heat = torch.zeros(1, 3, 8, 10)
    heat[0, 2, 5, 3] = 0.9  # class 2, row 5, column 3
    heat[0, 2, 5, 4] = 0.5  # a neighbour of the peak: not a peak itself
    heat[0, 0, 1, 8] = 0.6  # a second, weaker peak of class 0
    size = torch.zeros(1, 2, 8, 10)
    offset = torch.zeros(1, 2, 8, 10)
    size[0, :, 5, 3] = torch.tensor([4.0, 2.0])  # (w, h) in cells
    offset[0, :, 5, 3] = torch.tensor([0.25, 0.5])  # (dx, dy)
    size[0, :, 1, 8] = torch.tensor([1.0, 1.0])
    det = decode_centernet(heat, size, offset, stride=4, k=2)[0]
    # centre (3.25, 5.5) cells = (13, 22) px; 16 x 8 px
    assert torch.allclose(det["boxes"][0], torch.tensor([5.0, 18.0, 21.0, 26.0]))
    assert det["labels"].tolist() == [2, 0]
    assert torch.allclose(det["scores"], torch.tensor([0.9, 0.6]))
    assert torch.allclose(det["boxes"][1], torch.tensor([30.0, 2.0, 34.0, 6.0]))


def test_decode_top_k_clip_and_nms() -> None:
    heat = torch.zeros(2, 1, 4, 4)
    heat[:, 0, 0, 0] = 0.8
    heat[:, 0, 3, 3] = 0.7
    size = torch.full((2, 2, 4, 4), 10.0)
    offset = torch.zeros(2, 2, 4, 4)
    dets = decode_centernet(heat, size, offset, stride=2, k=100, image_size=(8, 8))
    assert len(dets) == 2 and dets[0]["boxes"].shape == (16, 4)  # k capped at C * H * W
    assert dets[0]["boxes"][0].tolist() == [0.0, 0.0, 8.0, 8.0]  # (-10, -10, 10, 10) clipped to the image
    # every clipped box covers the whole image: NMS keeps one
    kept = decode_centernet(heat, size, offset, stride=2, k=2, image_size=(8, 8), nms_iou=0.5)[1]
    assert kept["scores"].tolist() == pytest.approx([0.8])
