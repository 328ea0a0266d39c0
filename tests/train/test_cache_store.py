"""train.cache_dir: a frozen trunk computed once across runs, keyed by what its numbers depend on."""

import torch

from vestis.config import load_config
from vestis.data.synthetic import generate_catalog
from vestis.models.backbones.base import Backbone
from vestis.train.loop import train


def _run(catalog, out, store, *extra):
    cfg = load_config(
        "tiny",
        [
            "data.image_size=48",
            "model.dropout=0",
            "data.augment.enabled=false",
            "train.epochs=1",
            "train.trainable_blocks=2",
            "train.cache_features=true",
            f"train.cache_dir={store}",
            *extra,
        ],
    )
    lines: list[str] = []
    result = train(cfg, catalog, out, check_images=False, progress=False, log=lines.append)
    return result, lines


def test_a_second_run_reads_the_stored_trunk_and_trains_identically(tmp_path, monkeypatch):
    generate_catalog(tmp_path / "synth", n=48, size=48, seed=3)
    catalog = tmp_path / "synth" / "manifest.csv"
    store = tmp_path / "store"
    first, log1 = _run(catalog, tmp_path / "a", store)
    assert not any("read from" in m for m in log1)
    assert sorted(p.name.split("-")[0] for p in store.iterdir()) == ["train", "val"]

    # the second run must not run the trunk over the images at all
    calls = []
    real = Backbone.forward_until

    def counting(self, x, stop):
        calls.append(len(x))
        return real(self, x, stop)

    monkeypatch.setattr(Backbone, "forward_until", counting)
    second, log2 = _run(catalog, tmp_path / "b", store)
    assert sum("read from" in m for m in log2) == 2  # train and val
    assert calls == [1, 1]  # one single-image probe per split: which maps the model needs
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.history[-1]["train"] == second.history[-1]["train"]


def test_other_preprocessing_or_weights_are_not_read(tmp_path):
    generate_catalog(tmp_path / "synth", n=48, size=48, seed=3)
    catalog = tmp_path / "synth" / "manifest.csv"
    store = tmp_path / "store"
    _run(catalog, tmp_path / "a", store)
    _, log = _run(catalog, tmp_path / "b", store, "data.pad_value=0")
    assert not any("read from" in m for m in log)
    _, log = _run(catalog, tmp_path / "c", store, "train.seed=5")  # another random trunk: another fingerprint
    assert not any("read from" in m for m in log)
    assert len(list(store.iterdir())) == 6


def test_a_damaged_store_file_is_recomputed(tmp_path):
    generate_catalog(tmp_path / "synth", n=48, size=48, seed=3)
    catalog = tmp_path / "synth" / "manifest.csv"
    store = tmp_path / "store"
    first, _ = _run(catalog, tmp_path / "a", store)
    for p in store.iterdir():
        p.write_bytes(p.read_bytes()[:100])
    second, log = _run(catalog, tmp_path / "b", store)
    assert not any("read from" in m for m in log)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
