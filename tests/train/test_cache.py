"""The frozen-trunk feature cache: the cached tail computes what the model computes, a cached epoch equals an
uncached one, cached runs resume exactly and their checkpoints are ordinary ones."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from typer.testing import CliRunner

import vestis
import vestis.cli
import vestis.train.cache as cache_mod
from vestis.config import DataConfig, ModelConfig, load_config
from vestis.data.dataset import EncodedTargets
from vestis.data.synthetic import generate_catalog
from vestis.data.taxonomy import Taxonomy, load_taxonomy
from vestis.data.transforms import prepare_batch
from vestis.errors import VestisError
from vestis.models import create_model
from vestis.train.cache import CachedTail, build_cache, predict_cache, random_hflip
from vestis.train.checkpoint import load_checkpoint, save_checkpoint
from vestis.train.loop import train

QUIET = {"progress": False, "log": lambda *_: None}
TAX = Taxonomy.from_dict(
    {
        "attributes": [
            {"name": "colour", "kind": "single", "values": ["red", "blue", "green"]},
            {"name": "style", "kind": "multi", "values": ["casual", "formal"]},
        ]
    }
)


class _Images(Dataset):
    """Random uint8 images, items shaped like AttributeDataset's (image and index are what the cache reads)."""

    def __init__(self, n: int, size: int = 32) -> None:
        self.images = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0)).byte()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "index": i}


def _encoded(n: int) -> EncodedTargets:
    rng = np.random.default_rng(0)
    return EncodedTargets(
        targets={"colour": rng.integers(0, 3, n), "style": rng.integers(0, 2, (n, 2)).astype(np.float32)},
        masks={"colour": np.ones(n, bool), "style": rng.random(n) > 0.3},
    )


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_catalog(root, n=64, size=48, seed=1)
    return root / "manifest.csv"


def _cfg(*extra):
    return load_config("tiny", ["data.image_size=48", "model.dropout=0", "train.epochs=1", *extra])


@pytest.mark.parametrize(("variant", "backbone"), [("a3", "mobilenetv3_tiny"), ("baseline", "resnet18_tiny")])
def test_cached_tail_equals_the_model_at_every_cut(monkeypatch, variant, backbone):
    monkeypatch.setattr(cache_mod, "CACHE_DTYPE", torch.float32)
    torch.manual_seed(0)
    model = create_model(ModelConfig(name=variant, backbone=backbone, branch_hidden=8, dropout=0.0), TAX).eval()
    ds, dc = _Images(6), DataConfig(image_size=32)
    loader = DataLoader(ds, batch_size=4)
    with torch.no_grad():
        ref = model(prepare_batch(ds.images, dc))
    n_blocks = len(model.backbone.blocks())
    aliased = set()
    for cut in range(1, n_blocks + 1):
        cache = build_cache(model, loader, _encoded(6), cut, dc, torch.device("cpu"), log=lambda *_: None)
        aliased.add(cache.alias is not None)
        assert len(cache) == 6 and cache.cut.dtype == torch.float32
        with torch.no_grad():
            out = CachedTail(model, cut).eval()(*cache.inputs(torch.arange(6), torch.device("cpu")))
        for k in ref:
            torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5, msg=f"cut {cut}: {k}")
        assert torch.equal(cache.targets["colour"], torch.from_numpy(_encoded(6).targets["colour"]))
    assert aliased == {True, False}  # cuts at a tapped stage's end and inside or between taps both covered


def test_float16_cache_is_close_and_predict_cache_gives_probabilities():
    torch.manual_seed(0)
    model = create_model(ModelConfig(name="a3", backbone="mobilenetv3_tiny", branch_hidden=8), TAX).eval()
    ds, dc = _Images(5), DataConfig(image_size=32)
    lines: list[str] = []
    cache = build_cache(model, DataLoader(ds, batch_size=2), _encoded(5), 3, dc, torch.device("cpu"), log=lines.append)
    assert cache.cut.dtype == torch.float16 and "cut after block stages.1.0" in lines[-1]
    with torch.no_grad():
        logits = model(prepare_batch(ds.images, dc))
    tail = CachedTail(model, 3).train()
    probs = predict_cache(tail, cache, TAX, 2, torch.device("cpu"))
    assert tail.training and model.heads.training  # predict_cache leaves the mode as it found it
    np.testing.assert_allclose(probs["colour"], logits["colour"].softmax(-1).numpy(), atol=5e-3)
    np.testing.assert_allclose(probs["style"], logits["style"].sigmoid().numpy(), atol=5e-3)


def test_random_hflip_mirrors_the_same_samples_in_every_map():
    cut = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    taps = {"a": cut, "b": torch.arange(2 * 1 * 1 * 4, dtype=torch.float32).view(2, 1, 1, 4)}
    same_cut, same_taps = random_hflip(cut, taps, 0.0)
    assert same_cut is cut and same_taps is taps
    new_cut, new_taps = random_hflip(cut, taps, 1.0)
    assert torch.equal(new_cut, cut.flip(-1)) and torch.equal(new_taps["b"], taps["b"].flip(-1))
    assert new_taps["a"] is new_cut  # the cut map that is also a tap stays one tensor
    torch.manual_seed(0)
    half_cut, half_taps = random_hflip(cut, taps, 0.5)
    flipped = [bool(torch.equal(half_cut[i], cut[i].flip(-1))) for i in range(2)]
    assert flipped == [bool(torch.equal(half_taps["b"][i], taps["b"][i].flip(-1))) for i in range(2)]


