"""Evaluate a checkpoint, an ONNX export or a combined per-attribute model on a manifest split and write the report
(what ``vestis evaluate`` runs)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from vestis.config import Config
from vestis.data.catalog import TAXONOMY_FILENAME
from vestis.data.dataset import AttributeDataset, encode_targets
from vestis.data.manifest import SPLITS, Manifest, read_manifest
from vestis.data.splits import split_manifest
from vestis.data.taxonomy import Taxonomy, load_taxonomy
from vestis.data.triplets import value_codes
from vestis.data.validate import clean_catalog, validate_manifest
from vestis.errors import VestisError
from vestis.eval.bootstrap import BOOTSTRAP_MAX_ITEMS, bootstrap_ci
from vestis.eval.evaluator import evaluate_predictions
from vestis.eval.reference import reference_probs, value_frequencies
from vestis.eval.report import write_report
from vestis.eval.report_sections import meta_breakdowns
from vestis.eval.substitutes import retrieval_metrics
from vestis.inference.batch import embed_loader, predict_loader
from vestis.inference.combined import is_combined
from vestis.io import atomic_write_text
from vestis.models.embedding import EmbeddingModel
from vestis.train.checkpoint import load

__all__ = [
    "EvaluationResult",
    "check_taxonomy",
    "evaluate_checkpoint",
    "evaluate_predictor",
    "predictor_config",
    "predictor_probs",
    "predictor_rows",
]


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    files: dict[str, Path]
    num_items: int
    kind: str = "classification"  # "embedding": the substitute-retrieval metrics; "stage2": crops (hierarchical)


def check_taxonomy(
    manifest_path: Path, taxonomy: str | os.PathLike[str] | None, ckpt_tax: Taxonomy, *, subset: bool = False
) -> Taxonomy | None:
    """The manifest's taxonomy (given, or beside it) must be the one the model was trained on; it is returned
    (``None`` when no taxonomy is given and none is beside the manifest: the checkpoint's is the reference).

    ``subset`` (a combined per-attribute model, which may cover some of the catalog's attributes): each of the
    model's attributes must be in the manifest's taxonomy with the same kind and values; the others are not scored.
    """
    path = Path(taxonomy) if taxonomy is not None else manifest_path.parent / TAXONOMY_FILENAME
    if taxonomy is None and not path.is_file():
        return None
    other = load_taxonomy(path)
    ours = {a.name: (a.kind, a.values) for a in ckpt_tax}
    theirs = {a.name: (a.kind, a.values) for a in other}
    if subset:
        missing = sorted(k for k in ours if k not in theirs)
        if missing:
            raise VestisError(f"{path}: no attribute(s) {missing} of the model; the taxonomy has {other.names}")
        diff = sorted(k for k in ours if ours[k] != theirs[k])
        if diff:
            raise VestisError(f"{path}: attribute(s) {diff} differ from the model's (kind or values)")
    elif ours != theirs:
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise VestisError(f"{path}: taxonomy differs from the checkpoint's in attribute(s) {diff}")
    return other


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    taxonomy: str | os.PathLike[str] | None = None,
    split: str = "test",
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    skip_invalid: bool = False,
    trust_checkpoint: bool = False,
) -> EvaluationResult:
    """Predict ``split`` of ``data`` with the checkpoint and write metrics.json, report.md/html and figures.

    An embedding checkpoint (``csn``, ``triplet``, ``datrnet``...) is scored by the substitute-retrieval protocol
    instead (:func:`~vestis.eval.substitutes.retrieval_metrics`: the split is the gallery and the queries, the
    prototypes come from the training split), plus its recognition columns' metrics when it has them; it writes
    metrics.json and report.md (``kind`` of the result: ``embedding``).

    An ``.onnx`` file (fp32 or int8, from ``vestis export``) is run through ONNX Runtime
    (:class:`~vestis.inference.predictor.Predictor`); its split is recomputed from the data settings in its
    ``vestis.config`` metadata, so a quantised model is scored on the same test rows as its checkpoint.

    A combined model (``combined.json`` of ``vestis train --per-attribute``, or its run folder) is built as
    ``vestis predict`` builds it (:mod:`vestis.inference.combined`: each attribute is its member's prediction, with
    its calibrated thresholds) and scored like an ONNX file, its split recomputed from the members' data settings
    (the per-attribute run trains every member on the same split).

    The split is recomputed with the checkpoint's data settings, so ``test`` is exactly the rows the training run
    held out. ``split="all"`` evaluates every row. ``trust_checkpoint`` also loads an old pickle
    checkpoint, which runs any code the file holds.
    """
    if split not in (*SPLITS, "all"):
        raise VestisError(f"--split {split!r}: expected one of {[*SPLITS, 'all']}")
    if is_combined(checkpoint):  # combined.json of `vestis train --per-attribute`, or its run folder
        return _evaluate_combined(
            Path(checkpoint), Path(data), out_dir, taxonomy, split, batch_size, skip_invalid, device, trust_checkpoint
        )
    if Path(checkpoint).suffix.lower() == ".onnx":
        return _evaluate_onnx(Path(checkpoint), Path(data), out_dir, taxonomy, split, batch_size, skip_invalid)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load(checkpoint, map_location=dev, trust=trust_checkpoint)
    cfg, tax = model.config, model.taxonomy
    data = Path(data)
    check_taxonomy(data, taxonomy, tax)
    manifest = read_manifest(data)
    problems = validate_manifest(manifest, tax, check_images=True, max_pixels=cfg.data.max_pixels)
    manifest = clean_catalog(manifest, tax, problems, skip_invalid=skip_invalid, skipped_path=None)
    full = manifest
    if split != "all":
        manifest = split_manifest(
            manifest,
            val_fraction=cfg.data.val_fraction,
            test_fraction=cfg.data.test_fraction,
            seed=cfg.data.split_seed,
        )[split]
    if not manifest.records:
        raise VestisError(f"{data}: the {split} split is empty")
    if isinstance(model, EmbeddingModel):
        return _evaluate_embedding(model, full, manifest, out_dir, checkpoint, data, split, batch_size, workers, dev)
    if getattr(model, "layout", None) is not None:  # a stage-2 model of the hierarchical pipeline
        from vestis.eval.stage2_run import evaluate_stage2_model

        _, train_rows = _splits(full, cfg, split)
        info = {"checkpoint": str(checkpoint), "data": str(data), "split": split, "model": cfg.model.name,
                "backbone": cfg.model.backbone, "image_size": cfg.data.image_size}  # fmt: skip
        metrics, files = evaluate_stage2_model(
            model, manifest, train_rows, out_dir, batch_size=batch_size, workers=workers, dev=dev, extra=info
        )
        return EvaluationResult(metrics=metrics, files=files, num_items=len(manifest.records), kind="stage2")
    ds = AttributeDataset(manifest, tax, cfg.data)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    probs = predict_loader(model, loader, cfg.data, tax, dev)
    thresholds = {k: np.asarray(v, dtype=np.float64) for k, v in (model.thresholds or {}).items()} or None
    train = split_manifest(
        full, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed
    )["train"]
    extra = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "model": cfg.model.name,
        "backbone": cfg.model.backbone,
        "image_size": cfg.data.image_size,
        "train": {"epochs": cfg.train.epochs, "optimizer": cfg.train.optimizer, "lr": cfg.train.lr},
    }
    return report_predictions(
        probs, manifest, train, tax, out_dir, threshold=cfg.train.threshold, thresholds=thresholds,
        checkpoint_metrics=getattr(model, "metrics", None) or {}, history_path=Path(checkpoint).parent / "history.json",
        seed=cfg.data.split_seed, max_pixels=cfg.data.max_pixels, extra=extra,
        title=f"vestis evaluation: {cfg.model.name} on {cfg.model.backbone} ({split})",
    )  # fmt: skip


def _splits(manifest: Manifest, cfg: Config, split: str) -> tuple[Manifest, Manifest]:
    """(the evaluated rows, the training split) under the model's data settings."""
    parts = split_manifest(
        manifest, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed
    )
    return (manifest if split == "all" else parts[split]), parts["train"]


def _evaluate_onnx(
    path: Path,
    data: Path,
    out_dir: str | os.PathLike[str],
    taxonomy: str | os.PathLike[str] | None,
    split: str,
    batch_size: int,
    skip_invalid: bool,
) -> EvaluationResult:
    from vestis.inference.predictor import Predictor

    pred = Predictor.from_path(path)
    if not pred.config:
        raise VestisError(f"{path}: no vestis.config metadata, so its data split cannot be recomputed; re-export it")
    quant = pred.info.get("quantization", "none")
    run = {"backend": "onnx", "quantization": quant, "fingerprint": pred.fingerprint or "not recorded"}
    what = f"ONNX {quant}"
    return evaluate_predictor(pred, path, data, out_dir, taxonomy, split, batch_size, skip_invalid, run, what)


def _evaluate_combined(
    path: Path,
    data: Path,
    out_dir: str | os.PathLike[str],
    taxonomy: str | os.PathLike[str] | None,
    split: str,
    batch_size: int,
    skip_invalid: bool,
    device: str | None,
    trust_checkpoint: bool,
) -> EvaluationResult:
    from vestis.inference.predictor import Predictor

    pred = Predictor.from_path(path, device, trust_checkpoint=trust_checkpoint)  # members checked as predict does
    if not pred.config:
        raise VestisError(f"{path}: its first member checkpoint records no config, so the split cannot be recomputed")
    members = pred.info.get("members", {})
    run = {
        "backend": "torch", "device": pred.device, "fingerprint": pred.fingerprint or "not recorded",
        "members": ", ".join(f"{a}: {fp}" for a, fp in members.items()),
        "backbone groups": "; ".join(", ".join(g) for g in pred.info.get("backbone_groups", [])),
    }  # fmt: skip
    what = f"combined, {len(members)} per-attribute models"
    return evaluate_predictor(
        pred, path, data, out_dir, taxonomy, split, batch_size, skip_invalid, run, what, combined=True
    )


def predictor_config(pred: Any, path: Path) -> Config:
    """The training configuration a :class:`~vestis.inference.predictor.Predictor` carries (its data split)."""
    return Config.from_dict(pred.config, source=f"{path} (vestis.config)")


def predictor_rows(
    cfg: Config,
    tax: Taxonomy,
    data: Path,
    taxonomy: str | os.PathLike[str] | None,
    split: str,
    skip_invalid: bool,
    *,
    combined: bool = False,
) -> tuple[Manifest, Manifest]:
    """(the validated rows of ``split`` of ``data``, its training split) under the model's data settings.

    ``combined`` (a per-attribute model, maybe of some of the catalog's attributes): the data's taxonomy need only
    hold the model's attributes, and the rows are validated against the data's taxonomy as the per-attribute run
    validated them, so the split keeps the run's rows."""
    data_tax = check_taxonomy(data, taxonomy, tax, subset=combined)
    rules = data_tax if combined and data_tax is not None else tax
    manifest = read_manifest(data)
    problems = validate_manifest(manifest, rules, check_images=True, max_pixels=cfg.data.max_pixels)
    manifest = clean_catalog(manifest, rules, problems, skip_invalid=skip_invalid, skipped_path=None)
    rows, train = _splits(manifest, cfg, split)
    if not rows.records:
        raise VestisError(f"{data}: the {split} split is empty")
    return rows, train


def predictor_probs(pred: Any, rows: Manifest, batch_size: int) -> dict[str, np.ndarray]:
    """``{attribute: (N, K) float64}``: the predictor's probabilities on the images of ``rows``, in order."""
    from vestis.data.images import load_image

    chunks: dict[str, list[np.ndarray]] = {a.name: [] for a in pred.taxonomy}
    for start in range(0, len(rows.records), batch_size):
        batch = rows.records[start : start + batch_size]
        imgs = [load_image(rows.image_path(r), max_pixels=pred.max_pixels) for r in batch]
        for name, p in pred.predict_arrays(pred.preprocess(imgs)).items():
            chunks[name].append(np.asarray(p, dtype=np.float64))
    return {k: np.concatenate(v) for k, v in chunks.items()}


def evaluate_predictor(
    pred: Any,
    path: Path,
    data: Path,
    out_dir: str | os.PathLike[str],
    taxonomy: str | os.PathLike[str] | None,
    split: str,
    batch_size: int,
    skip_invalid: bool,
    run: dict[str, Any],
    what: str,
    *,
    combined: bool = False,
) -> EvaluationResult:
    """The report of a :class:`~vestis.inference.predictor.Predictor` (an ONNX export or a combined model) on
    ``split`` of ``data``, its split recomputed from the data settings of the configuration it carries.

    ``combined``: a per-attribute model, scored on its own attributes of the data (see :func:`predictor_rows`)."""
    cfg = predictor_config(pred, path)
    tax = pred.taxonomy
    rows, train = predictor_rows(cfg, tax, data, taxonomy, split, skip_invalid, combined=combined)
    probs = predictor_probs(pred, rows, batch_size)
    thresholds = {k: np.asarray(v, dtype=np.float64) for k, v in pred.thresholds.items()} or None
    extra = {
        "model file": str(path), "data": str(data), "split": split, **run,
        "model": cfg.model.name, "backbone": cfg.model.backbone, "image_size": pred.image_size,
    }  # fmt: skip
    return report_predictions(
        probs, rows, train, tax, out_dir, threshold=cfg.train.threshold, thresholds=thresholds, checkpoint_metrics={},
        history_path=None, seed=cfg.data.split_seed, max_pixels=pred.max_pixels, extra=extra,
        title=f"vestis evaluation: {cfg.model.name} on {cfg.model.backbone}, {what} ({split})",
    )  # fmt: skip


def _read_history(path: Path) -> list[dict[str, Any]] | None:
    """The run's history.json, or ``None`` when absent or unreadable (the report then says so)."""
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return history if isinstance(history, list) and all(isinstance(r, dict) for r in history) else None


def report_predictions(
    probs: dict[str, np.ndarray],
    manifest: Manifest,
    train: Manifest,
    tax: Taxonomy,
    out_dir: str | os.PathLike[str],
    *,
    threshold: float,
    thresholds: dict[str, np.ndarray] | None,
    checkpoint_metrics: dict[str, Any],
    history_path: Path | None,
    seed: int,
    max_pixels: int,
    extra: dict[str, Any],
    title: str,
) -> EvaluationResult:
    """Score a classifier's probabilities on ``manifest`` and write the full report (checkpoint and ONNX paths).

    Adds to :func:`~vestis.eval.evaluator.evaluate_predictions`' dict: ``reference`` (the majority-value
    predictor fitted on ``train``), ``summary_ci`` (bootstrap, under 2000 items), ``breakdowns`` (per ``meta_``
    column), and the checkpoint's ``selection`` and ``threshold_choice`` records where it has them.
    """
    enc = encode_targets(manifest.records, tax)
    metrics = evaluate_predictions(tax, probs, enc.targets, enc.masks, threshold=threshold, thresholds=thresholds)
    if train.records:
        train_enc = encode_targets(train.records, tax)
        ref = reference_probs(value_frequencies(tax, train_enc.targets, train_enc.masks), len(enc))
        ref = {k: v for k, v in ref.items() if k in probs}
        metrics["reference"] = evaluate_predictions(tax, ref, enc.targets, enc.masks, threshold=threshold)
    if len(enc) < BOOTSTRAP_MAX_ITEMS:
        metrics["summary_ci"] = bootstrap_ci(tax, probs, enc.targets, enc.masks, threshold=threshold, seed=seed)
    if manifest.meta_columns:
        meta = {c: [r.meta.get(c) for r in manifest.records] for c in manifest.meta_columns}
        metrics["breakdowns"] = meta_breakdowns(tax, probs, enc.targets, enc.masks, meta, threshold)
    for key in ("selection", "threshold_choice"):
        if key in checkpoint_metrics:
            metrics[key] = checkpoint_metrics[key]
    files = write_report(
        metrics, out_dir, probs=probs, targets=enc.targets, masks=enc.masks, taxonomy=tax, title=title, extra=extra,
        history=_read_history(history_path) if history_path is not None else None,
        images=[manifest.image_path(r) for r in manifest.records], max_pixels=max_pixels,
    )  # fmt: skip
    return EvaluationResult(metrics=metrics, files=files, num_items=len(enc))


def _evaluate_embedding(
    model: EmbeddingModel,
    full: Any,
    manifest: Any,
    out_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    data: Path,
    split: str,
    batch_size: int,
    workers: int,
    dev: torch.device,
) -> EvaluationResult:
    cfg, tax = model.config, model.taxonomy

    def run(m: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any]:
        ds = AttributeDataset(m, tax, cfg.data)
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
        return (*embed_loader(model, loader, cfg.data, tax, dev), ds.encoded)

    emb, probs, enc = run(manifest)
    # prototypes: the training split's mean sub-embeddings (the split itself when it is the training one)
    train = split_manifest(
        full, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed
    )["train"]
    ref_emb, _, ref_enc = (emb, probs, enc) if split in ("train", "all") or not train.records else run(train)
    metrics: dict[str, Any] = retrieval_metrics(
        emb, value_codes(tax, enc), ref_emb, value_codes(tax, ref_enc), tax.names, seed=cfg.data.split_seed
    )
    metrics["num_items"] = len(enc)
    if probs:
        rec = evaluate_predictions(tax, probs, enc.targets, enc.masks, threshold=cfg.train.threshold)
        metrics["recognition"] = rec
    metrics["run"] = {"checkpoint": str(checkpoint), "data": str(data), "split": split, "model": cfg.model.name,
                      "backbone": cfg.model.backbone, "image_size": cfg.data.image_size}  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics.json": out / "metrics.json", "report.md": out / "report.md"}
    atomic_write_text(files["metrics.json"], json.dumps(metrics, indent=2))
    atomic_write_text(files["report.md"], format_retrieval(metrics, f"vestis evaluation: {cfg.model.name} ({split})"))
    return EvaluationResult(metrics=metrics, files=files, num_items=len(enc), kind="embedding")


def format_retrieval(metrics: dict[str, Any], title: str | None = None) -> str:
    """The retrieval metrics of :func:`evaluate_checkpoint` on an embedding checkpoint, as Markdown."""

    def f(x: Any) -> str:
        return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    s = metrics["summary"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| metric | value |", "|---|---|", *(f"| {k} | {f(v)} |" for k, v in s.items()), ""]
    names = list(metrics["attributes"])
    cols = list(next(iter(metrics["attributes"].values()))) if names else []
    lines += ["| attribute | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {a} | " + " | ".join(f(metrics["attributes"][a][c]) for c in cols) + " |" for a in names]
    return "\n".join(lines) + "\n"
