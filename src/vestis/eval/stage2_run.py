"""``vestis evaluate`` of a stage-2 model (category and attributes of garment crops) on a crops manifest split.

The metrics are the hierarchical pipeline paper's (:func:`~vestis.eval.hierarchical.evaluate_stage2`): category
top-1/3/5 accuracy, attribute recall@3/5 (per item, the conventional definition; pooled; MMFashion's variant under
its own name), attribute mAP, and the rate of attributes predicted for a category they do not apply to (before
taxonomy suppression). Beside them: the same metrics of the majority reference (every crop gets the training
split's category frequencies and attribute positive rates), and per attribute the usual vestis metrics of each
block of the flattened output (:func:`~vestis.eval.evaluator.evaluate_predictions`, category by its softmax).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vestis.data.dataset import AttributeDataset
from vestis.data.manifest import Manifest
from vestis.eval.evaluator import evaluate_predictions, format_table
from vestis.eval.hierarchical import evaluate_stage2
from vestis.io import atomic_write_text
from vestis.train.stage2_task import object_type_indices, stage2_outputs

__all__ = ["evaluate_stage2_model", "format_stage2"]

_ROWS = (
    ("category top-1", "category_top1"),
    ("category top-3", "category_top3"),
    ("category top-5", "category_top5"),
    ("attribute recall@3", "attribute_recall@3"),
    ("attribute recall@5", "attribute_recall@5"),
    ("attribute recall@3 (MMFashion)", "attribute_recall_mmfashion@3"),
    ("attribute recall@5 (MMFashion)", "attribute_recall_mmfashion@5"),
    ("attribute mAP", "attribute_map"),
    ("incompatible attribute rate", "incompatible_rate"),
)


def _clean(m: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if v != v else float(v)) for k, v in m.items()}


def evaluate_stage2_model(
    model: nn.Module,
    manifest: Manifest,
    train: Manifest,
    out_dir: str | Path,
    *,
    batch_size: int,
    workers: int,
    dev: torch.device,
    extra: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Score ``manifest`` (the evaluated rows) and write ``metrics.json`` and ``report.md`` into ``out_dir``.

    Args:
        model: a loaded stage-2 model (``.layout``, ``.config``, ``.taxonomy``).
        manifest: the rows to score.
        train: the training split (the reference's frequencies).
        out_dir: the report folder.
        batch_size, workers, dev: how the model runs.
        extra: run information stored under ``run``.

    Returns:
        ``(metrics, files)``.
    """
    cfg, tax, layout = model.config, model.taxonomy, model.layout
    ds = AttributeDataset(manifest, tax, cfg.data)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    o = stage2_outputs(model, loader, object_type_indices(ds, layout), layout, cfg.data, dev)
    labels = o["labels"].astype(np.int64)
    thr = cfg.train.threshold
    metrics: dict[str, Any] = {"kind": "stage2", "num_items": len(ds)}
    metrics["stage2"] = _clean(
        evaluate_stage2(o["category"], labels, o["attributes"], o["targets"], allowed=layout.allowed, threshold=thr)
    )
    # the majority reference: the training split's category frequencies and attribute positive rates
    tr = AttributeDataset(train, tax, cfg.data).encoded
    tt = {k: torch.as_tensor(v) for k, v in tr.targets.items()}
    tm = {k: torch.as_tensor(v) for k, v in tr.masks.items()}
    cat = layout.category_targets(tt, tm).numpy()
    freq = np.bincount(cat[cat >= 0], minlength=len(layout.categories)).astype(np.float64)
    freq = freq / freq.sum() if freq.sum() else np.full(len(layout.categories), 1.0 / len(layout.categories))
    flat = layout.flat_targets(tt, tm).numpy()
    rate = np.array([(c[c >= 0] == 1).mean() if (c >= 0).any() else 0.0 for c in flat.T])
    n = len(ds)
    ref = evaluate_stage2(np.tile(freq, (n, 1)), labels, np.tile(rate, (n, 1)), o["targets"], allowed=layout.allowed,
                          threshold=thr)  # fmt: skip
    metrics["reference"] = _clean(ref)
    probs = {layout.category: o["category"], **layout.split(o["attributes"])}
    enc = ds.encoded
    per = evaluate_predictions(tax, probs, enc.targets, enc.masks, threshold=thr)
    metrics["attributes"], metrics["summary"] = per["attributes"], {**per["summary"], **metrics["stage2"]}
    metrics["run"] = extra
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics.json": out / "metrics.json", "report.md": out / "report.md"}
    atomic_write_text(files["metrics.json"], json.dumps(metrics, indent=2))
    title = f"vestis evaluation: {extra.get('model')} on {extra.get('backbone')} ({extra.get('split')})"
    atomic_write_text(files["report.md"], format_stage2(metrics, title) + "\n\n" + format_table(per) + "\n")
    return metrics, files


def format_stage2(metrics: dict[str, Any], title: str = "vestis evaluation") -> str:
    """The stage-2 metrics of :func:`evaluate_stage2_model` beside the majority reference, as Markdown."""
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [f"# {title}", "", f"{metrics['num_items']} crops.", "", "| metric | model | majority reference |",
             "|---|---|---|"]  # fmt: skip
    for name, key in _ROWS:
        lines.append(f"| {name} | {f(metrics['stage2'].get(key))} | {f(metrics['reference'].get(key))} |")
    return "\n".join(lines)
