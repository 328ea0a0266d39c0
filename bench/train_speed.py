"""Training throughput of the default model at 224 px: images/s and the share of step time spent waiting for data.

The train loop measures both per epoch (``images_per_s``, ``data_wait_fraction`` in its history): time blocked
on the DataLoader divided by the epoch's wall time. A fixed number of optimiser steps per setting::

    python bench/train_speed.py --steps 30 --workers 0 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_section
from vestis.config import load_config
from vestis.data.synthetic import generate_catalog
from vestis.train.loop import train


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/vestis-bench/train_speed"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    data = a.work / f"synth-{a.size}"
    if not (data / "manifest.csv").is_file():
        # catalog images at the training size: decoding cost is what a real catalog of that size would pay
        generate_catalog(data, n=a.batch_size * (a.steps + 2) + 100, size=a.size, seed=0)
    rows = []
    for workers in a.workers:
        run = a.work / f"run-w{workers}"
        shutil.rmtree(run, ignore_errors=True)
        cfg = load_config(
            "default",
            [
                f"data.image_size={a.size}",
                f"data.num_workers={workers}",
                f"train.batch_size={a.batch_size}",
                f"train.max_steps={a.steps}",
                "train.epochs=1",
                "data.val_fraction=0.01",
                "data.test_fraction=0.0",
            ],
        )
        h = train(cfg, data / "manifest.csv", run, check_images=False, progress=False).history[0]
        rows.append((workers, h["images_per_s"], h["data_wait_fraction"]))
        print(f"workers={workers}: {h['images_per_s']:.1f} img/s, waiting for data {h['data_wait_fraction']:.1%}")
    cfg = load_config("default")
    body = (
        f"`{cfg.model.name}` on `{cfg.model.backbone}` (the `default` preset), {a.size} px, batch {a.batch_size}, "
        f"{a.steps} optimiser steps on the synthetic catalog (JPEG {a.size} px), augmentation on, CPU, fp32. "
        "Data wait = time blocked on the DataLoader / wall time of the steps (includes starting the workers).\n\n"
        "| DataLoader workers | images/s | data wait |\n|---|---|---|\n"
        + "\n".join(f"| {w} | {ips:.1f} | {wait:.1%} |" for w, ips, wait in rows)
    )
    print(body)
    if not a.no_write:
        print(f"wrote {write_section('train-speed', 'Training speed (default model, 224 px)', body)}")


if __name__ == "__main__":
    main()
