"""Transfer learning on real data: majority reference, linear probe, ImageNet fine-tune, multi-scale ablation,
resolution, and robustness to the catalog's 60x80 px photos.

Every fine-tune is `vestis train` on the `default` preset (EfficientNet-Lite0, ImageNet weights, lower blocks
frozen and cached, the last stages + fusion + branches trained) with `train.cache_dir` shared by the runs, so the
frozen trunk is computed once per dataset and resolution and every row gets the same budget. The test split is
scored through the same frozen trunk (its maps cached like the training ones), on data no run saw::

    python bench/transfer.py                                 # both datasets, every section
    python bench/transfer.py --datasets clothing-attributes --seeds 0
    python bench/transfer.py --sections main robustness       # a subset

Rows:
- majority value: the training split's most frequent value of every attribute (reference);
- linear probe: the frozen ImageNet network's globally pooled 1280-d `top` features + scikit-learn logistic
  regression per attribute (one-vs-rest for multi-label attributes);
- from scratch: the same variant and head, every layer trained from random weights, image augmentation on, at a
  smaller budget (`--scratch-size`, `--scratch-epochs`: full training of every layer costs hours on 2 cores);
- fine-tune: the `default` preset.
Robustness: the test split re-encoded at 60x80 px (the catalog's small size) and scored by the same model; the
degradation row trains on the training split plus one degraded copy of each training image (down-scaled by a
random factor in `data.augment.degrade_scale` then JPEG-encoded at a random quality in
`data.augment.jpeg_quality`, drawn once per image: the cached trunk cannot see per-epoch image augmentation).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, fmt, write_section
from real import majority_metrics
from vestis.config import Config, load_config
from vestis.data.catalog import load_catalog
from vestis.data.dataset import AttributeDataset
from vestis.data.importers import import_dataset
from vestis.data.manifest import read_manifest, write_manifest
from vestis.data.splits import split_manifest
from vestis.data.taxonomy import Taxonomy
from vestis.eval.evaluator import evaluate_predictions
from vestis.io import atomic_write_text
from vestis.models import create_model
from vestis.train.cache import CachedTail, build_cache, cache_cut, predict_cache
from vestis.train.checkpoint import load
from vestis.train.loop import train

VARIANTS = ("baseline", "a1", "a2", "a3", "a4")
# every row trains the same blocks above the same cut (after Lite0's stage5): a multi-scale variant its last block
# (stage6); baseline also keeps the 1x1 `top`, one block more
CUT_BLOCKS = 1


def variant_overrides(variant: str) -> list[str]:
    return [f"model.name={variant}", f"train.trainable_blocks={CUT_BLOCKS + (variant == 'baseline')}"]


SECTIONS = ("main", "ablation", "resolution", "robustness")
EPOCHS = {"fashion-product": 5, "clothing-attributes": 10}


# --- data ---------------------------------------------------------------------------------------------------
def prepare(name: str, work: Path) -> Path:
    manifest = work / "data" / "manifest.csv"
    if not manifest.is_file():
        opts = {"min_count": 20, "rare": "other"} if name == "fashion-product" else {}
        print(import_dataset(name, SHARED_DATA / name, work / "data", **opts).summary(), flush=True)
    return manifest


def with_split_column(manifest: Path, cfg: Any, work: Path) -> Path:
    """The catalog with the run's split written into a ``split`` column (so derived catalogs keep it)."""
    out = work / "data" / "split.csv"
    if out.is_file():
        return out
    m, _ = load_catalog(manifest)
    parts = split_manifest(
        m, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed
    )
    rows = [_set(r, "split", split) for split, part in parts.items() for r in part.records]
    write_manifest(_manifest(m, rows), out)
    return out


def _set(record: Any, key: str, value: Any) -> Any:
    return dataclasses.replace(record, **{key: value})


def _manifest(m: Any, rows: list[Any]) -> Any:
    return dataclasses.replace(m, records=rows)


def _encode_small(src: Path, dst: Path, size: tuple[int, int], quality: int = 90) -> None:
    img = Image.open(src).convert("RGB")
    img.thumbnail(size, Image.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, quality=quality)


