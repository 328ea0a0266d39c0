"""The outfit pipeline file: a detector checkpoint and a stage-2 checkpoint bundled into one safetensors file.

Format. ``vestis pipeline DETECTOR.ckpt STAGE2.ckpt --out outfit.vestis`` writes one safetensors file whose
header metadata holds ``format: vestis-pipeline`` and ``version``, then, for each part ``detector`` and ``stage2``,
the fields of its checkpoint as ``<part>.<field>`` (``config``, ``taxonomy``, ``preprocessing``, ``metrics``,
``thresholds``, ``fingerprint``, and ``model``, the index of its weights), encoded with the checkpoint's tree codec
(:mod:`vestis.train.checkpoint`): the weights are the tensors ``detector/model/<parameter>`` and
``stage2/model/<parameter>``. Training state (optimiser moments, RNG) is left out: a pipeline only predicts.
``pipeline`` holds the settings (:class:`PipelineSettings`) and ``fingerprint`` the pair's fingerprint
(:func:`pipeline_fingerprint`: both parts' fingerprints and the settings).

Reading parses JSON and raw tensor bytes only, so a shared pipeline file cannot run code; a truncated file, a
header over :data:`~vestis.train.checkpoint.MAX_HEADER_BYTES`, another format tag, a missing part or field,
or a fingerprint that does not match its parts is a :class:`~vestis.errors.VestisError` naming the file and field.

An exported pipeline (``vestis export outfit.vestis --out DIR``, :mod:`vestis.inference.pipeline_export`) is a
folder with ``detector.onnx``, ``stage2.onnx`` and ``pipeline.json``; :func:`pipeline_kind` tells the two apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch

from vestis.config import Config
from vestis.errors import VestisError
from vestis.fingerprint import PREFIX, canonical_json
from vestis.io import atomic_write_bytes

# the checkpoint's tree codec and checks, reused so that a pipeline part reads exactly as a checkpoint does
from vestis.train.checkpoint import FORMAT as CHECKPOINT_FORMAT
from vestis.train.checkpoint import VERSION as CHECKPOINT_VERSION
from vestis.train.checkpoint import (
    TreeDecoder,
    TreeEncoder,
    fingerprint_of,
    load_checkpoint,
    sniff_checkpoint,
    validate_state,
)

__all__ = [
    "FORMAT",
    "MANIFEST_NAME",
    "PARTS",
    "PART_FIELDS",
    "VERSION",
    "PipelineBundle",
    "PipelineSettings",
    "bundle_pipeline",
    "check_pair",
    "encode_pipeline",
    "load_pipeline_file",
    "pipeline_fingerprint",
    "pipeline_kind",
]

FORMAT = "vestis-pipeline"
VERSION = 1
PARTS = ("detector", "stage2")
# the checkpoint fields a pipeline part keeps (no train_state: a pipeline only predicts)
PART_FIELDS = ("model", "config", "taxonomy", "preprocessing", "metrics", "thresholds", "fingerprint")
MANIFEST_NAME = "pipeline.json"  # the description of an exported pipeline folder


@dataclass(frozen=True)
class PipelineSettings:
    """How the pipeline turns detections into garments.

    Attributes:
        min_score: detections scoring below this are dropped.
        nms_iou: non-maximum suppression above this IoU.
        max_garments: at most this many garments per image, the best-scoring ones.
        margin: context added around each predicted box before cropping, as a fraction of its width and height.
    """

    min_score: float = 0.3
    nms_iou: float = 0.5
    max_garments: int = 10
    margin: float = 0.0
    # NMS between boxes of different object types too: a garment has one type (False: class-wise, as COCO scores)
    one_type_per_garment: bool = True

    def __post_init__(self) -> None:
        for name, lo, hi in (("min_score", 0.0, 1.0), ("nms_iou", 0.0, 1.0), ("margin", 0.0, 10.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
                raise VestisError(f"{name}: expected a number in [{lo:g}, {hi:g}], got {v!r}")
        if not isinstance(self.one_type_per_garment, bool):
            raise VestisError(f"one_type_per_garment: expected true or false, got {self.one_type_per_garment!r}")
        n = self.max_garments
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise VestisError(f"max_garments: expected a positive integer, got {n!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> PipelineSettings:
        """A copy with the given settings changed; ``None`` values keep the current ones."""
        return PipelineSettings(**{**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}})

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<pipeline>") -> PipelineSettings:
        """Settings from their ``to_dict`` form.

        Raises:
            VestisError: not a table, an unknown key, or a value out of range (the message names ``source``).
        """
        if not isinstance(data, Mapping):
            raise VestisError(f"{source}: pipeline: expected a table of settings, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise VestisError(
                f"{source}: pipeline: unknown setting(s) {unknown}; expected {list(cls.__dataclass_fields__)}"
            )
        try:
            return cls(**dict(data))
        except VestisError as e:
            raise VestisError(f"{source}: pipeline.{e}") from None


@dataclass(frozen=True)
class PipelineBundle:
    """A read pipeline file.

    Attributes:
        detector: the detector's checkpoint dict (as :func:`~vestis.train.checkpoint.load_checkpoint` gives).
        stage2: the stage-2 model's checkpoint dict.
        settings: the stored settings.
        fingerprint: the pair's fingerprint.
        path: the file.
    """

    detector: dict[str, Any]
    stage2: dict[str, Any]
    settings: PipelineSettings
    fingerprint: str
    path: Path | None = None


def pipeline_fingerprint(detector: str, stage2: str, settings: PipelineSettings) -> str:
    """``sha256:`` of the two parts' fingerprints and the settings, as canonical JSON."""
    payload = {"format": FORMAT, "detector": detector, "stage2": stage2, "settings": settings.to_dict()}
    return PREFIX + hashlib.sha256(canonical_json(payload)).hexdigest()


