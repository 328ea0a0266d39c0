import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import write_image
from vestis.config import DataConfig
from vestis.data.dataset import AttributeDataset, encode_targets
from vestis.data.manifest import Manifest, Record
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError

TAX = Taxonomy.from_dict(
    {
        "attributes": [
            {"name": "category", "kind": "single", "values": ["shirt", "trousers"]},
            {"name": "closure", "kind": "single", "values": ["buttons", "zip"], "applies_to": ["trousers"]},
            {"name": "occasion", "kind": "multi", "values": ["casual", "party", "work"]},
        ]
    }
)


def _manifest(tmp_path) -> Manifest:
    recs = [
        Record("a", "a.jpg", {"category": ("shirt",), "occasion": ("party", "work")}),
        Record("b", "b.jpg", {"category": ("trousers",), "closure": ("zip",)}),
        # closure on a shirt does not apply: masked out, as if missing
        Record("c", "c.jpg", {"category": ("shirt",), "closure": ("buttons",), "occasion": ("casual",)}),
    ]
    for r in recs:
        write_image(tmp_path / r.image, size=(40, 20))
    return Manifest(recs, attributes=["category", "closure", "occasion"], root=tmp_path)


def test_encode_targets(tmp_path):
    enc = encode_targets(_manifest(tmp_path).records, TAX)
    assert enc.targets["category"].tolist() == [0, 1, 0]
    assert enc.targets["closure"].tolist() == [-1, 1, -1]
    assert enc.masks["closure"].tolist() == [False, True, False]
    assert enc.targets["occasion"].tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert enc.masks["occasion"].tolist() == [True, False, True]


def test_encode_rejects_several_values_in_single_label():
    with pytest.raises(VestisError, match="several values"):
        encode_targets([Record("x", "x.jpg", {"category": ("shirt", "trousers")})], TAX)


def test_dataset_items_and_workers(tmp_path):
    ds = AttributeDataset(_manifest(tmp_path), TAX, DataConfig(image_size=24))
    item = ds[1]
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.uint8
    assert item["targets"]["category"].item() == 1 and bool(item["masks"]["closure"])
    # 40x20 letterboxed to 24: rows 0..5 and 18..23 are white padding
    assert (item["image"][:, :6] == 255).all()
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert [b["image"].shape[0] for b in batches] == [2, 1]
    assert batches[0]["targets"]["occasion"].shape == (2, 3)
    assert np.array_equal(batches[0]["masks"]["occasion"].numpy(), [True, False])
