"""Model fingerprints: a hand-computed case, what changes them, and how checkpoints store and recompute them."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import safetensors
import torch

import vestis
from tests.inference.conftest import make_checkpoint, small_taxonomy
from vestis.data.taxonomy import Taxonomy
from vestis.errors import VestisError
from vestis.fingerprint import fingerprint
from vestis.train.checkpoint import encode_checkpoint, load_checkpoint

PREP = {"image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "pad_value": 114}


def test_hand_computed_digest() -> None:
    # the documented byte layout, spelt out: length-prefixed name, dtype, shape, bytes, then the two JSON texts
    def piece(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b

    w = torch.tensor([1.0, -2.0], dtype=torch.float32)
    tax = {"attributes": [{"name": "colour", "kind": "single", "values": ["red", "blue"]}]}
    expected = hashlib.sha256(
        piece(b"w")
        + piece(b"float32")
        + piece(b"[2]")
        + piece(struct.pack("<2f", 1.0, -2.0))
        + piece(b'{"attributes":[{"kind":"single","name":"colour","values":["red","blue"]}]}')
        + piece(b'{"image_size":64,"mean":[0.5,0.5,0.5],"pad_value":114,"std":[0.25,0.25,0.25]}')
    ).hexdigest()
    assert fingerprint({"w": w}, tax, PREP) == "sha256:" + expected


def test_same_weights_same_fingerprint_and_each_change_differs() -> None:
    torch.manual_seed(0)
    sd = {"b.bias": torch.randn(3), "a.weight": torch.randn(3, 4), "n": torch.tensor(5)}
    tax = small_taxonomy()
    base = fingerprint(sd, tax, PREP)
    # equal content built again, in another key order, and the taxonomy as its dict: the same
    again = {k: sd[k].clone() for k in reversed(list(sd))}
    assert fingerprint(again, tax.to_dict(), dict(reversed(list(PREP.items())))) == base

    changed = {k: v.clone() for k, v in sd.items()}
    changed["a.weight"][1, 2] += 1e-6
    d = tax.to_dict()
    d["attributes"][1]["values"][0] = "crimson"  # one value renamed
    renamed = Taxonomy.from_dict(d)
    bigger = {**PREP, "image_size": 96}
    as_double = {**sd, "b.bias": sd["b.bias"].double()}  # same numbers, another dtype
    reshaped = {**sd, "a.weight": sd["a.weight"].reshape(4, 3)}  # same bytes, another shape
    others = [
        fingerprint(changed, tax, PREP),
        fingerprint(sd, renamed, PREP),
        fingerprint(sd, tax, bigger),
        fingerprint(as_double, tax, PREP),
        fingerprint(reshaped, tax, PREP),
    ]
    assert len({base, *others}) == 6


def test_bfloat16_and_scalar_tensors_are_hashed() -> None:
    a = fingerprint({"x": torch.tensor(1.5, dtype=torch.bfloat16)}, {}, {})
    b = fingerprint({"x": torch.tensor(1.75, dtype=torch.bfloat16)}, {}, {})
    assert a.startswith("sha256:") and a != b


def test_checkpoint_stores_it_and_load_sets_it(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.ckpt", seed=3)
    state = load_checkpoint(path)
    expected = fingerprint(state["model"], state["taxonomy"], state["preprocessing"])
    assert state["fingerprint"] == expected
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["fingerprint"]) == expected  # readable without vestis
    model = vestis.load(path)
    assert model.fingerprint == expected
    # the loaded model's own weights give it again: the fingerprint names these weights
    assert fingerprint(model.state_dict(), model.taxonomy, state["preprocessing"]) == expected
    other = make_checkpoint(tmp_path / "o.ckpt", seed=4)
    assert vestis.load(other).fingerprint != expected


def test_older_checkpoint_without_the_field_gets_it_computed(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.ckpt")
    state = load_checkpoint(path)
    want = state.pop("fingerprint")
    old = tmp_path / "old.ckpt"
    old.write_bytes(encode_checkpoint(state))
    assert "fingerprint" not in load_checkpoint(old)
    assert vestis.load(old).fingerprint == want


@pytest.mark.parametrize("bad", ["md5:abc", "sha256:" + "0" * 63, "sha256:" + "g" * 64, 7])
def test_malformed_stored_fingerprint_is_one_line_error(tmp_path: Path, bad: object) -> None:
    state = load_checkpoint(make_checkpoint(tmp_path / "m.ckpt"))
    state["fingerprint"] = bad
    path = tmp_path / "bad.ckpt"
    path.write_bytes(encode_checkpoint(state))
    with pytest.raises(VestisError, match=r"bad\.ckpt: fingerprint: expected 'sha256:'"):
        load_checkpoint(path)