def check_pair(detector: Mapping[str, Any], stage2: Mapping[str, Any], *, source: str = "<pipeline>") -> None:
    """Refuse a pair that cannot run together: the first must be a detector, the second a stage-2 model, and every
    class of the detector must be an object type the stage-2 model knows.

    Raises:
        VestisError: naming ``source``, the part and what was expected.
    """
    from vestis.models.detection import is_detector
    from vestis.models.hierarchical import is_stage2

    det = Config.from_dict(detector["config"], source=f"{source}: detector")
    st = Config.from_dict(stage2["config"], source=f"{source}: stage2")
    if not is_detector(det.model.name):
        hint = " (the arguments are DETECTOR then STAGE2)" if is_detector(st.model.name) else ""
        raise VestisError(f"{source}: detector: model {det.model.name!r} is not a registered detector{hint}")
    if not is_stage2(st.model.name):
        raise VestisError(f"{source}: stage2: model {st.model.name!r} is not a registered stage-2 model")
    attrs = detector["taxonomy"].get("attributes") if isinstance(detector["taxonomy"], dict) else None
    if not isinstance(attrs, list) or len(attrs) != 1 or not isinstance(attrs[0], dict):
        raise VestisError(f"{source}: detector: taxonomy: expected one attribute (object_type), the detector's classes")
    classes = attrs[0].get("values") or []
    unknown = [c for c in classes if c not in st.model.object_types]
    if unknown:
        raise VestisError(
            f"{source}: stage2: model.object_types {list(st.model.object_types)} lacks the detector's class(es) "
            f"{unknown}; expected a stage-2 model trained on this detector's crops"
        )


def encode_pipeline(detector: Mapping[str, Any], stage2: Mapping[str, Any], settings: PipelineSettings) -> bytes:
    """The bytes of a pipeline file for two checkpoint dicts (from :func:`~vestis.train.checkpoint.load_checkpoint`)."""
    enc = TreeEncoder()
    metadata = {"format": FORMAT, "version": str(VERSION)}
    fps = {}
    for part, state in zip(PARTS, (detector, stage2), strict=True):
        fps[part] = fingerprint_of(dict(state))
        fields = {**state, "fingerprint": fps[part]}
        for field in PART_FIELDS:
            if fields.get(field) is not None:
                tree = enc.encode(fields[field], f"{part}/{field}", 0)
                metadata[f"{part}.{field}"] = json.dumps(
                    tree, allow_nan=False, separators=(",", ":"), ensure_ascii=False
                )
    metadata["pipeline"] = json.dumps(settings.to_dict())
    metadata["fingerprint"] = pipeline_fingerprint(fps["detector"], fps["stage2"], settings)
    return safetensors.torch.save(enc.tensors, metadata=metadata)


