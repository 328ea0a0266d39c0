"""Attribute-aware embeddings, the retrieval papers' comparison (DAtRNet Table 3 shape) on three catalogs.

Rows (every model trained by ``vestis train`` on the same split, scored on the test split no run saw):
- attribute-based: the per-attribute branch activations of the ``default`` classifier (a fine-tuned
  EfficientNet-Lite0) as sub-embeddings, the papers' "attribute-based" row;
- standard triplet network (``triplet``): one attribute-unaware embedding trained on every condition's triplets;
- CSN, fixed disjoint masks (``csn_fixed``) and learned masks (``csn``), retrieval loss only;
- multi-column + CSN, joint (``csn``, ``model.columns=multi``): alpha * recognition + beta * retrieval;
- DAtRNet (``datrnet``, batch-hard mining as the paper) on its own ASE trunk from random weights, and on the
  pretrained Lite0 trunk (its ablation's "pretrained trunk replacing MSF"), there also with batch-all mining;
- CSN with batch-hard mining, to show what the csn preset's batch-all mining buys.
The CSN family and the pretrained DAtRNet share the classifier's frozen, cached Lite0 trunk (the last block and
the heads train), so they differ only above it.

Metrics (vestis.eval.retrieval): query and query + manipulation top-30 accuracy (a neighbour whose full label vector
equals the query's / the manipulated target vector; prototypes = mean training sub-embedding per value, replacing
the query's sub-embedding of the manipulated attribute), NDCG@30, R@5/10/20 (002: one of the top K shares the
query's value in the condition, mean over conditions), triplet accuracy (002's builder on the test split), mAP::

    python bench/embeddings.py                                   # synthetic + both real datasets
    python bench/embeddings.py --datasets synthetic --epochs 2    # quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED_DATA, fmt, write_section
from transfer import prepare, with_split_column
from vestis.config import Config, load_config
from vestis.data.catalog import load_catalog
from vestis.data.dataset import AttributeDataset
from vestis.data.manifest import read_manifest
from vestis.data.splits import split_manifest
from vestis.data.synthetic import generate_catalog
from vestis.data.triplets import value_codes
from vestis.eval.substitutes import retrieval_metrics
from vestis.io import atomic_write_text
from vestis.models.embedding import as_embedder
from vestis.train.cache import CachedTail, build_cache, cache_cut
from vestis.train.checkpoint import load
from vestis.train.loop import train
from vestis.train.tasks import embed_split

DATASETS = ("synthetic", "fashion-product", "clothing-attributes")
EPOCHS = {"synthetic": 6, "fashion-product": 4, "clothing-attributes": 8}
K = 30
SCORING = 3  # bump when score() changes: a stored result of another version is scored again


def rows(size: int, ase_size: int) -> list[tuple[str, str, list[str]]]:
    """(label, preset, overrides) of every row; the attribute-based row is the classifier."""
    emb = ["train.cache_features=true", "train.trainable_blocks=2"]
    lite0 = ["model.backbone=efficientnet_lite0", "model.pretrained=imagenet", f"data.image_size={size}", *emb]
    return [
        ("attribute-based (default classifier)", "default", []),
        ("standard triplet network", "csn", [*emb, "model.name=triplet", "model.columns=none"]),
        ("CSN, fixed masks", "csn", [*emb, "model.name=csn_fixed", "model.columns=none"]),
        ("CSN, learned masks", "csn", [*emb, "model.name=csn", "model.columns=none"]),
        (
            "CSN, learned masks, batch-hard mining",
            "csn",
            [*emb, "model.name=csn", "model.columns=none", "train.mining=batch_hard"],
        ),
        ("multi-column + CSN (joint)", "csn", [*emb, "model.name=csn", "model.columns=multi"]),
        (f"DAtRNet, ASE trunk from scratch ({ase_size} px)", "datrnet", [f"data.image_size={ase_size}"]),
        ("DAtRNet, pretrained Lite0 trunk", "datrnet", lite0),
        ("DAtRNet, pretrained Lite0 trunk, batch-all mining", "datrnet", [*lite0, "train.mining=batch_all"]),
    ]


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")[:60]


def embed(ckpt: Path, catalog: Path, split: str, store: Path) -> tuple[dict[str, np.ndarray], Any]:
    """Sub-embeddings of a split through the checkpoint's model (the cached trunk when the run used one)."""
    model = load(ckpt)
    cfg = model.config
    m, taxonomy = load_catalog(catalog)
    part = split_manifest(
        m, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction, seed=cfg.data.split_seed
    )[split]
    ds = AttributeDataset(part, taxonomy, cfg.data)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=cfg.data.num_workers)
    emb_model = as_embedder(model)
    dev = torch.device("cpu")
    cut = cache_cut(model, cfg.train)
    cache = None
    if cut:
        cache = build_cache(emb_model, loader, ds.encoded, cut, cfg.data, dev, name=split, store=store, log=_quiet)
    net = CachedTail(emb_model, cut) if cut else emb_model
    emb, _ = embed_split(emb_model, net, loader, cache, cfg, taxonomy, dev)
    return emb, ds.encoded


def _quiet(msg: str) -> None:
    if "read from" not in msg:
        print(f"  {msg}", flush=True)


