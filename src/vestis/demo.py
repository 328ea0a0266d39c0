"""The main job on the embedded default (``make demo``): synth -> validate -> stats -> train -> evaluate -> index
and one substitute search ("like this test item, but in another colour"), then the outfit pipeline on synthetic
outfit scenes (:mod:`vestis.demo_outfit`: detector, crops, stage-2 model, the garments of two outfit photos).

Every step writes under ``--out`` and prints where; running it again reuses the catalog and continues
(or re-evaluates) the run instead of starting over.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from vestis.cli._app import echo
from vestis.config import load_config
from vestis.data.splits import split_manifest
from vestis.data.stats import compute_stats, write_stats
from vestis.data.synthetic import generate_catalog
from vestis.data.validate import summarize, validate_file
from vestis.demo_outfit import run_outfit_demo
from vestis.errors import VestisError
from vestis.eval.evaluator import format_table
from vestis.eval.run import evaluate_checkpoint
from vestis.retrieval.catalog_index import CatalogIndex
from vestis.retrieval.index_build import build_index
from vestis.train.loop import train

__all__ = ["main", "run_demo"]


def run_demo(out: Path, *, n: int, size: int, seed: int, overrides: list[str]) -> dict[str, Path]:
    data, stats_dir, run_dir, report_dir = out / "data", out / "stats", out / "run", out / "report"
    stamp = {"n": n, "size": size, "seed": seed}
    stamp_file = data / "demo.json"
    t0 = time.perf_counter()
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        echo(f"1/10 synth: reusing {data}")
    else:
        echo(f"1/10 synth: drawing {n} catalog images of {size} px into {data}")
        generate_catalog(data, n=n, size=size, seed=seed)
        stamp_file.write_text(json.dumps(stamp))
    manifest = data / "manifest.csv"

    echo("2/10 validate")
    catalog, taxonomy, problems = validate_file(manifest)
    if problems:
        raise VestisError(f"{manifest}: {len(problems)} problem(s): {summarize(problems)}")
    echo(f"    OK: {manifest} against {data / 'taxonomy.yaml'}")

    echo("3/10 stats")
    stats = compute_stats(catalog, taxonomy)
    write_stats(stats, stats_dir)
    echo(f"    {stats_dir / 'stats.md'}")

    cfg = load_config("default", overrides)
    resume = (run_dir / "last.ckpt").is_file()
    echo(f"4/10 train: {cfg.model.name} on {cfg.model.backbone}, {cfg.data.image_size} px, {cfg.train.epochs} epochs"
         f"{' (continuing the previous run)' if resume else ''}")  # fmt: skip
    result = train(cfg, manifest, run_dir, resume=resume, log=echo)

    echo("5/10 evaluate (test split)")
    ev = evaluate_checkpoint(result.best, manifest, report_dir, split="test")
    echo("")
    echo(format_table(ev.metrics))
    echo("")
    echo("6/10 index the catalog (the classifier's attribute-based sub-embeddings) and search for a substitute")
    index_dir = out / "index"
    built = build_index(result.best, manifest, index_dir, restart=True, workers=2)
    echo(f"    {built.count} items in {index_dir} ({built.embedded / max(built.seconds, 1e-9):.0f} images/s)")
    split = split_manifest(catalog, val_fraction=cfg.data.val_fraction, test_fraction=cfg.data.test_fraction,
                           seed=cfg.data.split_seed)  # fmt: skip
    hits, query, change = _substitute_search(index_dir, (split["test"].records or catalog.records)[0].id)
    echo(f"    query {query['id']} ({', '.join(f'{a}={v}' for a, v in query['attributes'].items())})")
    echo(f"    vestis search {index_dir} --id {query['id']} --set {change[0]}={change[1]} --k {len(hits)}")
    for h in hits:
        echo(f"      {h.id:>8}  distance {h.distance:.3f}  {change[0]}={h.attributes[change[0]]}  "
             f"category={h.attributes.get('category')}")  # fmt: skip
    echo("")
    outfit = run_outfit_demo(out / "outfit", seed=seed, step=7, steps=10)
    echo("")
    echo(f"done in {time.perf_counter() - t0:.0f} s")
    echo(f"  catalog:    {manifest}")
    echo(f"  stats:      {stats_dir / 'stats.md'}")
    echo(f"  checkpoint: {result.best}")
    echo(f"  report:     {ev.files['report.html']}")
    echo(f"  index:      {index_dir}")
    echo(f"  outfits:    {outfit['pipeline']} (detector + stage-2 model)")
    return {
        "manifest": manifest,
        "stats": stats_dir,
        "checkpoint": result.best,
        "report": ev.files["report.html"],
        "index": index_dir,
        "pipeline": outfit["pipeline"],
    }


def _substitute_search(index_dir: Path, test_id: str) -> tuple[list[Any], dict[str, Any], tuple[str, str]]:
    """A test item, searched for "the same, but in another colour" (the first colour it is not)."""
    index = CatalogIndex.open(index_dir)
    query = index.item(test_id)
    attr = "colour" if "colour" in index.taxonomy.names else index.taxonomy.names[0]
    current = query["attributes"].get(attr)
    value = next(v for v in index.taxonomy[attr].values if v != current)
    return index.search(test_id, set={attr: value}, k=5), query, (attr, value)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m vestis.demo", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--n", type=int, default=2000, help="catalog size")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=2")
    a = p.parse_args(argv)
    try:
        run_demo(a.out, n=a.n, size=a.size, seed=a.seed, overrides=a.overrides)
    except VestisError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