def bundle_pipeline(
    detector: str | os.PathLike[str],
    stage2: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: PipelineSettings | None = None,
    *,
    trust_checkpoint: bool = False,
) -> Path:
    """Bundle a detector checkpoint and a stage-2 checkpoint into one pipeline file, atomically.

    Args:
        detector: the detector checkpoint (``vestis train --task detect``).
        stage2: the stage-2 checkpoint (``vestis train --task stage2``).
        out: the file to write.
        settings: the pipeline's settings (default: :class:`PipelineSettings`).
        trust_checkpoint: also read old pickle checkpoints (runs any code they hold).

    Returns:
        The written path.

    Raises:
        VestisError: unreadable checkpoints, a pair that does not fit (:func:`check_pair`), ``out`` equal to an input.
    """
    out = Path(out)
    for p in (detector, stage2):
        if out.exists() and Path(p).exists() and out.resolve() == Path(p).resolve():
            raise VestisError(f"{out}: expected a new file, not one of the input checkpoints")
    det = load_checkpoint(detector, trust=trust_checkpoint)
    st = load_checkpoint(stage2, trust=trust_checkpoint)
    check_pair(det, st, source=f"{detector} + {stage2}")
    return atomic_write_bytes(out, encode_pipeline(det, st, settings or PipelineSettings()))


def _metadata(path: Path) -> dict[str, str] | None:
    """The safetensors header metadata of ``path``, or ``None`` when it is not a safetensors file."""
    if sniff_checkpoint(path) != "safetensors":
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:  # safetensors' own error type, OSError
        return None


def pipeline_kind(path: str | os.PathLike[str]) -> str | None:
    """``"bundle"`` for a pipeline file, ``"onnx"`` for an exported pipeline (its folder or its ``pipeline.json``),
    ``None`` for anything else (a checkpoint, an ONNX classifier). Reads the header only."""
    path = Path(path)
    if path.is_dir():
        return "onnx" if (path / MANIFEST_NAME).is_file() else None
    if path.name == MANIFEST_NAME and path.is_file():
        return "onnx"
    if not path.is_file():
        return None
    try:
        meta = _metadata(path)
    except VestisError:  # a damaged header: not recognisable as a pipeline
        return None
    return "bundle" if meta is not None and meta.get("format") == FORMAT else None


def load_pipeline_file(path: str | os.PathLike[str]) -> PipelineBundle:
    """Read and check a pipeline file (JSON and tensor bytes only; no code runs).

    Raises:
        VestisError: a missing, truncated or damaged file, another format, a newer version, a missing part or
            field, parts that do not fit together, or a fingerprint that does not match the parts.
    """
    path = Path(path)
    if not path.is_file():
        raise VestisError(f"{path}: pipeline file not found")
    if sniff_checkpoint(path) != "safetensors":  # also refuses an oversized or truncated header
        raise VestisError(f"{path}: not a vestis pipeline (expected a safetensors file from `vestis pipeline`)")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as e:  # safetensors raises its own error type, and OSError
        raise VestisError(f"{path}: not a readable pipeline file ({str(e)[:200]})") from None
    fmt = metadata.get("format")
    if fmt != FORMAT:
        hint = "; a checkpoint: bundle it with a second one by `vestis pipeline`" if fmt == CHECKPOINT_FORMAT else ""
        raise VestisError(f"{path}: format: expected {FORMAT!r}, got {fmt!r}{hint}")
    version = metadata.get("version", "")
    if not version.isdigit():
        raise VestisError(f"{path}: version: expected an integer, got {version!r}")
    if int(version) > VERSION:
        raise VestisError(f"{path}: pipeline version {version} is newer than this vestis ({VERSION})")
    dec = TreeDecoder(tensors, path)
    parts: dict[str, dict[str, Any]] = {}
    for part in PARTS:
        missing = [f for f in ("model", "config", "taxonomy", "preprocessing") if f"{part}.{f}" not in metadata]
        if missing:
            raise VestisError(f"{path}: {part}: missing {', '.join(missing)} (expected both checkpoints' fields)")
        state: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
        for field in PART_FIELDS:
            key = f"{part}.{field}"
            if key in metadata:
                state[field] = dec.decode(_json(metadata[key], path, key), key, 0)
        validate_state(state, Path(f"{path}: {part}"))  # the checkpoint's own checks, each message naming the part
        parts[part] = state
    if "pipeline" not in metadata:
        raise VestisError(f"{path}: pipeline: missing (expected the pipeline's settings)")
    settings = PipelineSettings.from_dict(_json(metadata["pipeline"], path, "pipeline"), source=str(path))
    check_pair(parts["detector"], parts["stage2"], source=str(path))
    expected = pipeline_fingerprint(fingerprint_of(parts["detector"]), fingerprint_of(parts["stage2"]), settings)
    if metadata.get("fingerprint") != expected:
        raise VestisError(
            f"{path}: fingerprint: expected {expected} (of the parts and settings), got "
            f"{metadata.get('fingerprint')!r}; the file was changed after it was written"
        )
    return PipelineBundle(parts["detector"], parts["stage2"], settings, expected, path)


def _json(text: str, path: Path, key: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise VestisError(f"{path}: {key}: expected JSON ({e})") from None