def score(ckpt: Path, catalog: Path, store: Path, seed: int = 0) -> dict[str, Any]:
    """Every retrieval metric of a checkpoint on the test split (gallery = test split, queries = its rows)."""
    _, taxonomy = load_catalog(catalog)
    train_emb, train_enc = embed(ckpt, catalog, "train", store)
    test_emb, test_enc = embed(ckpt, catalog, "test", store)
    return retrieval_metrics(
        test_emb,
        value_codes(taxonomy, test_enc),
        train_emb,
        value_codes(taxonomy, train_enc),
        taxonomy.names,
        k=K,
        seed=seed,
    )


def run_row(label: str, preset: str, overrides: list[str], catalog: Path, work: Path) -> dict[str, Any]:
    run = work / _slug(label)
    done = run / "result.json"
    cfg = load_config(preset, [*overrides, f"train.cache_dir={work / 'cache'}"])
    if done.is_file() and _same_config(json.loads(done.read_text())["config"], cfg):
        stored = json.loads(done.read_text())
        if stored.get("scoring") != SCORING:
            stored["test"], stored["scoring"] = score(run / "best.ckpt", catalog, work / "cache"), SCORING
            atomic_write_text(done, json.dumps(stored, indent=2, default=float))
        return stored
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    say = lambda s: print(f"[{label}] {s}", flush=True)  # noqa: E731
    res = train(cfg, catalog, run, check_images=False, progress=False, log=say)
    seconds = time.perf_counter() - t0
    out = {
        "label": label,
        "scoring": SCORING,
        "config": json.loads(json.dumps(cfg.to_dict())),
        "train_seconds": seconds,
        "train_images_per_s": float(np.mean([h["images_per_s"] for h in res.history])),
        "test": score(res.best, catalog, work / "cache"),
    }
    atomic_write_text(done, json.dumps(out, indent=2, default=float))
    return out


def _same_config(old: dict[str, Any], cfg: Any) -> bool:
    """Whether a stored run was trained with ``cfg`` (settings added since then hold their defaults)."""
    new = json.loads(json.dumps(cfg.to_dict()))
    defaults = json.loads(json.dumps(Config().to_dict()))
    for section, values in defaults.items():
        for k, v in values.items():
            old.setdefault(section, {}).setdefault(k, v)
    return old == new


def table(results: list[dict[str, Any]]) -> str:
    head = [
        "model",
        "query top-30",
        "query + manipulation top-30",
        "manipulation NDCG@30",
        "R@5",
        "R@10",
        "R@20",
        "triplet accuracy",
        "mAP",
        "train min",
    ]
    keys = ["query_top30", "manipulation_top30", "manipulation_ndcg30", "mean_recall@5", "mean_recall@10",
            "mean_recall@20", "triplet_accuracy", "map"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r["test"]["summary"]
        cells = [r["label"], *(fmt(s[k]) for k in keys), f"{r['train_seconds'] / 60:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prepare_synthetic(work: Path, n: int) -> Path:
    manifest = work / "data" / "manifest.csv"
    if not manifest.is_file():
        generate_catalog(work / "data", n=n, size=128, seed=0)
    return manifest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--work", type=Path, default=Path("/tmp/vestis-bench/embeddings"))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--ase-size", type=int, default=128, help="DAtRNet's own trunk (the paper: 256)")
    p.add_argument("--synthetic-n", type=int, default=1500)
    p.add_argument("--rows", nargs="+", type=int, default=None, help="row numbers to run (0-based); default all")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    for name in a.datasets:
        work = a.work / name
        if name == "synthetic":
            manifest = prepare_synthetic(work, a.synthetic_n)
        elif not (SHARED_DATA / name).exists():
            print(f"skipping {name}: real data not found at {SHARED_DATA / name}")
            continue
        else:
            manifest = prepare(name, work)
        catalog = with_split_column(manifest, load_config("default"), work)
        epochs = a.epochs or EPOCHS[name]
        results = []
        for i, (label, preset, over) in enumerate(rows(a.size, a.ase_size)):
            if a.rows is not None and i not in a.rows:
                continue
            size = [f"data.image_size={a.size}"] if not any(o.startswith("data.image_size") for o in over) else []
            results.append(run_row(label, preset, [*size, *over, f"train.epochs={epochs}"], catalog, work))
        t0 = results[0]["test"]["summary"]
        n_test = sum(r.split == "test" for r in read_manifest(catalog).records)
        body = (
            f"Dataset `{name}`, {n_test} test rows (gallery and queries), group-aware 80/10/10 split; "
            f"{epochs} epochs per model. Top-30 accuracy as DAtRNet reports it (a neighbour whose whole label "
            f"vector equals the target); query: the {t0['num_queries']} test rows whose label vector another test "
            "row carries; "
            f"query + manipulation: {t0['num_manipulation_queries']} queries, one attribute changed each, kept "
            "only where the gallery holds the target vector. R@K: the multi-column paper's, "
            "averaged over the attributes.\n\n" + table(results)
        )
        print(body)
        if not a.no_write:
            write_section(f"embeddings-{name}", f"Attribute-aware embeddings: {name}", body)


if __name__ == "__main__":
    main()
