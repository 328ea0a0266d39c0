"""Load backbone weights from a local file: safetensors or a torch state dict; nothing is downloaded.

Files named the torchvision, timm or vestis way are recognised by their keys and renamed to our modules:

==================  ==============================  =================================  ==============
family              torchvision                     timm                               vestis
==================  ==============================  =================================  ==============
ResNet-18/50        ``resnet18``, ``resnet50``      ``resnet18``, ``resnet50``         same keys
EfficientNetV2-S/M  ``efficientnet_v2_s/m``         ``tf_efficientnetv2_s/m``          our keys
MobileNetV3-Small   ``mobilenet_v3_small``          ``(tf_)mobilenetv3_small_100``     our keys
==================  ==============================  =================================  ==============

EfficientNet-Lite0/1/2 files use the ``lukemelas`` naming of the ``efficientnet_pytorch`` port (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv`` / ``_depthwise_conv`` / ``_project_conv`` with ``_bn0`` / ``_bn1`` / ``_bn2``,
``_conv_head``, ``_bn1``, classifier ``_fc``), which the ImageNet packages of :mod:`vestis.pretrained` ship.

torchvision's layers correspond one to one with ours (symmetric padding, batch-norm epsilon 1e-3 for
EfficientNetV2 and MobileNetV3, same activations). timm's ``tf_*`` weights were trained with TensorFlow's
asymmetric "same" padding and its ``mobilenetv3_small_100`` with batch-norm epsilon 1e-5; with our layers their
outputs differ slightly from timm's, which fine-tuning absorbs.

Not supported: ResNet variants with a deep stem (timm ``resnet50d``), timm's ``_minimal`` MobileNets.
Classifier keys (``fc.``, ``classifier.``, ``head.``; timm MobileNetV3's pre-logits ``conv_head.``) are ignored,
as are the weights of stages a model does not use. Everything else must match: a missing key, a key the
backbone does not have, or a shape that differs raises a :class:`~vestis.errors.VestisError` naming each one
(``strict=False`` loads what fits and reports the rest). A file saved from a whole :class:`AttributeModel`
contributes its ``backbone.*`` weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vestis.errors import VestisError
from vestis.models.backbones.base import Backbone
from vestis.models.backbones.efficientnet_lite import EfficientNetLite
from vestis.models.backbones.efficientnetv2 import EfficientNetV2, FusedMBConv
from vestis.models.backbones.mobilenetv3 import MobileNetV3
from vestis.models.backbones.resnet import ResNet

__all__ = ["NAMINGS", "LoadReport", "key_map", "load_backbone_weights", "read_state_dict"]

NAMINGS = (
    "torchvision",
    "timm",
    "lukemelas",
    "vestis",
)  # tried in this order; the first with the most matching keys wins
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "_fc.")
_EXTRA_IGNORED = {("mobilenetv3", "timm"): ("conv_head.",)}  # timm's 576 -> 1024 pre-logits convolution
_LIST_LIMIT = 12


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did.

    Attributes:
        path: the file read.
        naming: the key naming recognised (``torchvision``, ``timm`` or ``vestis``).
        loaded: number of tensors copied into the backbone.
        ignored: file keys deliberately skipped (classifier, stages the backbone does not use).
        missing: backbone keys the file lacks (empty when strict).
        unexpected: file keys the backbone does not have (empty when strict).
        mismatched: ``(backbone key, file shape, backbone shape)`` of skipped tensors (empty when strict).
    """

    path: Path
    naming: str
    loaded: int
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)