def derived_catalog(split_csv: Path, work: Path, kind: str, seed: int = 0) -> Path:
    """``small``: the test rows re-encoded at 60x80 px; ``degraded``: the training rows plus a degraded copy each."""
    out = work / "data" / f"{kind}.csv"
    if out.is_file():
        return out
    m = read_manifest(split_csv)
    rng = np.random.default_rng(seed)
    aug = load_config("default").data.augment
    rows = []
    for r in m.records:
        src = m.image_path(r)
        if kind == "small":
            if r.split != "test":
                rows.append(r)
                continue
            rel = Path("small") / f"{r.id}.jpg"
            _encode_small(src, work / "data" / rel, (60, 80))
            rows.append(_set(r, "image", str(rel)))
        else:
            rows.append(r)
            if r.split != "train":
                continue
            img = Image.open(src).convert("RGB")
            lo, hi = aug.degrade_scale
            f = rng.uniform(lo, hi)
            small = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)
            buf = io.BytesIO()
            small.save(buf, "JPEG", quality=int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1)))
            rel = Path("degraded") / f"{r.id}.jpg"
            (work / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.open(io.BytesIO(buf.getvalue())).resize(img.size, Image.BILINEAR).save(work / "data" / rel)
            rows.append(_set(_set(r, "image", str(rel)), "id", f"{r.id}-degraded"))
    m2 = _manifest(m, rows)
    m2 = _set(m2, "root", work / "data")
    write_manifest(m2, out)
    return out


# --- scoring ------------------------------------------------------------------------------------------------
def score(ckpt: Path, catalog: Path, store: Path, name: str = "test") -> dict[str, Any]:
    """Test-split metrics of a checkpoint, through the cached frozen trunk (the same maps the model computes)."""
    model = load(ckpt)
    cfg = model.config
    m, taxonomy = load_catalog(catalog)
    test = split_manifest(
        m, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed
    )["test"]
    ds = AttributeDataset(test, taxonomy, cfg.data)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=cfg.data.num_workers)
    cut = cache_cut(model, cfg.train)
    dev = torch.device("cpu")
    cache = build_cache(model, loader, ds.encoded, cut, cfg.data, dev, name=name, store=store, log=_quiet)
    probs = predict_cache(CachedTail(model, cut), cache, taxonomy, 128, dev)
    return evaluate_predictions(taxonomy, probs, ds.encoded.targets, ds.encoded.masks, threshold=cfg.train.threshold)


def _quiet(msg: str) -> None:
    if "read from" not in msg:
        print(f"  {msg}", flush=True)


def inference_rate(ckpt: Path, size: int, n: int = 32) -> float:
    """Eager full-model images/s at ``size`` (batch ``n``, best of 2), the deployed cost."""
    model = load(ckpt)
    x = torch.randn(n, 3, size, size)
    best = 0.0
    with torch.inference_mode():
        model(x[:4])
        for _ in range(2):
            t = time.perf_counter()
            model(x)
            best = max(best, n / (time.perf_counter() - t))
    return best


def run_row(label: str, overrides: list[str], catalog: Path, work: Path, *, cached: bool = True) -> dict[str, Any]:
    """Train the `default` preset + ``overrides`` and score its best checkpoint on the test split.

    ``cached``: the run trains on the shared frozen-trunk cache and is scored through it; otherwise (from scratch)
    it is scored with ``vestis evaluate``. The result is kept in ``work/label/result.json`` for a rerun.
    """
    run = work / label
    done = run / "result.json"
    cfg = load_config("default", [*overrides, *([f"train.cache_dir={work / 'cache'}"] if cached else [])])
    if done.is_file() and _same_config(run / "best.ckpt", cfg):
        return json.loads(done.read_text())
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    res = train(
        cfg, catalog, run, check_images=False, progress=False, log=lambda s: print(f"[{label}] {s}", flush=True)
    )
    seconds = time.perf_counter() - t0
    if cached:
        test = score(res.best, catalog, work / "cache")
    else:
        from vestis.eval.run import evaluate_checkpoint

        test = evaluate_checkpoint(res.best, catalog, run / "report", split="test").metrics
    out = {
        "label": label,
        "overrides": overrides,
        "train_seconds": seconds,
        "train_images_per_s": float(np.mean([h["images_per_s"] for h in res.history])),
        "epochs": len(res.history),
        "test": test,
    }
    atomic_write_text(done, json.dumps(out, indent=2))
    return out


