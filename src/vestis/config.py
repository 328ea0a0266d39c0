"""Typed configuration: dataclasses, YAML presets and dotted ``key=value`` overrides.

This is the only module that parses configuration. A run is described by one :class:`Config`
(``data``, ``model``, ``train``); presets live in ``vestis/configs/*.yaml`` and only need to name the
fields they change::

    cfg = load_config("paper", overrides=["train.epochs=3", "model.backbone=resnet18"])
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vestis.data.textio import read_text
from vestis.data.yaml_safe import load_yaml
from vestis.errors import VestisError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "list_presets",
    "load_config",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AugmentConfig:
    """Training augmentations; defaults are the multi-scale paper's (§5.2)."""

    enabled: bool = True
    zoom: float = 0.2  # scale in [1 - zoom, 1 + zoom]
    translate: float = 0.2  # fraction of the side, both axes
    rotate: float = 10.0  # degrees, +-
    shear: float = 0.1  # +-10 %, as a shear factor (tan of the angle)
    hflip: float = 0.5  # probability
    # Catalog photos are often tiny (60x80 px) and re-compressed: imitate that so the model does not rely on
    # detail it will not see. Probability per image of a down-and-up rescale followed by a JPEG re-encoding.
    degrade: float = 0.0
    degrade_scale: tuple[float, float] = (0.25, 0.6)  # down-scale factor range (then back up to the input size)
    jpeg_quality: tuple[int, int] = (30, 90)  # JPEG quality range of the re-encoding


@dataclass
class DataConfig:
    """Preprocessing; stored in every checkpoint so inference matches training exactly."""

    image_size: int = 380  # the paper resizes to 380x380 keeping the aspect ratio (pad to square)
    # per-channel normalisation on the 0-1 scale; None: what the pretrained weights expect (model.pretrained names a
    # source, see vestis.pretrained), else the ImageNet statistics. Resolved when the config is loaded.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    pad_value: int = 255  # catalog photos are shot on white; padding with white hides the pad edge
    max_pixels: int = 64_000_000  # decompression-bomb guard: larger images are refused
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_fraction: float = 0.1  # used when the manifest has no split column
    test_fraction: float = 0.1
    split_seed: int = 0
    num_workers: int = 2
    # Detectors (vestis train --task detect): the validation COCO JSON; None holds out val_fraction of the images
    val_data: str | None = None
    # detectors: none, downsample (randomly drop training images until every box class is in at most as many
    # images as the rarest) or upsample (repeat images of the rarer classes, each repeat with its own random flip,
    # an image at most 4 times): towards MeanIR = 1, the hierarchical-label paper's balancing
    balance: str = "none"


