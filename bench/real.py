"""First real-data benchmark: the default model and the best multi-scale variant on both real datasets.

Each dataset is imported with ``vestis import`` (Fashion Product Images: values with fewer than 20 examples
folded into ``other``), split group-aware by the train loop, trained with a fixed budget and evaluated on the
test split. A reference row that any model must beat predicts the training split's majority value of every
attribute (for multi-label attributes: every value present in more than half of the labelled training rows,
else the most frequent one)::

    python bench/real.py                         # both datasets
    python bench/real.py --datasets clothing-attributes --variant a4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, fmt, train_and_evaluate, write_section
from vestis.config import load_config
from vestis.data.catalog import load_catalog
from vestis.data.dataset import encode_targets
from vestis.data.importers import import_dataset
from vestis.data.splits import split_manifest
from vestis.eval.evaluator import evaluate_predictions

BUDGETS = {"fashion-product": 4, "clothing-attributes": 10}  # epochs: each dataset well within 30 min on 2 cores


def majority_metrics(manifest_path: Path, split: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the majority-value predictor on the test split, with the same split and evaluator as the models.

    Args:
        manifest_path: the catalog.
        split: the trained run's split settings (``val_fraction``, ``test_fraction``, ``split_seed``).
    """
    manifest, taxonomy = load_catalog(manifest_path)
    parts = split_manifest(
        manifest, val_fraction=split["val_fraction"], test_fraction=split["test_fraction"], seed=split["split_seed"]
    )
    train_enc = encode_targets(parts["train"].records, taxonomy)
    test_enc = encode_targets(parts["test"].records, taxonomy)
    n = len(parts["test"].records)
    probs = {}
    for attr in taxonomy:
        t, m = train_enc.targets[attr.name], train_enc.masks[attr.name]
        p = np.zeros(attr.num_values, dtype=np.float32)
        if attr.kind == "single":
            p[np.bincount(t[m], minlength=attr.num_values).argmax()] = 1.0
        else:
            share = t[m].mean(0) if m.any() else np.zeros(attr.num_values)
            p[share > 0.5] = 1.0
            p[share.argmax()] = 1.0
        probs[attr.name] = np.tile(p, (n, 1))
    return evaluate_predictions(taxonomy, probs, test_enc.targets, test_enc.masks)


def best_variant(ablation_dir: Path) -> str | None:
    """The multi-scale variant (a1-a4) with the best mean micro-F1 in a finished synthetic ablation, if any."""
    scores: dict[str, list[float]] = {}
    for f in ablation_dir.glob("a?-s*/result.json"):
        r = json.loads(f.read_text())
        scores.setdefault(r["model"], []).append(r["summary"]["mean_micro_f1"])
    if set(scores) != {"a1", "a2", "a3", "a4"}:
        return None  # not finished: no claim about which is best
    return max(scores, key=lambda v: sum(scores[v]) / len(scores[v]))


def table(rows: list[tuple[str, dict[str, Any]]], attrs: list[str]) -> str:
    head = ["model", *attrs, "**mean**"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, metrics in rows:
        a = metrics["attributes"]
        cells = [name] + [
            fmt(a[x]["micro_f1"]) + (f" / {fmt(a[x]['accuracy'])}" if a[x].get("accuracy") is not None else "")
            for x in attrs
        ]
        cells.append(f"**{fmt(metrics['summary']['mean_micro_f1'])}**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(BUDGETS))
    p.add_argument("--work", type=Path, default=Path("/tmp/vestis-bench/real"))
    p.add_argument("--variant", default=None, help="multi-scale variant to compare (default: best of the ablation)")
    p.add_argument("--ablation-work", type=Path, default=Path("/tmp/vestis-bench/ablation/synth"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=None, help="override the per-dataset budget")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    default = load_config("scratch").model
    for name in a.datasets:
        src = SHARED_DATA / name
        if not src.exists():
            print(f"skipping {name}: real data not found at {src}")
            continue
        work = a.work / name
        manifest = work / "data" / "manifest.csv"
        if not manifest.is_file():
            opts = {"min_count": 20, "rare": "other"} if name == "fashion-product" else {}
            print(import_dataset(name, src, work / "data", **opts).summary())
        epochs = a.epochs or BUDGETS.get(name, 6)
        common = [f"data.image_size={a.size}", f"train.epochs={epochs}"]
        runs = [
            (f"default (`{default.name}`)", train_and_evaluate("default", common, manifest, work, preset="scratch"))
        ]
        # chosen after the default run, so a synthetic ablation running meanwhile can finish first
        from_ablation = best_variant(a.ablation_work) if a.variant is None else None
        variant = a.variant or from_ablation or "a4"
        if variant == default.name:
            variant, from_ablation = "baseline", None  # the default is the best multi-scale variant: contrast it
        runs.append(
            (
                f"`{variant}`",
                train_and_evaluate(variant, [f"model.name={variant}", *common], manifest, work, preset="scratch"),
            )
        )
        _, taxonomy = load_catalog(manifest)
        rows = [("majority value (reference)", majority_metrics(manifest, runs[0][1]["split"]))]
        rows += [(label, {"attributes": r["attributes"], "summary": r["summary"]}) for label, r in runs]
        minutes = ", ".join(f"{label} {r['train_seconds'] / 60:.1f} min" for label, r in runs)
        body = (
            f"Dataset: `{name}` ({src.name} in ../shared/data), imported with `vestis import`"
            f"{' (values under 20 examples folded into other)' if name == 'fashion-product' else ''}; group-aware "
            f"80/10/10 split; test split of {runs[0][1]['num_test']} items. `{default.backbone}` from scratch at "
            f"{a.size} px, {epochs} epochs, `scratch` preset; training time: {minutes}. Cells: micro-F1 at 0.3 "
            "(and accuracy for single-label attributes). "
            f"The comparison variant is `{variant}`"
            + (" (best multi-scale variant of the synthetic ablation)" if from_ablation else "")
            + ".\n\n"
            + table(rows, taxonomy.names)
        )
        print(body)
        if not a.no_write:
            print(f"wrote {write_section(f'real-{name}', f'Real data: {name}', body)}")


if __name__ == "__main__":
    main()
