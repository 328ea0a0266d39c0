"""Parity and label remapping that the hand-set fixtures cannot show: a detector with random (seeded) weights
everywhere, so its backbone and FPN matter, run by PyTorch and by ONNX Runtime; and a stage-2 model whose object
types are a permutation of the detector's classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.inference.detector_fixtures import detector_taxonomy, full_image_checkpoint
from tests.inference.pipeline_fixtures import CATEGORY_OF, scene, stage2_checkpoint
from vestis.config import load_config
from vestis.data.detection import OBJECT_TYPES
from vestis.inference.pipeline import OutfitPipeline, torch_parts
from vestis.inference.pipeline_format import PipelineSettings, bundle_pipeline, load_pipeline_file
from vestis.models.detection import build_detector
from vestis.train.checkpoint import save_checkpoint


def random_detector(path, image_size=64, seed=7):
    """A ``centernet_tiny`` checkpoint with seeded random weights in every layer, heads included."""
    cfg = load_config(
        "tiny",
        ["model.name=centernet_tiny", "model.backbone=mobilenetv3_tiny", f"data.image_size={image_size}",
         "data.pad_value=0"],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = build_detector("centernet_tiny", num_classes=len(OBJECT_TYPES))
    with torch.no_grad():
        for head in (model.heatmap, model.size, model.offset):
            torch.nn.init.normal_(head.out.weight, std=0.3)
        model.heatmap.out.bias.fill_(-1.0)  # scores spread around 0.27, not all below min_score
        model.size.out.bias.fill_(4.0)  # boxes of a few cells, not degenerate
    return save_checkpoint(path, model=model.eval(), config=cfg, taxonomy=detector_taxonomy())


def test_random_detector_maps_and_garments_match_across_runtimes(tmp_path):
    pytest.importorskip("onnxruntime")
    from vestis.inference.pipeline_export import export_pipeline_onnx

    det = random_detector(tmp_path / "det.ckpt")
    st = stage2_checkpoint(tmp_path / "stage2.ckpt", hand_set=False)
    path = bundle_pipeline(det, st, tmp_path / "outfit.vestis", PipelineSettings(min_score=0.2, max_garments=6))
    export_pipeline_onnx(path, tmp_path / "out", opset=17, check_images=0)
    torch_pipe = OutfitPipeline.load(path, device="cpu")
    onnx_pipe = OutfitPipeline.load(tmp_path / "out", device="cpu")
    # the raw maps, on a batch of random letterboxed images
    maps, _, spec = torch_parts(load_pipeline_file(path))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, spec.detector_size, spec.detector_size), dtype=np.uint8)
    with torch.inference_mode():
        ref = [o.numpy() for o in maps(torch.from_numpy(images))]
    got = onnx_pipe._runner.run_detector(images)
    for name, r, g in zip(("heatmap", "size", "offset"), ref, got, strict=True):
        assert r.shape == g.shape, name
        np.testing.assert_allclose(g, r, atol=1e-4, err_msg=name)
    # the maps vary with the image: the backbone and FPN are in the graph, not a constant
    assert np.abs(ref[0][0] - ref[0][1]).max() > 1e-3 and np.abs(ref[1][0] - ref[1][1]).max() > 1e-3
    # the decoded garments
    photos = [scene(tmp_path / f"s{i}.png", size=(40 + 16 * i, 48)) for i in range(3)]
    a, b = torch_pipe.predict(photos), onnx_pipe.predict(photos)
    assert sum(len(r.garments) for r in a) >= 3
    for ra, rb in zip(a, b, strict=True):
        assert [g.object_type for g in ra.garments] == [g.object_type for g in rb.garments]
        assert [g.category for g in ra.garments] == [g.category for g in rb.garments]
        np.testing.assert_allclose([g.box for g in ra.garments], [g.box for g in rb.garments], atol=1e-3)
        np.testing.assert_allclose(
            [g.object_score for g in ra.garments], [g.object_score for g in rb.garments], atol=1e-4
        )


def test_object_types_in_another_order_are_matched_by_name(tmp_path):
    # the hand-set stage-2 model's category follows its object-type input, by name (upper-body -> t-shirt,
    # footwear -> sneakers); here its object-type indices are the detector's in reverse order
    order = tuple(reversed(OBJECT_TYPES))
    det = full_image_checkpoint(tmp_path / "det.ckpt", image_size=32)
    st = stage2_checkpoint(tmp_path / "stage2.ckpt", object_types=order)
    pipe = OutfitPipeline.load(
        bundle_pipeline(det, st, tmp_path / "outfit.vestis", PipelineSettings(one_type_per_garment=False)), device="cpu"
    )
    assert pipe.spec.layout.object_types == order and pipe.spec.classes == OBJECT_TYPES
    assert pipe._types.tolist() == [3, 2, 1, 0]
    [r] = pipe.predict([scene(tmp_path / "a.png")])
    got = {g.object_type: g.category for g in r.garments}
    # by index the upper-body crop would be read as footwear (sneakers) and the footwear crop as upper-body
    assert (
        got
        == {"upper-body": CATEGORY_OF["upper-body"], "footwear": CATEGORY_OF["footwear"]}
        == {"upper-body": "t-shirt", "footwear": "sneakers"}
    )