@dataclass
class ModelConfig:
    """Which registered model to build and how."""

    name: str = "a3"  # baseline, a1, a2, a3, a4 (multi-scale paper §5.2) or any registered model
    backbone: str = "efficientnetv2_s"
    # "imagenet" (weights shipped in an installed package, see vestis.pretrained) or a local safetensors /
    # state-dict file; nothing is downloaded
    pretrained: str | None = None
    # an earlier vestis checkpoint to start from (refining a base model): tensors whose key and shape match are
    # copied, branches of attributes whose values changed are initialised afresh; wins over ``pretrained``
    init: str | None = None
    attention: str = "cbam"
    fpn_channels: int = 256  # a4 only: RetinaNet FPN width on P3-P7
    branch_hidden: int = 512  # hidden width of each attribute branch
    branch_hidden_overrides: dict[str, int] = field(default_factory=dict)  # per-attribute hidden width
    dropout: float = 0.2
    # kind: softmax for single-label attributes, sigmoid for multi-label ones; paper: every attribute is a multi-label
    # (sigmoid + binary cross-entropy) classifier, as the multi-scale paper models them (§4.1.5)
    output: str = "kind"
    # Embedding models (csn, csn_fixed, triplet, datrnet; see vestis.models.embedding).
    # CSN: width of the global embedding f(x) (multi-column paper: 64); DAtRNet: width of each attribute's embedding
    # (DAtRNet paper: 128)
    embedding_dim: int = 64
    # CSN recognition head on f(x): multi (one softmax column per attribute, the paper's), single (one softmax over
    # every value of every attribute, its comparison), none (retrieval only)
    columns: str = "multi"
    # DAtRNet's ASE trunk (backbone datrnet_ase): how many ASE modules, and which attention masks each applies
    # (the paper's ablation: 1 module; (), (channel,), (height, width), (height,), (width,))
    ase_modules: int = 3
    ase_axes: tuple[str, ...] = ("channel", "height", "width")
    embedding_hidden: int = 256  # DAtRNet: the Dense(256) between pooling and each 128-d attribute embedding
    # Stage-2 models of the hierarchical pipeline (stl, stl_hls, rnn_va): the detector classes their object-type
    # input indexes (the paper's Table 1); a crop's class comes from the manifest column meta_object_type
    object_types: tuple[str, ...] = ("upper-body", "lower-body", "full-body", "footwear")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-5
    weight_decay: float = 0.0
    schedule: str = "step"  # step (x gamma every step_epochs) | cosine (with warm-up) | constant
    step_epochs: int = 8
    gamma: float = 0.75
    warmup_epochs: float = 0.0
    grad_accum: int = 1  # optimiser step every N batches
    amp: bool = True  # mixed precision, CUDA only
    # Execution switches (vestis.train.accel): how the step is computed, not what; a --resume may change them. The
    # rule for a default: on only where bench/train_speed.py measures a faster run AND a loss curve within 1e-4 of
    # eager on the tiny preset. channels_last: weights and image batches in NHWC order on every device; None: on for
    # CUDA only (the old default). On by default: on 2 CPU cores it trained 1.43x eager (default lite0 trained whole,
    # 224 px; docs/benchmarks.md, training speed), loss curves 6e-6 apart
    channels_last: bool | None = True
    # torch.compile of the training step (inductor; on CPU it needs g++): false (eager), true (mode "default"), or a
    # mode: reduce-overhead, max-autotune, max-autotune-no-cudagraphs. Off by default: on 2 CPU cores at 224 px it
    # trained 1.10x eager alone and slower than channels-last alone (equal loss curves), and compiling cost 73 s
    # with a cold cache, more than a test or the tiny preset saves
    compile: bool | str = False
    seed: int = 0
    deterministic: bool = True
    threshold: float = 0.3  # decision threshold for micro-F1 (paper default)
    # The validation metric that picks best.ckpt and drives early stopping. "auto": mean_kind_score for classifiers
    # (mean over attributes of accuracy for single-label, micro-F1 at train.threshold for multi-label ones: micro-F1
    # on a softmax attribute rewards an unsure model, so a constant guess could win), triplet_accuracy for embedding
    # models; or any summary key of the validation metrics (mean_micro_f1, mean_accuracy, mean_macro_f1, ...)
    selection_metric: str = "auto"
    # the older name of selection_metric, kept for old configs: when set it wins over selection_metric
    early_stop_metric: str | None = None
    early_stop_mode: str = "max"  # max | min: whether a larger selection metric is better
    # A value's decision threshold is calibrated on the validation split only when it has at least this many
    # labelled positives there; the others keep train.threshold (a threshold fitted to a handful of items is noise)
    calibration_min_positives: int = 10
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | inverse | effective
    effective_beta: float = 0.999  # "effective number of samples" (Cui et al. 2019)
    # per-instance loss weights (classifiers): the manifest's meta_<name> column, a number >= 0 per row (empty: 1);
    # the loss is then the weighted mean over a batch's labelled rows. None: every row weighs 1
    weight_column: str | None = None
    # class-balanced sampling (classifiers): draw training rows with replacement so that every value of this
    # single-label attribute comes equally often (vestis.train.sampling). None: a shuffled pass over the rows
    balanced_sampling: str | None = None
    task_weights: dict[str, float] = field(default_factory=dict)
    max_steps: int = 0  # stop after N optimiser steps (0 = no limit); for smoke tests
    log_every: int = 10
    # Fine-tuning controls (transfer learning); the unit is a backbone block, see Backbone.blocks().
    # Frozen for the first N epochs (no grad, eval-mode BatchNorm): the new heads' random start would otherwise
    # push large gradients into the pretrained weights.
    freeze_backbone_epochs: int = 0
    # -1: the whole backbone trains; N >= 0: only its last N blocks do (0: frozen trunk), keeping the generic
    # low-level filters as the hierarchical-label paper does.
    trainable_blocks: int = -1
    # Every backbone BatchNorm in eval mode with fixed affine weights, trainable blocks included: small batches
    # give noisy statistics (the paper fine-tunes "with the exception of the batch normalization layers").
    freeze_bn: bool = False
    backbone_lr_mult: float = 1.0  # backbone lr = lr * mult: pretrained weights want smaller steps than new heads
    # Compute the frozen trunk once per image and keep it in memory (float16): a CPU epoch then costs only the
    # trainable part. Needs a trunk frozen for the whole run; image augmentation cannot apply below it.
    cache_features: bool = False
    # a folder keeping that cache between runs (fingerprinted by trunk weights, cut, preprocessing and images):
    # a second seed or another head on the same frozen trunk skips the trunk pass; None keeps it in memory only
    cache_dir: str | None = None
    # Embedding models: triplet loss with online batch-hard mining (DAtRNet) over P values x K images batches,
    # and the multi-column paper's joint loss  alpha * recognition + beta * (triplet + l1 |f(x)| + l2 |masks|_1).
    triplet_margin: float = 0.3  # h
    # batch_hard: the hardest positive and negative of each anchor (DAtRNet); batch_all: every triplet of the batch
    # that the margin does not yet satisfy (steadier from a weak start, see vestis.losses.triplet)
    mining: str = "batch_hard"
    embed_reg: float = 5e-3  # lambda1, on the L2 norm of f(x)
    mask_reg: float = 5e-4  # lambda2, on the L1 norm of the masks
    recognition_weight: float = 0.3  # alpha
    retrieval_weight: float = 0.7  # beta
    pk_values: int = 8  # P: values of the batch's attribute per batch
    pk_images: int = 4  # K: images per value
    # DAtRNet's option: a positive must also share this attribute's value with its anchor (e.g. articleType)
    same_category: str | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> Config:
        """A copy whose normalisation left to the weights (``data.mean/std: null``) is filled in.

        Named pretrained weights bring their own statistics (EfficientNet-Lite: mean 127, std 128 on the 0-255
        scale); anything else gets the ImageNet statistics.
        """
        from vestis.pretrained import source_for

        if self.data.mean is not None and self.data.std is not None:
            return self
        src = source_for(self.model.backbone, self.model.pretrained)
        mean, std = (src.mean, src.std) if src is not None else (IMAGENET_MEAN, IMAGENET_STD)
        data = dataclasses.replace(
            self.data,
            mean=self.data.mean if self.data.mean is not None else mean,
            std=self.data.std if self.data.std is not None else std,
        )
        return dataclasses.replace(self, data=data)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, source: str = "<config>") -> Config:
        return _build(cls, data or {}, source, "")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except VestisError as e:
                errors.append(str(e))
        raise VestisError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise VestisError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where.split(":")[0], where.split(": ")[-1] if ": " in where else "")
    if origin is tuple:
        if not isinstance(value, list | tuple) or (args and args[-1] is not Ellipsis and len(value) != len(args)):
            raise VestisError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise VestisError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args or (Any, Any)
        return {_coerce(kt, k, where): _coerce(vt, v, where) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise VestisError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise VestisError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value))
        except ValueError:
            raise VestisError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise VestisError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise VestisError(f"{source}: {key}: unknown setting; expected one of {sorted(names)}")
        kwargs[k] = _coerce(hints[k], v, f"{source}: {key}")
    return cls(**kwargs)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) and return a new config."""
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise VestisError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw, "override", key)[0] if raw.strip() else ""
        except VestisError:
            value = raw  # not YAML: the text itself
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise VestisError(f"override {item!r}: unknown setting {key!r}")
            node = node[p]
        if parts[-1] not in node:
            raise VestisError(f"override {item!r}: unknown setting {key!r}")
        node[parts[-1]] = value
    return Config.from_dict(data, source="override")


def list_presets() -> list[str]:
    """Names of the bundled presets (``vestis/configs/*.yaml``)."""
    return sorted(p.name[:-5] for p in resources.files("vestis.configs").iterdir() if p.name.endswith(".yaml"))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _config_data(name_or_path: str | os.PathLike[str], chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """``(settings, source)`` of a preset or YAML file, with its ``base:`` chain merged underneath."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise VestisError(f"{p}: config file not found")
        text, source, key = read_text(p, "config"), str(p), str(p.resolve())
    else:
        res = resources.files("vestis.configs") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise VestisError(f"unknown preset {str(name_or_path)!r}; presets: {list_presets()}")
        text, source = res.read_text(encoding="utf-8"), f"preset {name_or_path}"
        key = source
    # bounded: alias bombs, deep nesting and duplicate keys are refused with the line (see yaml_safe)
    data = load_yaml(text, source, "config")[0] or {}
    if not isinstance(data, dict):
        raise VestisError(f"{source}: expected a mapping of sections (data, model, train)")
    base = data.pop("base", None)
    if base is None:
        return data, source
    if not isinstance(base, str) or not base.strip():
        raise VestisError(f"{source}: base: expected a preset name or a YAML path, got {base!r}")
    if key in chain:
        raise VestisError(f"{source}: base: the chain of bases comes back to this file ({' -> '.join(chain)})")
    base_data, _ = _config_data(base, (*chain, key))
    return _merge(Config.from_dict(base_data, source=base).to_dict(), data), source


def load_config(name_or_path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """A preset name (``paper``, ``default``, ``tiny``) or a YAML path, then ``overrides`` on top.

    A YAML file may start from a preset (or another file) with ``base: <preset>``.

    Raises:
        VestisError: an unknown preset, a file that is not UTF-8 or not valid YAML, YAML that
            :class:`~vestis.data.yaml_safe.BoundedLoader` refuses (alias bombs, deep nesting, duplicate keys),
            a ``base:`` chain that loops, or an unknown or mistyped setting; each message names the file.
    """
    data, source = _config_data(name_or_path) if name_or_path is not None else ({}, "<defaults>")
    cfg = Config.from_dict(data, source=source)
    return apply_overrides(cfg, overrides or []).resolved()
