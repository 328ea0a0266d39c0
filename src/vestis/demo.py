"""The main job on the embedded default (``make demo``): synth -> validate -> stats -> train -> evaluate.

Every step writes under ``--out`` and prints where; running it again reuses the catalog and continues
(or re-evaluates) the run instead of starting over.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vestis.cli._app import echo
from vestis.config import load_config
from vestis.data.stats import compute_stats, write_stats
from vestis.data.synthetic import generate_catalog
from vestis.data.validate import summarize, validate_file
from vestis.errors import VestisError
from vestis.eval.evaluator import format_table
from vestis.eval.run import evaluate_checkpoint
from vestis.train.loop import train

__all__ = ["main", "run_demo"]


def run_demo(out: Path, *, n: int, size: int, seed: int, overrides: list[str]) -> dict[str, Path]:
    data, stats_dir, run_dir, report_dir = out / "data", out / "stats", out / "run", out / "report"
    stamp = {"n": n, "size": size, "seed": seed}
    stamp_file = data / "demo.json"
    t0 = time.perf_counter()
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        echo(f"1/5 synth: reusing {data}")
    else:
        echo(f"1/5 synth: drawing {n} catalog images of {size} px into {data}")
        generate_catalog(data, n=n, size=size, seed=seed)
        stamp_file.write_text(json.dumps(stamp))
    manifest = data / "manifest.csv"

    echo("2/5 validate")
    catalog, taxonomy, problems = validate_file(manifest)
    if problems:
        raise VestisError(f"{manifest}: {len(problems)} problem(s): {summarize(problems)}")
    echo(f"    OK: {manifest} against {data / 'taxonomy.yaml'}")

    echo("3/5 stats")
    stats = compute_stats(catalog, taxonomy)
    write_stats(stats, stats_dir)
    echo(f"    {stats_dir / 'stats.md'}")

    cfg = load_config("default", overrides)
    resume = (run_dir / "last.ckpt").is_file()
    echo(f"4/5 train: {cfg.model.name} on {cfg.model.backbone}, {cfg.data.image_size} px, {cfg.train.epochs} epochs"
         f"{' (continuing the previous run)' if resume else ''}")  # fmt: skip
    result = train(cfg, manifest, run_dir, resume=resume, log=echo)

    echo("5/5 evaluate (test split)")
    ev = evaluate_checkpoint(result.best, manifest, report_dir, split="test")
    echo("")
    echo(format_table(ev.metrics))
    echo("")
    echo(f"done in {time.perf_counter() - t0:.0f} s")
    echo(f"  catalog:    {manifest}")
    echo(f"  stats:      {stats_dir / 'stats.md'}")
    echo(f"  checkpoint: {result.best}")
    echo(f"  report:     {ev.files['report.html']}")
    return {"manifest": manifest, "stats": stats_dir, "checkpoint": result.best, "report": ev.files["report.html"]}


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
