"""`vestis crops` guards: no writing through an `images` symlink out of --out, crops of object types the stage-2
models do not index are counted, and the summary reminds to give `vestis pipeline` the same --margin."""

from __future__ import annotations

import json

import pytest

from tests.data.test_crop_manifest import TAXONOMY, _detector, _scene
from vestis.data.crop_manifest import build_crops
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError


def test_an_images_symlink_out_of_the_folder_is_refused(tmp_path):
    ann = _scene(tmp_path / "train")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.jpg").write_bytes(b"x")
    for overwrite in (False, True):
        out = tmp_path / f"crops{overwrite}"
        out.mkdir()
        (out / "images").symlink_to(elsewhere, target_is_directory=True)
        with pytest.raises(VestisError, match="images: a symbolic link"):
            build_crops(_detector(), [ann], out, taxonomy=Taxonomy.from_dict(TAXONOMY), overwrite=overwrite)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["mine.jpg"]  # nothing written or removed there


def test_crops_of_object_types_the_models_do_not_index_are_counted(tmp_path):
    ann = _scene(tmp_path / "train")
    tax = Taxonomy.from_dict(TAXONOMY)
    res = build_crops(_detector(), [ann], tmp_path / "a", taxonomy=tax)
    assert res.summary["object_types_unknown"] == {}  # upper-body and footwear are the default types
    res = build_crops(_detector(), [ann], tmp_path / "b", taxonomy=tax, object_types=("upper-body", "lower-body"))
    assert res.summary["object_types_unknown"] == {"footwear": 1}
    assert json.loads(res.summary_path.read_text())["object_types_unknown"] == {"footwear": 1}