def test_one_cached_epoch_equals_one_uncached_epoch(catalog, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "CACHE_DTYPE", torch.float32)  # float16 storage is the only approximation
    # both runs start from one checkpoint (model.init), so the frozen blocks' values are known
    cfg0 = _cfg()
    torch.manual_seed(3)
    start = create_model(cfg0.model, load_taxonomy(catalog.parent / "taxonomy.yaml"))
    init = save_checkpoint(tmp_path / "start.ckpt", model=start, config=cfg0, taxonomy=start.taxonomy)
    base = ["data.augment.enabled=false", "train.trainable_blocks=2", f"model.init={init}"]
    plain = train(_cfg(*base), catalog, tmp_path / "plain", **QUIET)
    lines: list[str] = []
    cached = train(
        _cfg(*base, "train.cache_features=true"), catalog, tmp_path / "cached", progress=False, log=lines.append
    )
    assert any(line.startswith("feature cache (train):") for line in lines)
    assert any(line.startswith(f"init from {init}") for line in lines)
    assert plain.steps == cached.steps > 1
    a, b = plain.history[0], cached.history[0]
    assert b["train"]["loss"] == pytest.approx(a["train"]["loss"], abs=1e-5)
    assert b["val"] == pytest.approx(a["val"], abs=1e-5)
    sa, sb, s0 = plain.model.state_dict(), cached.model.state_dict(), start.state_dict()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=1e-5, msg=k)
    # resnet18_tiny: stem, layer1.0, layer2.0 frozen (running statistics too), layer3.0 and layer4.0 trained
    frozen = [
        k for k in s0 if k.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2."))
    ]
    assert frozen and all(torch.equal(sb[k], s0[k]) for k in frozen)
    assert not torch.equal(sb["backbone.layer4.0.conv1.weight"], s0["backbone.layer4.0.conv1.weight"])


def test_cached_run_resumes_exactly_and_saves_an_ordinary_checkpoint(catalog, tmp_path):
    # augmentation on: the log says image augmentation is off and the feature-space flip draws random numbers
    cfg2 = _cfg("train.epochs=2", "train.trainable_blocks=1", "train.cache_features=true", "data.augment.enabled=true")
    lines: list[str] = []
    full = train(cfg2, catalog, tmp_path / "full", progress=False, log=lines.append)
    assert any("image augmentation (data.augment) cannot apply" in line for line in lines)
    first = train(cfg2_one := _cfg("train.epochs=1", *_tail(cfg2)), catalog, tmp_path / "split", **QUIET)
    assert first.epochs_run == 1 and cfg2_one.train.epochs == 1
    resumed = train(cfg2, catalog, tmp_path / "split", resume=True, **QUIET)
    assert resumed.steps == full.steps
    a, b = load_checkpoint(full.last), load_checkpoint(resumed.last)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # an ordinary full-model checkpoint: rebuilt from the file alone, it computes what the trained model computes
    model, trained = vestis.load(full.last), full.model.eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert all(torch.equal(model(x)[k], trained(x)[k]) for k in model.taxonomy.names)


@pytest.mark.slow
def test_cli_evaluate_reads_a_cached_run(catalog, tmp_path):
    cfg = _cfg("train.trainable_blocks=1", "train.cache_features=true", "train.max_steps=2")
    result = train(cfg, catalog, tmp_path / "run", **QUIET)
    res = CliRunner().invoke(
        vestis.cli.app,
        ["evaluate", str(result.best), "--data", str(catalog), "--out", str(tmp_path / "rep"), "--workers", "0"],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(metrics["attributes"]) == set(vestis.load(result.best).taxonomy.names)


def _tail(cfg) -> list[str]:
    t = cfg.train
    return [
        f"train.trainable_blocks={t.trainable_blocks}",
        f"train.cache_features={t.cache_features}",
        f"data.augment.enabled={cfg.data.augment.enabled}",
    ]


def test_cache_needs_a_frozen_trunk(catalog, tmp_path):
    lines: list[str] = []
    with pytest.raises(VestisError, match="cache_features: nothing is frozen for the whole run"):
        train(_cfg("train.cache_features=true"), catalog, tmp_path / "a", progress=False, log=lines.append)
    assert not lines  # refused from the config, before reading the catalog
    with pytest.raises(VestisError, match="nothing is frozen"):  # unfrozen before the run ends
        train(
            _cfg("train.cache_features=true", "train.freeze_backbone_epochs=1", "train.epochs=2"),
            catalog,
            tmp_path,
            **QUIET,
        )
    # more trainable blocks than the backbone has: only the model knows
    with pytest.raises(VestisError, match="nothing is frozen"):
        train(_cfg("train.cache_features=true", "train.trainable_blocks=99"), catalog, tmp_path / "c", **QUIET)