def _same_config(ckpt: Path, cfg: Any) -> bool:
    """Whether the run in ``ckpt`` was trained with ``cfg`` (where the trunk cache is kept aside)."""
    from vestis.train.checkpoint import load_checkpoint

    if not ckpt.is_file():
        return False
    # through JSON: the checkpoint keeps tuples, the config may hold lists
    old, new = (json.loads(json.dumps(c)) for c in (load_checkpoint(ckpt)["config"], cfg.to_dict()))
    defaults = json.loads(json.dumps(Config().to_dict()))
    for section, values in defaults.items():  # settings added since the run was trained hold their defaults
        for k, v in values.items():
            old.setdefault(section, {}).setdefault(k, v)
    for c in (old, new):
        c["train"].pop("cache_dir", None)
        if c["train"].get("early_stop_metric") is None:  # a classifier's own metric
            c["train"]["early_stop_metric"] = "mean_micro_f1"
    return old == new


def linear_probe(catalog: Path, work: Path, size: int) -> dict[str, Any]:
    """Frozen ImageNet Lite0 -> pooled ``top`` (1280) -> logistic regression per attribute."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    done = work / "probe" / "result.json"
    if done.is_file() and json.loads(done.read_text()).get("size") == size:
        return json.loads(done.read_text())
    # the fine-tune's cut: the probe's pooled features come from the same cached maps
    cfg = load_config("default", [f"data.image_size={size}", *variant_overrides("baseline")])  # the fine-tune's cut
    m, taxonomy = load_catalog(catalog)
    parts = split_manifest(
        m, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed
    )
    model = create_model(cfg.model, taxonomy).eval()
    cut = cache_cut(model, cfg.train)
    feats, encs = {}, {}
    for split in ("train", "test"):
        ds = AttributeDataset(parts[split], taxonomy, cfg.data)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=cfg.data.num_workers)
        cache = build_cache(
            model, loader, ds.encoded, cut, cfg.data, torch.device("cpu"), name=split, store=work / "cache", log=_quiet
        )
        out = []
        with torch.inference_mode():
            for s in range(0, len(cache), 128):
                c, t = cache.inputs(torch.arange(s, min(s + 128, len(cache))), torch.device("cpu"))
                out.append(model.backbone.forward_from(c, cut, t)["top"].mean((2, 3)).numpy())
        feats[split], encs[split] = np.concatenate(out), ds.encoded
    scaler = StandardScaler().fit(feats["train"])
    xtr, xte = scaler.transform(feats["train"]), scaler.transform(feats["test"])
    probs = {}
    for a in taxonomy:
        mtr = encs["train"].masks[a.name]
        ytr = encs["train"].targets[a.name][mtr]
        p = np.zeros((len(xte), a.num_values), np.float32)
        if a.kind == "single":
            clf = LogisticRegression(max_iter=300, C=0.5).fit(xtr[mtr], ytr)
            p[:, clf.classes_] = clf.predict_proba(xte)
        else:
            keep = [j for j in range(a.num_values) if 0 < ytr[:, j].sum() < len(ytr)]
            if keep:
                clf = OneVsRestClassifier(LogisticRegression(max_iter=300, C=0.5)).fit(xtr[mtr], ytr[:, keep])
                p[:, keep] = clf.predict_proba(xte)
        probs[a.name] = p
    metrics = evaluate_predictions(taxonomy, probs, encs["test"].targets, encs["test"].masks)
    out = {"size": size, "test": metrics}
    atomic_write_text(done, json.dumps(out, indent=2))
    return out


# --- tables -------------------------------------------------------------------------------------------------
def attr_table(rows: list[tuple[str, dict[str, Any]]], taxonomy: Taxonomy) -> str:
    """Per attribute: accuracy / weighted F1 / macro-F1 / micro-F1@0.3 (single-label), micro / macro (multi)."""
    head = ["row", *taxonomy.names, "mean acc", "mean wF1", "mean micro-F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in rows:
        cells = [label]
        for a in taxonomy:
            r = m["attributes"][a.name]
            if a.kind == "single":
                cells.append(
                    f"{fmt(r.get('accuracy'))} / {fmt(r.get('weighted_f1'))} / {fmt(r['macro_f1'])} / "
                    f"{fmt(r['micro_f1'])}"
                )
            else:
                cells.append(f"– / – / {fmt(r['macro_f1'])} / {fmt(r['micro_f1'])}")
        s = m["summary"]
        cells += [fmt(s.get("mean_accuracy")), fmt(s.get("mean_weighted_f1")), fmt(s["mean_micro_f1"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_sd(xs: list[float | None]) -> str:
    v = [x for x in xs if x is not None]
    if not v:
        return "–"
    return f"{np.mean(v):.3f}" + (f" ± {np.std(v):.3f}" if len(v) > 1 else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(EPOCHS))
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--work", type=Path, default=Path("/tmp/vestis-bench/transfer"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="ablation variants")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--low-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--scratch-size", type=int, default=128)
    p.add_argument("--scratch-epochs", type=int, default=3)
    p.add_argument("--no-degraded", action="store_true", help="robustness without the degraded-copies row")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    default = load_config("default")
    best_variant = default.model.name
    for name in a.datasets:
        if not (SHARED_DATA / name).exists():
            print(f"skipping {name}: real data not found at {SHARED_DATA / name}")
            continue
        work = a.work / name
        epochs = a.epochs or EPOCHS[name]
        manifest = prepare(name, work)
        catalog = with_split_column(manifest, default, work)
        _, taxonomy = load_catalog(catalog)
        common = [f"data.image_size={a.size}", f"train.epochs={epochs}"]
        majority = majority_metrics(catalog, {"val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0})
        n_test = sum(r.split == "test" for r in read_manifest(catalog).records)
        intro = (
            f"Dataset `{name}` (../shared/data), `vestis import`"
            f"{' (values under 20 examples folded into other)' if name == 'fashion-product' else ''}, group-aware "
            f"80/10/10 split, {n_test} test photos no run saw. Fine-tunes: `default` preset (EfficientNet-Lite0, "
            "ImageNet weights, Lite0's stage6 (and `top` for baseline) + fusion + branches trained on the cached "
            f"trunk), {a.size} px, {epochs} epochs. Cells: accuracy / weighted F1 / macro-F1 / micro-F1@0.3 "
            "(single-label), – / – / macro-F1 / micro-F1@0.3 (multi-label).\n\n"
        )
        results: dict[str, Any] = {}
        if "ablation" in a.sections or "main" in a.sections:
            # multi-scale variants first: their cache holds the taps below the cut, which baseline then reads
            variants = [v for v in (*VARIANTS[1:], VARIANTS[0]) if v in a.variants]
            variants = variants if "ablation" in a.sections else [best_variant]
            for v in variants:
                for s in a.seeds:
                    results[(v, s)] = run_row(
                        f"{v}-s{s}", [*common, *variant_overrides(v), f"train.seed={s}"], catalog, work
                    )
        if "ablation" in a.sections:
            lines = [
                "| variant | mean micro-F1 | small-ROI micro-F1 | large-ROI micro-F1 | mean accuracy | "
                "mean weighted F1 | train img/s (cached) |",
                "|---|---|---|---|---|---|---|",
            ]
            score_of: dict[str, float] = {}
            for v in variants[-1:] + variants[:-1] if variants[-1] == "baseline" else variants:
                rs = [results[(v, s)] for s in a.seeds]
                summ = [r["test"]["summary"] for r in rs]
                score_of[v] = float(np.mean([x["mean_micro_f1"] for x in summ]))
                lines.append(
                    f"| `{v}` | {_mean_sd([x['mean_micro_f1'] for x in summ])} | "
                    f"{_mean_sd([x['mean_micro_f1_small_roi'] for x in summ])} | "
                    f"{_mean_sd([x['mean_micro_f1_large_roi'] for x in summ])} | "
                    f"{_mean_sd([x['mean_accuracy'] for x in summ])} | "
                    f"{_mean_sd([x['mean_weighted_f1'] for x in summ])} | "
                    f"{np.mean([r['train_images_per_s'] for r in rs]):.0f} |"
                )
            base = score_of["baseline"]
            winner = max(score_of, key=score_of.get)
            claimed = [v for v in ("a3", "a4") if v in score_of]
            beat = [v for v in claimed if score_of[v] > base]
            gains = ", ".join(f"{v} {score_of[v] - base:+.3f}" for v in score_of if v != "baseline")
            verdict = (
                "The paper claims that approaches 3 and 4 beat the baseline (its Table 1 has approach 1 below it). "
                f"Here {len(beat)} of {len(claimed)} ({', '.join(beat) or 'neither'}) beat it on mean micro-F1 "
                f"({gains}). Best: `{winner}` (mean over seeds {', '.join(map(str, a.seeds))}); the `default` "
                f"preset uses `{best_variant}`."
                + (
                    ""
                    if set(a.variants) == set(VARIANTS)
                    else f" Not run here: {sorted(set(VARIANTS) - set(a.variants))}."
                )
            )
            body = intro + "\n".join(lines) + "\n\n" + verdict
            print(body)
            if not a.no_write:
                write_section(f"transfer-ablation-{name}", f"Pretrained multi-scale ablation: {name}", body)
        if "main" in a.sections:
            probe = linear_probe(catalog, work, a.size)
            scr = (
                run_row(
                    f"scratch-{best_variant}",
                    [
                        f"model.name={best_variant}",
                        "model.pretrained=null",
                        "train.trainable_blocks=-1",
                        "train.cache_features=false",
                        "train.lr=3e-3",
                        f"data.image_size={a.scratch_size}",
                        f"train.epochs={a.scratch_epochs}",
                    ],
                    catalog,
                    work,
                )
                if a.scratch_epochs > 0
                else None
            )
            ft = results[(best_variant, a.seeds[0])]
            rows = [("majority value (reference)", majority), ("linear probe (frozen ImageNet Lite0)", probe["test"])]
            if scr is not None:
                rows.append(
                    (
                        f"from scratch ({a.scratch_size} px, {a.scratch_epochs} epochs, "
                        f"{scr['train_seconds'] / 60:.0f} min)",
                        scr["test"],
                    )
                )
            rows.append((f"ImageNet fine-tune `{best_variant}` ({ft['train_seconds'] / 60:.1f} min)", ft["test"]))
            body = intro + attr_table(rows, taxonomy)
            print(body)
            if not a.no_write:
                write_section(f"transfer-main-{name}", f"Transfer learning: {name}", body)
        if "resolution" in a.sections:
            lines = [
                "| resolution | mean accuracy | mean weighted F1 | mean micro-F1 | train img/s (cached tail) | "
                "inference img/s (full model, eager) |",
                "|---|---|---|---|---|---|",
            ]
            for size in (a.low_size, a.size):
                # the full-size row is the main fine-tune itself (same overrides, same result)
                label = f"{best_variant}-s{a.seeds[0]}" if size == a.size else f"{best_variant}-{size}px"
                over = [f"data.image_size={size}", f"train.epochs={epochs}", *variant_overrides(best_variant)]
                r = run_row(label, [*over, f"train.seed={a.seeds[0]}"] if size == a.size else over, catalog, work)
                s = r["test"]["summary"]
                ckpt = work / label / "best.ckpt"
                lines.append(
                    f"| {size} px | {fmt(s['mean_accuracy'])} | {fmt(s['mean_weighted_f1'])} | "
                    f"{fmt(s['mean_micro_f1'])} | {r['train_images_per_s']:.0f} | "
                    f"{inference_rate(ckpt, size):.0f} |"
                )
            body = intro + "\n".join(lines)
            print(body)
            if not a.no_write:
                write_section(f"transfer-resolution-{name}", f"Resolution trade-off: {name}", body)
        if "robustness" in a.sections:
            small = derived_catalog(catalog, work, "small")
            plain = run_row(
                f"{best_variant}-s{a.seeds[0]}",
                [*common, *variant_overrides(best_variant), f"train.seed={a.seeds[0]}"],
                catalog,
                work,
            )
            ck_plain = work / f"{best_variant}-s{a.seeds[0]}" / "best.ckpt"
            rows = [
                ("fine-tune, test as shot", plain["test"]),
                ("fine-tune, test at 60x80", score(ck_plain, small, work / "cache", name="test-60x80")),
            ]
            if not a.no_degraded:
                degraded = derived_catalog(catalog, work, "degraded")
                deg = run_row(f"{best_variant}-degraded", [*common, *variant_overrides(best_variant)], degraded, work)
                ck_deg = work / f"{best_variant}-degraded" / "best.ckpt"
                rows += [
                    ("+ degraded copies, test as shot", deg["test"]),
                    ("+ degraded copies, test at 60x80", score(ck_deg, small, work / "cache", name="test-60x80")),
                ]
            drops = [
                rows[i][1]["summary"]["mean_accuracy"] - rows[i + 1][1]["summary"]["mean_accuracy"]
                for i in range(0, len(rows), 2)
            ]
            body = (
                intro
                + attr_table(rows, taxonomy)
                + f"\n\nThe shift to 60x80 px costs {drops[0] * 100:.1f} points of mean accuracy"
                + (f" without and {drops[1] * 100:.1f} with the degraded copies" if len(drops) > 1 else "")
                + " (target: < 5)."
            )
            print(body)
            if not a.no_write:
                write_section(f"transfer-robustness-{name}", f"Robustness to 60x80 px photos: {name}", body)


if __name__ == "__main__":
    main()
