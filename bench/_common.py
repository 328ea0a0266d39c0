"""Shared by the benchmarks: machine description and writing one section of docs/benchmarks.md.

Each benchmark owns a section delimited by ``<!-- bench:NAME -->`` / ``<!-- /bench:NAME -->`` and
rewrites only that section, with the command that produced it and the machine it ran on.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from vestis.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SHARED_DATA = ROOT.parent / "shared" / "data"
HEADER = (
    "# Benchmarks\n\n"
    "Every section is written by a script under `bench/`; the command and the machine are given with it.\n"
)


def machine() -> str:
    """One line: CPU model, cores, memory, GPU, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{mem}{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(name: str, title: str, body: str, *, doc: Path = DOC) -> Path:
    """Replace (or append) the section ``name`` of ``doc`` with ``body`` plus its provenance."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    block = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Command: `{command_line()}`  \nMachine: {machine()}  \nRevision: {git_revision()}, {stamp}\n\n"
        f"{body.strip()}\n<!-- /bench:{name} -->"
    )
    text = doc.read_text(encoding="utf-8") if doc.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(doc, text)
    return doc


def train_and_evaluate(
    name: str, overrides: list[str], manifest: Path, work: Path, *, preset: str = "default"
) -> dict[str, Any]:
    """Train ``preset`` + ``overrides`` on ``manifest`` in ``work/name`` and evaluate the test split.

    The result (per-attribute metrics, summary, timings) is cached in ``work/name/result.json``: a rerun of a
    benchmark skips what is already measured.
    """
    from vestis.config import load_config
    from vestis.eval.run import evaluate_checkpoint
    from vestis.train.loop import train

    run = work / name
    cached = run / "result.json"
    if cached.is_file():
        old = json.loads(cached.read_text())
        if old.get("overrides") == overrides and old.get("preset", preset) == preset:
            return old
        print(f"[{name}] cached result in {run} was made with other settings: training again", flush=True)
        shutil.rmtree(run)
    cfg = load_config(preset, overrides)
    if (run / "last.ckpt").is_file():
        shutil.rmtree(run)  # an interrupted run: start it again rather than mix budgets
    t0 = time.perf_counter()
    result = train(cfg, manifest, run, check_images=False, log=lambda msg: print(f"[{name}] {msg}", flush=True))
    train_s = time.perf_counter() - t0
    ev = evaluate_checkpoint(result.best, manifest, run / "report", split="test")
    out = {
        "name": name,
        "preset": preset,
        "overrides": overrides,
        "split": {
            "val_fraction": cfg.data.val_fraction,
            "test_fraction": cfg.data.test_fraction,
            "split_seed": cfg.data.split_seed,
        },
        "model": cfg.model.name,
        "backbone": cfg.model.backbone,
        "epochs": len(result.history),
        "train_seconds": train_s,
        "images_per_s": sum(h["images_per_s"] for h in result.history) / max(1, len(result.history)),
        "attributes": ev.metrics["attributes"],
        "summary": ev.metrics["summary"],
        "num_test": ev.num_items,
    }
    atomic_write_text(cached, json.dumps(out, indent=2))
    return out


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"