# --- reading ------------------------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file or a torch state dict (``torch.load(weights_only=True)``).

    A state dict nested under ``state_dict``, ``model`` or ``model_state_dict`` is unwrapped and a
    ``module.`` prefix (DistributedDataParallel) is removed.

    Args:
        path: the file.

    Returns:
        Key -> tensor.
    """
    p = Path(path)
    if not p.is_file():
        raise VestisError(f"{p}: weights file not found")
    obj: Any
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(p), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise VestisError(f"{p}: not a readable safetensors file ({e})") from None
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and weights-only errors all mean "not a plain state dict"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VestisError(f"{p}: cannot read weights ({msg}); expected safetensors or a torch state dict") from None
    while isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        inner = next(
            (obj[k] for k in ("state_dict", "model", "model_state_dict") if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise VestisError(f"{p}: expected a mapping of parameter names to tensors, got {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise VestisError(f"{p}: not a state dict: entries that are not tensors: {_names(bad)}")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


# --- key naming ---------------------------------------------------------------------------------------------
def _family(backbone: Backbone) -> str:
    families = (
        (ResNet, "resnet"),
        (EfficientNetV2, "efficientnetv2"),
        (MobileNetV3, "mobilenetv3"),
        (EfficientNetLite, "efficientnet_lite"),
    )
    for cls, name in families:
        if isinstance(backbone, cls):
            return name
    return type(backbone).__name__


def _conv_bn(m: dict[str, str], ours: str, conv: str, bn: str) -> None:
    m[f"{ours}.conv"] = conv
    m[f"{ours}.bn"] = bn


def _torchvision_block(m: dict[str, str], ours: str, tv: str, block: nn.Module) -> None:
    # torchvision blocks are a Sequential ``block`` of the parts that exist, in order
    parts = [p for p in ("fused", "expand", "dw", "se", "project") if getattr(block, p, None) is not None]
    for k, part in enumerate(parts):
        if part == "se":
            m[f"{ours}.se.fc1"] = f"{tv}.block.{k}.fc1"
            m[f"{ours}.se.fc2"] = f"{tv}.block.{k}.fc2"
        else:
            _conv_bn(m, f"{ours}.{part}", f"{tv}.block.{k}.0", f"{tv}.block.{k}.1")


def _timm_block(m: dict[str, str], ours: str, t: str, block: nn.Module) -> None:
    if isinstance(block, FusedMBConv):
        if block.project is None:  # timm ConvBnAct
            _conv_bn(m, f"{ours}.fused", f"{t}.conv", f"{t}.bn1")
        else:  # timm EdgeResidual
            _conv_bn(m, f"{ours}.fused", f"{t}.conv_exp", f"{t}.bn1")
            _conv_bn(m, f"{ours}.project", f"{t}.conv_pwl", f"{t}.bn2")
        return
    if block.expand is None:  # timm DepthwiseSeparableConv
        _conv_bn(m, f"{ours}.dw", f"{t}.conv_dw", f"{t}.bn1")
        _conv_bn(m, f"{ours}.project", f"{t}.conv_pw", f"{t}.bn2")
    else:  # timm InvertedResidual
        _conv_bn(m, f"{ours}.expand", f"{t}.conv_pw", f"{t}.bn1")
        _conv_bn(m, f"{ours}.dw", f"{t}.conv_dw", f"{t}.bn2")
        _conv_bn(m, f"{ours}.project", f"{t}.conv_pwl", f"{t}.bn3")
    if block.se is not None:
        m[f"{ours}.se.fc1"] = f"{t}.se.conv_reduce"
        m[f"{ours}.se.fc2"] = f"{t}.se.conv_expand"


def _lukemelas_map(backbone: EfficientNetLite) -> dict[str, str]:
    # blocks are numbered globally, and inside a block the batch norms follow their convolution
    m: dict[str, str] = {}
    _conv_bn(m, "stem", "_conv_stem", "_bn0")
    index = 0
    for i, stage in enumerate(backbone.stages):
        for j, block in enumerate(stage):
            t = f"_blocks.{index}"
            if block.expand is not None:
                _conv_bn(m, f"stages.{i}.{j}.expand", f"{t}._expand_conv", f"{t}._bn0")
            _conv_bn(m, f"stages.{i}.{j}.dw", f"{t}._depthwise_conv", f"{t}._bn1")
            _conv_bn(m, f"stages.{i}.{j}.project", f"{t}._project_conv", f"{t}._bn2")
            index += 1
    _conv_bn(m, "top", "_conv_head", "_bn1")
    return m


def _module_map(backbone: Backbone, naming: str) -> dict[str, str] | None:
    """Our module path -> foreign module path, or ``None`` when the names are identical."""
    if naming == "vestis" or isinstance(backbone, ResNet):
        return None  # our ResNet uses torchvision's (= timm's) names
    if naming == "lukemelas":
        if not isinstance(backbone, EfficientNetLite):
            raise VestisError(f"{backbone._label()}: the lukemelas naming is for EfficientNet-Lite backbones only")
        return _lukemelas_map(backbone)
    if isinstance(backbone, EfficientNetLite):
        raise VestisError(f"{backbone._label()}: no {naming} key mapping for EfficientNet-Lite; use lukemelas")
    if not isinstance(backbone, EfficientNetV2 | MobileNetV3):
        raise VestisError(f"{backbone._label()}: no {naming} key mapping for {type(backbone).__name__}")
    m: dict[str, str] = {}
    stages = list(backbone.stages)
    if naming == "torchvision":
        _conv_bn(m, "stem", "features.0.0", "features.0.1")
        index = 1  # EfficientNet: features.{stage + 1}.{block}; MobileNetV3: features.{global block index}
        for i, stage in enumerate(stages):
            for j, block in enumerate(stage):
                tv = f"features.{i + 1}.{j}" if isinstance(backbone, EfficientNetV2) else f"features.{index}"
                _torchvision_block(m, f"stages.{i}.{j}", tv, block)
                index += 1
        last = len(stages) + 1 if isinstance(backbone, EfficientNetV2) else index
        _conv_bn(m, "top", f"features.{last}.0", f"features.{last}.1")
    elif naming == "timm":
        _conv_bn(m, "stem", "conv_stem", "bn1")
        for i, stage in enumerate(stages):
            for j, block in enumerate(stage):
                _timm_block(m, f"stages.{i}.{j}", f"blocks.{i}.{j}", block)
        if isinstance(backbone, EfficientNetV2):
            _conv_bn(m, "top", "conv_head", "bn2")
        else:  # timm MobileNetV3 keeps the 576-wide 1x1 convolution as a last one-block stage
            _conv_bn(m, "top", f"blocks.{len(stages)}.0.conv", f"blocks.{len(stages)}.0.bn1")
    else:
        raise VestisError(f"unknown weight naming {naming!r}; expected one of {list(NAMINGS)}")
    return m


def key_map(backbone: Backbone, naming: str) -> dict[str, str]:
    """Foreign state-dict key -> our key, for every tensor of ``backbone`` (as built, stages removed or not).

    Args:
        backbone: the backbone whose keys to name.
        naming: ``torchvision``, ``timm`` or ``vestis``.

    Returns:
        The mapping, one entry per parameter and buffer.
    """
    modules = _module_map(backbone, naming)
    out: dict[str, str] = {}
    for key in backbone.state_dict():
        if modules is None:
            out[key] = key
            continue
        mod, _, leaf = key.rpartition(".")
        if mod not in modules:
            raise RuntimeError(f"{key}: no {naming} name for module {mod!r}")
        out[f"{modules[mod]}.{leaf}"] = key
    return out


# --- loading ------------------------------------------------------------------------------------------------
def _namings_for(backbone: Backbone) -> tuple[str, ...]:
    if isinstance(backbone, EfficientNetLite):
        return ("lukemelas", "vestis")
    return tuple(n for n in NAMINGS if n != "lukemelas")


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def load_backbone_weights(
    backbone: Backbone, path: str | os.PathLike[str], *, strict: bool = True, naming: str | None = None
) -> LoadReport:
    """Copy the weights in ``path`` into ``backbone``, renaming torchvision or timm keys to ours.

    Args:
        backbone: the backbone to fill (in place).
        path: a ``.safetensors`` file or a torch state dict.
        strict: raise when a key is missing or unexpected or a shape differs; otherwise load what fits.
        naming: force ``torchvision``, ``timm`` or ``vestis``; by default the naming matching most keys.

    Returns:
        A :class:`LoadReport`.
    """
    p = Path(path)
    state = read_state_dict(p)
    ignored: list[str] = []
    if any(k.startswith("backbone.") for k in state):
        # a whole AttributeModel: keep its backbone
        ignored = sorted(k for k in state if not k.startswith("backbone."))
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    full = backbone.full_architecture() if backbone.pruned_prefixes else backbone
    maps = {n: key_map(full, n) for n in ([naming] if naming else _namings_for(full))}
    naming = max(maps, key=lambda n: sum(k in maps[n] for k in state))  # max keeps the first of equals
    fmap = maps[naming]
    label = backbone.arch or type(backbone).__name__
    if not any(k in fmap for k in state):
        raise VestisError(
            f"{p}: no key matches the {' or '.join(maps)} naming of backbone {label}; the file starts with "
            f"{_names(list(state)[:5])}"
        )
    ignore = _HEAD_PREFIXES + _EXTRA_IGNORED.get((_family(backbone), naming), ())
    own = backbone.state_dict()
    found: dict[str, tuple[str, Tensor]] = {}
    unexpected: list[str] = []
    pruned = backbone.pruned_prefixes
    for k, v in state.items():
        ours = fmap.get(k)
        if ours is not None and pruned and ours.startswith(pruned):
            ignored.append(k)  # a stage this backbone removed
        elif ours is not None:
            found[ours] = (k, v)
        elif k.startswith(ignore):
            ignored.append(k)
        else:
            unexpected.append(k)
    # running-average counters are often dropped by converters; they carry no weights
    missing = [k for k in own if k not in found and not k.endswith("num_batches_tracked")]
    mismatched = [
        (ours, tuple(v.shape), tuple(own[ours].shape)) for ours, (_, v) in found.items() if v.shape != own[ours].shape
    ]
    if strict and (missing or unexpected or mismatched):
        lines = [f"{p}: weights do not fit backbone {label} ({naming} naming):"]
        if missing:
            lines.append(f"  missing key(s) ({len(missing)}): {_names(missing)}")
        if unexpected:
            lines.append(f"  unexpected key(s) ({len(unexpected)}): {_names(unexpected)}")
        for ours, got, want in mismatched[:_LIST_LIMIT]:
            lines.append(f"  shape mismatch: {found[ours][0]} is {got} in the file, {ours} is {want} in the model")
        if len(mismatched) > _LIST_LIMIT:
            lines.append(f"  ... {len(mismatched) - _LIST_LIMIT} more shape mismatches")
        lines.append("  (load what fits with strict=False)")
        raise VestisError("\n".join(lines))
    skip = {ours for ours, _, _ in mismatched}
    tensors = {ours: v for ours, (_, v) in found.items() if ours not in skip}
    backbone.load_state_dict(tensors, strict=False)
    return LoadReport(
        path=p,
        naming=naming,
        loaded=len(tensors),
        ignored=ignored,
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )
