"""OutfitPipeline on a synthetic scene with hand-set heads: known boxes, crops of the predicted boxes, object types
into stage 2, taxonomy suppression, one stage-2 call for the crops of several images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.inference.detector_fixtures import FULL_IMAGE_BIAS, fixed_centernet, sigmoid
from tests.inference.pipeline_fixtures import CATEGORY_LOGIT, STAGE2_SIZE, make_pipeline, scene
from vestis.data.crops import crop_box
from vestis.data.images import load_image
from vestis.data.transforms import letterbox_array
from vestis.errors import VestisError
from vestis.inference.pipeline import OutfitPipeline
from vestis.inference.pipeline_format import PipelineSettings


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    return tmp, make_pipeline(tmp)


@pytest.fixture
def pipe(built):
    return OutfitPipeline.load(built[1], device="cpu")


def _softmax_top(logit: float, n: int) -> float:
    return math.exp(logit) / (math.exp(logit) + n - 1)


def test_whole_image_garments_with_hand_computed_labels(built, pipe):
    tmp, _ = built
    img = scene(tmp / "look.jpg", size=(48, 40))
    [r] = pipe.predict([img])
    assert (r.image, r.width, r.height) == (str(img), 48, 40)
    assert r.model == pipe.fingerprint and r.model.startswith("sha256:")
    # two classes have a high bias: upper-body (3.0) then footwear (2.0); each a whole-image box after clipping
    assert [g.object_type for g in r.garments] == ["upper-body", "footwear"]
    for g, bias in zip(r.garments, (FULL_IMAGE_BIAS[0], FULL_IMAGE_BIAS[3]), strict=True):
        assert g.box == pytest.approx((0.0, 0.0, 48.0, 40.0), abs=1e-4)
        assert g.object_score == pytest.approx(sigmoid(bias), abs=1e-6)
        assert g.category_score == pytest.approx(_softmax_top(CATEGORY_LOGIT, 3), abs=1e-6)
    up, shoe = r.garments
    p5 = sigmoid(5.0)
    assert (up.category, shoe.category) == ("t-shirt", "sneakers")  # from the object type alone
    assert up.attributes == {"sleeve": [("long", pytest.approx(p5))], "colour": [("red", pytest.approx(p5))]}
    assert up.suppressed == []
    # sleeve applies to t-shirts only: predicted for the sneakers, removed, and reported as removed
    assert shoe.attributes == {"colour": [("red", pytest.approx(p5))]}
    assert shoe.suppressed == ["sleeve=long"]
    assert [v for v, _ in up.category_top] == ["t-shirt", "trousers", "sneakers"]
    d = r.to_dict()
    assert set(d) == {"image", "width", "height", "garments", "model"}
    assert d["garments"][1]["suppressed"] == ["sleeve=long"] and d["garments"][0]["box"] == [0.0, 0.0, 48.0, 40.0]


def test_settings_filter_and_cap_the_garments(built):
    _, path = built
    img = load_image(scene(built[0] / "s.jpg"))
    # sigmoid(2) = 0.881 < 0.9 <= sigmoid(3) = 0.953: only the upper-body box is kept
    [r] = OutfitPipeline.load(path, device="cpu", min_score=0.9).predict([img])
    assert [g.object_type for g in r.garments] == ["upper-body"]
    [r] = OutfitPipeline.load(path, device="cpu", max_garments=1).predict([img])
    assert [g.object_type for g in r.garments] == ["upper-body"]
    [r] = OutfitPipeline.load(path, device="cpu", min_score=0.99).predict([img])
    assert r.garments == []
    assert OutfitPipeline.load(path, device="cpu", min_score=0.99).fingerprint != OutfitPipeline.load(path).fingerprint


def test_a_known_partial_box_and_its_crop(built, pipe):
    """Peak at cell (3, 4) with offset (0.5, 0.25) and size (2, 3) cells at stride 4 -> letterboxed [10, 11, 18, 23].

    A 48x40 image in a 32 px letterbox: scale 32/48 across, 27/40 down (27 = round(26.67) rows), 2 rows of padding
    on top, so the box is [10 * 1.5, (11 - 2) / 0.675, 18 * 1.5, (23 - 2) / 0.675] in the original.
    """
    tmp, _ = built
    det = pipe._runner.detector
    det.model = fixed_centernet(32, [(1, 3, 4, 4.0, (2.0, 3.0), (0.5, 0.25))])  # class 1: lower-body
    seen = []
    run = pipe._runner.run_stage2
    pipe._runner.run_stage2 = lambda crops, types: (seen.append((crops.copy(), types.copy())), run(crops, types))[1]
    img = load_image(scene(tmp / "partial.jpg", size=(48, 40)))
    [r] = pipe.predict([img])
    [g] = r.garments
    expected = (15.0, 9 / 0.675, 27.0, 21 / 0.675)
    assert g.box == pytest.approx(expected, abs=1e-4)
    assert g.object_type == "lower-body" and g.object_score == pytest.approx(sigmoid(4.0), abs=1e-6)
    assert g.category == "trousers"
    # the crop given to stage 2 is crop_box of the predicted box, letterboxed to the stage-2 size with its pad
    x0, y0, x1, y1 = expected
    ref = crop_box(img, [x0, y0, x1 - x0, y1 - y0])
    assert ref.size == (12, 19)  # columns 15..26, rows 13..31 (corners rounded outwards)
    [(crops, types)] = seen
    assert np.array_equal(crops[0], letterbox_array(ref, STAGE2_SIZE, 255))
    assert types.tolist() == [1]  # the detector's class, as the stage-2 model's object-type index
    [c] = pipe.crops(img, np.array([expected]))
    assert np.array_equal(np.asarray(c), np.asarray(ref))


def test_margin_widens_the_crop(built):
    _, path = built
    pipe = OutfitPipeline.load(path, device="cpu", margin=0.5)
    img = load_image(scene(built[0] / "m.jpg", size=(48, 40)))
    box = np.array([[16.0, 10.0, 24.0, 20.0]])
    [c] = pipe.crops(img, box)
    assert np.array_equal(np.asarray(c), np.asarray(img.crop((12, 5, 28, 25))))  # 8x10 box, 4 and 5 px each side


def test_crops_of_several_images_go_through_stage2_in_one_call(built, pipe):
    tmp, _ = built
    calls = []
    run = pipe._runner.run_stage2
    pipe._runner.run_stage2 = lambda crops, types: (calls.append(len(crops)), run(crops, types))[1]
    paths = [scene(tmp / f"b{i}.jpg", size=(40 + 8 * i, 40)) for i in range(3)]
    together = pipe.predict(paths)
    assert calls == [6]  # 2 garments x 3 images
    alone = [pipe.predict([p])[0] for p in paths]
    for a, b in zip(together, alone, strict=True):
        assert np.allclose([g.box for g in a.garments], [g.box for g in b.garments], atol=1e-5)
        for ga, gb in zip(a.garments, b.garments, strict=True):
            assert ga.category_score == pytest.approx(gb.category_score, abs=1e-6)
    pipe.stage2_batch = 4
    calls.clear()
    pipe.predict(paths)
    assert calls == [4, 2]


def test_random_stage2_weights_still_obey_the_taxonomy(tmp_path):
    path = make_pipeline(tmp_path, PipelineSettings(min_score=0.5), hand_set=False)
    torch.manual_seed(0)
    pipe = OutfitPipeline.load(path, device="cpu")
    pipe.spec.thresholds[:] = 0.0  # every value predicted: whatever is not output was suppressed
    rs = pipe.predict([scene(tmp_path / f"r{i}.jpg", size=(32 + 8 * i, 40)) for i in range(3)])
    for g in (g for r in rs for g in r.garments):
        assert ("sleeve" in g.attributes) == (g.category == "t-shirt")
        assert (g.suppressed != []) == (g.category != "t-shirt")
        assert len(g.attributes["colour"]) == 3 and len(g.attributes.get("sleeve", [1])) == 1


def test_bad_inputs_are_vestis_errors(built, tmp_path):
    _, path = built
    with pytest.raises(VestisError, match="runtime: expected one of"):
        OutfitPipeline.load(path, runtime="tf")
    with pytest.raises(VestisError, match="runtime onnx needs an exported folder"):
        OutfitPipeline.load(path, runtime="onnx")
    with pytest.raises(VestisError, match="expected a pipeline file"):
        OutfitPipeline.load(tmp_path)
    with pytest.raises(VestisError, match="min_score"):
        OutfitPipeline.load(path, min_score=2.0)
    pipe = OutfitPipeline.load(path, device="cpu")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(VestisError, match=r"broken\.jpg"):
        pipe.predict([tmp_path / "broken.jpg"])
    with pytest.raises(VestisError, match="expected a PIL image or a path"):
        pipe.predict([3])
