import pytest
import yaml

from vestis.config import Config, apply_overrides, list_presets, load_config
from vestis.errors import VestisError


def test_defaults_are_the_papers():
    cfg = Config()
    assert cfg.data.image_size == 380
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.gamma, cfg.train.step_epochs) == ("adam", 1e-5, 0.75, 8)
    assert cfg.train.batch_size == 128 and cfg.train.threshold == 0.3
    a = cfg.data.augment
    assert (a.zoom, a.translate, a.rotate, a.shear, a.hflip) == (0.2, 0.2, 10.0, 0.1, 0.5)


def test_presets_load_and_paper_matches_defaults():
    assert {"default", "paper", "tiny"} <= set(list_presets())
    paper = load_config("paper")
    assert paper.model.backbone == "efficientnetv2_m" and paper.model.name == "a3"
    assert paper.train.lr == 1e-5 and paper.data.image_size == 380
    assert load_config("tiny").model.backbone == "resnet18_tiny"


def test_presets_for_transfer_learning():
    assert {"default", "paper", "scratch", "tiny"} <= set(list_presets())
    d = load_config("default")
    assert (d.model.backbone, d.model.pretrained) == ("efficientnet_lite0", "imagenet")
    assert d.train.cache_features and d.train.trainable_blocks > 0
    # normalisation follows the weights: EfficientNet-Lite was trained on (x - 127) / 128
    assert d.data.mean == pytest.approx((127 / 255,) * 3) and d.data.std == pytest.approx((128 / 255,) * 3)
    assert load_config("paper").model.output == "paper"
    s = load_config("scratch")
    assert s.model.pretrained is None and s.data.mean == (0.485, 0.456, 0.406)


def test_normalisation_left_to_the_weights_is_resolved_after_overrides():
    cfg = load_config("default", ["model.pretrained=null"])  # no weights: ImageNet statistics
    assert cfg.data.mean == (0.485, 0.456, 0.406) and cfg.data.std == (0.229, 0.224, 0.225)
    cfg = load_config("tiny", ["model.backbone=efficientnet_lite2", "model.pretrained=imagenet"])
    assert cfg.data.mean == pytest.approx((127 / 255,) * 3)
    cfg = load_config("default", ["data.mean=[0.1,0.2,0.3]"])  # an explicit choice is kept
    assert cfg.data.mean == (0.1, 0.2, 0.3) and cfg.data.std == pytest.approx((128 / 255,) * 3)
    assert Config().data.mean is None and Config().resolved().data.mean == (0.485, 0.456, 0.406)
    with pytest.raises(VestisError, match="no 'imagenet' weights for backbone 'resnet50'"):
        load_config("default", ["model.backbone=resnet50"])


def test_overrides_are_typed():
    cfg = apply_overrides(
        Config(), ["train.lr=3e-4", "train.amp=false", "data.mean=[0.5,0.5,0.5]", "model.pretrained=null"]
    )
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.amp is False
    assert cfg.data.mean == (0.5, 0.5, 0.5)
    assert cfg.model.pretrained is None
    cfg = apply_overrides(cfg, ["train.task_weights={colour: 2}", "data.augment.hflip=0"])
    assert cfg.train.task_weights == {"colour": 2.0} and cfg.data.augment.hflip == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown setting"),
        ("train.epochs=abc", "expected an integer"),
        ("train.amp=maybe", "expected true or false"),
        ("nokey", "expected key=value"),
        ("data.mean=[1,2]", "expected a list of 3 values"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(VestisError, match=message):
        apply_overrides(Config(), [override])


def test_yaml_file_with_base(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump({"base": "paper", "train": {"epochs": 3}}))
    cfg = load_config(p, ["model.backbone=resnet50"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 1e-5 and cfg.model.backbone == "resnet50"
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_unknown_preset_and_section(tmp_path):
    with pytest.raises(VestisError, match="unknown preset"):
        load_config("nope")
    p = tmp_path / "bad.yaml"
    p.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(VestisError, match=r"bad.yaml: trian: unknown setting"):
        load_config(p)


def test_config_file_hostile_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\n  lr: 1e-3\n  epochs: 4\n", encoding="utf-8")
    with pytest.raises(VestisError, match=r"c\.yaml:4: config: duplicate key 'epochs' \(first on line 2\)"):
        load_config(p)
    p.write_bytes("train:\n  # réglages\n  epochs: 3\n".encode("latin-1"))
    with pytest.raises(VestisError, match=r"c\.yaml:2: not UTF-8: byte 0xe9 at column 6"):
        load_config(p)
    p.write_text("train: " + "[" * 20_000 + "]" * 20_000 + "\n", encoding="utf-8")
    with pytest.raises(VestisError, match=r"c\.yaml:1: config: nesting deeper than 64 levels"):
        load_config(p)


def test_base_chain_loop_and_type(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {b}\ntrain: {{epochs: 3}}\n", encoding="utf-8")
    b.write_text(f"base: {a}\ntrain: {{lr: 0.5}}\n", encoding="utf-8")
    with pytest.raises(VestisError, match=r"a\.yaml: base: the chain of bases comes back to this file"):
        load_config(a)
    b.write_text("base: tiny\ntrain: {lr: 0.5, epochs: 9}\n", encoding="utf-8")
    cfg = load_config(a)
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.backbone) == (3, 0.5, "resnet18_tiny")
    a.write_text("base: [tiny]\n", encoding="utf-8")
    with pytest.raises(VestisError, match=r"a\.yaml: base: expected a preset name or a YAML path, got \['tiny'\]"):
        load_config(a)


def test_override_value_that_is_not_yaml_stays_text():
    cfg = apply_overrides(Config(), ["model.pretrained=" + "[" * 20_000])
    assert cfg.model.pretrained == "[" * 20_000
