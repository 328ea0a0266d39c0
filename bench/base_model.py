"""The base-model paper's Tables 3 and 4 on fashion-product: a title base model, refinement with few labels, drift.

Table 3 (``table3``): one network (EfficientNet-Lite0 `baseline`, the `default` preset) from six initialisations

- ``scratch``: random weights (no pretraining);
- ``imagenet``: the ImageNet weights (``model.pretrained=imagenet``);
- ``title500`` / ``title2000``: a title base model (`vestis pretrain`, :func:`vestis.train.pretrain.pretrain`)
  trained from random weights, the whole network, on the training split's photos and their title words (the
  Top-500 / Top-2000 vocabulary of :mod:`vestis.data.vocab`, counted on the training split with the words that
  restate a labelled attribute value left out, listed in the section);
- ``title500-imagenet`` / ``title2000-imagenet``: the same base models started from ImageNet, their last
  ``--pretrain-blocks`` backbone blocks trained (the trunk below them frozen and cached);

each refined (``model.init=BASE/best.ckpt`` for the base models: the title head replaced by the attribute
branches) on 100 %, 25 % and 10 % of the labelled training rows. A fraction is a seeded subset of the training
split per seed (nested: the 10 % rows lie in the 25 % ones); the other training rows are dropped from the run's
manifest, the validation (checkpoint selection) and test rows are untouched. Every refinement has the same
budget: ``--image-size`` px, ``--epochs`` epochs, the last ``--trainable-blocks`` backbone blocks + the branches
trained on the cached frozen trunk below them (``train.trainable_blocks``, ``train.cache_features=true``), the
`default` preset's optimiser. The ``scratch`` row therefore refines on a random frozen trunk. Scores: per
attribute multi-class accuracy and average per-class accuracy on the test split
(:func:`vestis.eval.run.evaluate_checkpoint`), mean over ``--seeds`` (± half the range), with the majority-value
reference.

Table 4 (``table4``): the best Table-3 model (mean test accuracy at 100 %) and the best one of the other family
(title base model or not) scored by `vestis evaluate --compare` (:func:`vestis.eval.compare.compare_checkpoint`)
on the test split as shot and on a "production" copy of it: the same test photos re-encoded to fit 60x80 px
(JPEG quality 90; the square 224 px photos become 60x60) and upscaled to ``--image-size`` by the loader.

Every result is cached in WORK with the settings it was made with (overrides, manifest and init checkpoint
hashes) and redone when they differ; a rerun skips what is measured::

    python bench/base_model.py                          # both tables, about 80 min on 2 cores (estimate printed first)
    python bench/base_model.py --sections table3 --seeds 0 1 2
    python bench/base_model.py --quick                  # smoke run on a small synthetic catalog (minutes)
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOC, SHARED_DATA, fmt, write_section
from real import majority_metrics
from transfer import _manifest, derived_catalog, prepare, with_split_column
from vestis.config import load_config
from vestis.data.catalog import load_catalog
from vestis.data.manifest import read_manifest, write_manifest
from vestis.data.vocab import build_vocabulary, file_sha256, load_vocabulary, save_vocabulary
from vestis.io import atomic_write_text

SECTIONS = ("table3", "table4")
# name -> (vocabulary size or None, pretrained from ImageNet)
INITS: dict[str, tuple[int | None, bool]] = {
    "scratch": (None, False),
    "imagenet": (None, True),
    "title500": (500, False),
    "title2000": (2000, False),
    "title500-imagenet": (500, True),
    "title2000-imagenet": (2000, True),
}
LABELS = {
    "scratch": "scratch (random frozen trunk)",
    "imagenet": "ImageNet",
    "title500": "title Top-500, from scratch",
    "title2000": "title Top-2000, from scratch",
    "title500-imagenet": "title Top-500, from ImageNet",
    "title2000-imagenet": "title Top-2000, from ImageNet",
}
PRESET = "default"
SCRATCH_PRETRAIN_LR = 3e-3  # the whole network from random weights (bench/transfer.py's scratch row)
# 2-core rates at 96 px on this project's machine (docs/benchmarks.md: transfer, scratch rows), for the estimate
# (images/s), plus a fixed cost per run (model build, data loader start, image checks, report figures)
RATE = {"full_train": 16.0, "trunk": 60.0, "tail": 400.0, "eval": 60.0}
RUN_OVERHEAD_S = 20.0


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def _log(tag: str) -> Any:
    return lambda msg: print(f"[{tag}] {msg}", flush=True)


# --- data ---------------------------------------------------------------------------------------------------------
def synthetic(work: Path, n: int, size: int) -> Path:
    """A small synthetic catalog (with titles) in ``work/data`` for ``--quick``."""
    from vestis.data.synthetic import generate_catalog

    manifest = work / "data" / "manifest.csv"
    if not manifest.is_file():
        generate_catalog(work / "data", n=n, size=size, seed=0)
    return manifest


def subset(catalog: Path, fraction: float, seed: int) -> Path:
    """``catalog`` with only ``fraction`` of its training rows (seeded, nested across fractions); val/test kept."""
    if fraction >= 1.0:
        return catalog
    out = catalog.parent / f"subset-{round(fraction * 100)}pct-s{seed}.csv"
    if out.is_file():
        return out
    m = read_manifest(catalog)
    train = [i for i, r in enumerate(m.records) if r.split == "train"]
    order = np.random.default_rng(seed).permutation(len(train))
    keep = {train[j] for j in order[: max(1, round(fraction * len(train)))]}
    rows = [r for i, r in enumerate(m.records) if r.split != "train" or i in keep]
    write_manifest(_manifest(m, rows), out)
    return out


def vocabulary(catalog: Path, work: Path, top: int) -> Path:
    """The Top-``top`` title vocabulary of the training split, label words excluded (cached per manifest)."""
    out = work / "vocab" / f"top{top}.json"
    sha = file_sha256(catalog)
    if out.is_file():
        v = load_vocabulary(out)
        if v.top == top and (v.manifest or {}).get("sha256") == sha:
            return out
    m, taxonomy = load_catalog(catalog)
    d = load_config(PRESET).data
    v = build_vocabulary(
        m, top, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=d.split_seed, taxonomy=taxonomy,
        exclude_label_words=True,
    )  # fmt: skip
    save_vocabulary(v, out)
    return out


# --- runs ---------------------------------------------------------------------------------------------------------
def _fresh(run: Path, settings: dict[str, Any], done: Path) -> dict[str, Any] | None:
    """The cached result when it was made with ``settings``; otherwise clear ``run`` for a new one."""
    if done.is_file():
        old = json.loads(done.read_text())
        if old.get("settings") == settings:
            return old
        print(f"[{run.name}] cached result was made with other settings: running again", flush=True)
    if run.exists():
        shutil.rmtree(run)  # other settings or an interrupted run: start again rather than mix budgets
    return None


def pretrain_base(catalog: Path, work: Path, init: str, a: argparse.Namespace) -> Path:
    """Train (or reuse) the title base model ``init``; its best checkpoint."""
    from vestis.train.pretrain import pretrain

    top, imagenet = INITS[init]
    assert top is not None
    vocab = vocabulary(catalog, work, top)
    over = pretrain_overrides(imagenet, a, work)
    settings = {"preset": PRESET, "overrides": over, "vocab": file_sha256(vocab), "data": file_sha256(catalog)}
    run = work / "base" / init
    done = run / "result.json"
    old = _fresh(run, settings, done)
    if old is not None and Path(old["checkpoint"]).is_file():
        return Path(old["checkpoint"])
    cfg = load_config(PRESET, over)
    t0 = time.perf_counter()
    res = pretrain(cfg, catalog, vocab, run, check_images=False, progress=False, log=_log(f"base {init}"))
    out = {"settings": settings, "checkpoint": str(res.best), "seconds": time.perf_counter() - t0,
           "best_metric": res.best_metric, "metric": res.metric, "epochs": res.epochs_run}  # fmt: skip
    atomic_write_text(done, json.dumps(out, indent=2))
    return res.best


def pretrain_overrides(imagenet: bool, a: argparse.Namespace, work: Path) -> list[str]:
    common = [f"data.image_size={a.image_size}", f"train.epochs={a.pretrain_epochs}"]
    if imagenet:
        return [*common, "model.pretrained=imagenet", f"train.trainable_blocks={a.pretrain_blocks}",
                "train.cache_features=true", f"train.cache_dir={work / 'cache'}"]  # fmt: skip
    return [*common, "model.pretrained=null", "train.trainable_blocks=-1", "train.cache_features=false",
            f"train.lr={SCRATCH_PRETRAIN_LR}"]  # fmt: skip


def refine_overrides(init: str, a: argparse.Namespace, work: Path, seed: int, base: Path | None) -> list[str]:
    _, imagenet = INITS[init]
    over = [f"data.image_size={a.image_size}", f"train.epochs={a.epochs}", f"train.seed={seed}",
            f"train.trainable_blocks={a.trainable_blocks}", "train.cache_features=true",
            f"train.cache_dir={work / 'cache'}", f"model.pretrained={'imagenet' if imagenet else 'null'}"]  # fmt: skip
    return [*over, f"model.init={base}"] if base is not None else over


def refine(catalog: Path, work: Path, init: str, fraction: float, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """Refine ``init`` on ``fraction`` of the labelled training rows and score the test split (cached)."""
    from vestis.eval.run import evaluate_checkpoint
    from vestis.train.loop import train

    base = pretrain_base(catalog, work, init, a) if INITS[init][0] is not None else None
    data = subset(catalog, fraction, seed)
    over = refine_overrides(init, a, work, seed, base)
    settings = {"preset": PRESET, "overrides": over, "data": file_sha256(data),
                "init": file_sha256(base) if base is not None else None}  # fmt: skip
    name = f"{init}-{round(fraction * 100)}pct-s{seed}"
    run = work / "refine" / name
    done = run / "result.json"
    old = _fresh(run, settings, done)
    if old is not None:
        return old
    cfg = load_config(PRESET, over)
    t0 = time.perf_counter()
    res = train(cfg, data, run, check_images=False, progress=False, log=_log(name))
    seconds = time.perf_counter() - t0
    ev = evaluate_checkpoint(res.best, catalog, run / "report", split="test")
    rows = sum(r.split == "train" for r in read_manifest(data).records)
    out = {"settings": settings, "name": name, "checkpoint": str(res.best), "train_seconds": seconds,
           "train_rows": rows, "epochs": len(res.history), "attributes": ev.metrics["attributes"],
           "summary": ev.metrics["summary"], "num_test": ev.num_items}  # fmt: skip
    atomic_write_text(done, json.dumps(out, indent=2))
    return out


def compare(ckpt: Path, catalog: Path, production: Path, out: Path) -> dict[str, Any]:
    """`vestis evaluate --compare` of ``ckpt``: test split as shot (A) vs the 60x80 px copy (B), cached."""
    from vestis.eval.compare import compare_checkpoint

    settings = {"checkpoint": file_sha256(ckpt), "a": file_sha256(catalog), "b": file_sha256(production)}
    done = out / "result.json"
    old = _fresh(out, settings, done)
    if old is not None:
        return old
    res = compare_checkpoint(ckpt, catalog, production, out, split="test", compare_split="test")
    result = {"settings": settings, "metrics": res.metrics, "markdown": str(res.files["compare.md"])}
    atomic_write_text(done, json.dumps(result, indent=2))
    return result


# --- tables -------------------------------------------------------------------------------------------------------
def _mean_hr(xs: list[float | None]) -> tuple[float | None, str]:
    """Mean and ``mean ± half range`` text of the defined values."""
    v = [x for x in xs if x is not None]
    if not v:
        return None, "–"
    m = float(np.mean(v))
    return m, fmt(m) + (f"±{(max(v) - min(v)) / 2:.3f}" if len(v) > 1 else "")


def table3_rows(results: dict[tuple[str, float, int], dict[str, Any]], taxonomy: Any, a: argparse.Namespace,
                majority: dict[str, Any]) -> tuple[str, dict[tuple[str, float], float | None]]:  # fmt: skip
    """The Markdown table and the mean test accuracy of every (init, fraction)."""
    head = ["initialisation", "labelled rows", *taxonomy.names, "mean accuracy", "mean avg per-class acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(ms: list[dict[str, Any]]) -> list[str]:
        out = []
        for attr in taxonomy:
            rs = [m["attributes"][attr.name] for m in ms]
            if attr.kind == "single":
                acc = _mean_hr([r.get("accuracy") for r in rs])[1]
                apc = _mean_hr([r.get("average_per_class_accuracy") for r in rs])[1]
                out.append(f"{acc} / {apc}")
            else:
                out.append(f"micro-F1 {_mean_hr([r.get('micro_f1') for r in rs])[1]}")
        out.append(_mean_hr([m["summary"].get("mean_accuracy") for m in ms])[1])
        out.append(_mean_hr([m["summary"].get("mean_average_per_class_accuracy") for m in ms])[1])
        return out

    lines.append("| majority value (reference) | – | " + " | ".join(cells([majority])) + " |")
    means: dict[tuple[str, float], float | None] = {}
    for init in a.inits:
        for f in a.fractions:
            ms = [results[(init, f, s)] for s in a.seeds]
            rows = int(np.mean([m["train_rows"] for m in ms]))
            means[(init, f)] = _mean_hr([m["summary"].get("mean_accuracy") for m in ms])[0]
            lines.append(f"| {LABELS[init]} | {f * 100:g} % ({rows}) | " + " | ".join(cells(ms)) + " |")
    return "\n".join(lines), means


def few_labels_verdict(means: dict[tuple[str, float], float | None], inits: list[str], fractions: list[float]) -> str:
    """Whether the title base model helps most when labels are few, from the mean accuracies."""
    lo, hi = min(fractions), max(fractions)
    title = [i for i in inits if INITS[i][0] is not None]
    plain = [i for i in inits if INITS[i][0] is None]
    if not title or not plain or lo == hi:
        return "Not measured: the run needs a title base model, another initialisation and two label fractions."

    def best(group: list[str], f: float) -> tuple[str, float]:
        scored = [(i, means[(i, f)]) for i in group if means[(i, f)] is not None]
        return max(scored, key=lambda t: t[1]) if scored else (group[0], float("nan"))

    gains = {}
    for f in sorted(fractions):
        (ti, ts), (pi, ps) = best(title, f), best(plain, f)
        gains[f] = (ts - ps, ti, pi)
    gain_text = "; ".join(
        f"{f * 100:g} %: {g * 100:+.1f} points ({LABELS[ti]} against {LABELS[pi]})" for f, (g, ti, pi) in gains.items()
    )
    pairs = []
    for t in title:
        partner = "imagenet" if INITS[t][1] else "scratch"
        if partner in inits and None not in (
            means[(t, lo)],
            means[(t, hi)],
            means[(partner, lo)],
            means[(partner, hi)],
        ):
            g_lo = means[(t, lo)] - means[(partner, lo)]
            g_hi = means[(t, hi)] - means[(partner, hi)]
            pairs.append(f"{LABELS[t]} vs {LABELS[partner]}: {g_lo * 100:+.1f} at {lo * 100:g} %, "
                         f"{g_hi * 100:+.1f} at {hi * 100:g} %")  # fmt: skip
    g_lo, g_hi = gains[lo][0], gains[hi][0]
    if g_lo > 0 and g_lo > g_hi:
        verdict = "**holds here**: the best title base model's gain is larger with the fewest labels"
    elif g_lo > 0:
        verdict = ("**does not hold here**: the best title base model gains with the fewest labels, but no more than "
                   "with all of them")  # fmt: skip
    else:
        verdict = "**does not hold here**: with the fewest labels the best title base model does not beat the others"
    return (
        f"The paper's claim that the title base model helps most when labels are few {verdict}. Gain of the best "
        f"title base model over the best other initialisation in mean test accuracy: {gain_text}."
        + (f" Against its own starting point: {'; '.join(pairs)}." if pairs else "")
    )


def excluded_words(work: Path, tops: list[int]) -> str:
    """The title words left out as restating an attribute value, most frequent first."""
    excluded: dict[str, int] = {}
    for top in tops:
        v = load_vocabulary(work / "vocab" / f"top{top}.json")
        for w, info in v.excluded.items():
            excluded[w] = int(info.get("count", 0))
    words = sorted(excluded, key=lambda w: (-excluded[w], w))
    return ", ".join(f"{w} ({excluded[w]})" for w in words) or "none"


def _recorded_minutes(results: dict[tuple[str, float, int], dict[str, Any]], work: Path, inits: list[str]) -> float:
    """Minutes of training the cached results record: every refinement and every base model they used."""
    seconds = sum(r.get("train_seconds", 0.0) for r in results.values())
    for init in inits:
        done = work / "base" / init / "result.json"
        if INITS[init][0] is not None and done.is_file():
            seconds += json.loads(done.read_text()).get("seconds", 0.0)
    return seconds / 60


def base_facts(work: Path, inits: list[str]) -> str:
    """How well each title base model learnt its words: validation mAP over the vocabulary, last epoch."""
    out = []
    for init in inits:
        history = work / "base" / init / "history.json"
        if INITS[init][0] is None or not history.is_file():
            continue
        val = json.loads(history.read_text())[-1].get("val", {})
        out.append(f"{LABELS[init]} {fmt(val.get('mean_average_precision'))}")
    return "; ".join(out) or "none"


def vocab_facts(work: Path, tops: list[int]) -> str:
    out = []
    for top in tops:
        v = load_vocabulary(work / "vocab" / f"top{top}.json")
        out.append(f"Top-{top}: {len(v.words)} words kept over {v.titled_rows} titled training rows "
                   f"(most frequent: {', '.join(v.words[:8])})")  # fmt: skip
    return "; ".join(out)


# --- estimate -----------------------------------------------------------------------------------------------------
def estimate_seconds(counts: dict[str, int], a: argparse.Namespace) -> float:
    """Wall-clock seconds of a run from nothing at the settings of ``a`` (the rates of ``RATE``, 2 cores, 96 px)."""
    s = (a.image_size / 96) ** 2
    n_train, n_val, n_test = counts["train"], counts["val"], counts["test"]
    part = sum(f for f in a.fractions if f < 1.0) * len(a.seeds)  # subset caches, in training splits
    total = 0.0
    title_scratch = [i for i in a.inits if INITS[i][0] is not None and not INITS[i][1]]
    title_imagenet = [i for i in a.inits if INITS[i][0] is not None and INITS[i][1]]
    total += len(title_scratch) * a.pretrain_epochs * (n_train / RATE["full_train"] + n_val / RATE["eval"])
    if title_imagenet:
        total += (n_train + n_val) / RATE["trunk"]  # the ImageNet trunk below the pretraining cut, once
        total += len(title_imagenet) * a.pretrain_epochs * (n_train + n_val) / (RATE["tail"] / 2)
    for init in a.inits:
        trunks = len(a.seeds) if init == "scratch" else 1  # a random trunk is drawn per seed
        total += trunks * (n_train + n_val) / RATE["trunk"] + part * n_train / RATE["trunk"]  # the frozen trunk
        total += len(a.seeds) * sum(a.fractions) * a.epochs * n_train / RATE["tail"]
        total += len(a.seeds) * len(a.fractions) * n_test / RATE["eval"]
    if "table4" in a.sections:
        total += 2 * 2 * n_test / RATE["eval"]
    runs = len(a.inits) * len(a.seeds) * len(a.fractions) + len(title_scratch + title_imagenet) + 2
    return total * s + runs * RUN_OVERHEAD_S


# --- main ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["fashion-product"],
        help="datasets under ../shared/data (default: fashion-product; --quick: a synthetic catalog)",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        choices=SECTIONS,
        help="tables to make (default: table3 table4)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/vestis-bench/base-model"),
        help="where runs and results are cached (default: /tmp/vestis-bench/base-model)",
    )
    p.add_argument(
        "--inits",
        nargs="+",
        default=None,
        choices=list(INITS),
        help="initialisations (default: all six; --quick: scratch title500)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per row (default: 0 1)")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[1.0, 0.25, 0.1],
        help="shares of the labelled training rows refined on (default: 1.0 0.25 0.1)",
    )
    p.add_argument("--image-size", type=int, default=96, help="px for every run (default: 96; --quick: 64)")
    p.add_argument("--epochs", type=int, default=4, help="refinement epochs (default: 4; --quick: 1)")
    p.add_argument("--pretrain-epochs", type=int, default=1, help="base model epochs (default: 1)")
    p.add_argument(
        "--trainable-blocks",
        type=int,
        default=2,
        help="last backbone blocks refined, with the branches (default: 2, Lite0's stage6 and top)",
    )
    p.add_argument(
        "--pretrain-blocks",
        type=int,
        default=3,
        help="last blocks a title base model from ImageNet trains (default: 3; from scratch: all)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: synthetic catalog (160 images), 2 inits, 1 seed, 1 epoch (default: off)",
    )
    p.add_argument(
        "--doc",
        type=Path,
        default=None,
        help="the Markdown file written (default: docs/benchmarks.md; --quick: WORK/benchmarks.md)",
    )
    p.add_argument("--no-write", action="store_true", help="print the sections only (default: write them)")
    a = p.parse_args(argv)
    if a.quick:
        a.work = a.work.parent / (a.work.name + "-quick")
        a.inits = a.inits or ["scratch", "title500"]
        a.seeds, a.epochs, a.pretrain_epochs, a.image_size = a.seeds[:1], 1, 1, 64
        a.datasets = ["synthetic"]
    a.inits = a.inits or list(INITS)
    a.fractions = sorted(set(a.fractions), reverse=True)
    if any(not 0 < f <= 1 for f in a.fractions):
        p.error(f"--fractions {a.fractions}: expected shares in (0, 1]")
    doc = a.doc or (a.work / "benchmarks.md" if a.quick else DOC)
    for name in a.datasets:
        if name != "synthetic" and not (SHARED_DATA / name).exists():
            print(f"skipping {name}: real data not found at {SHARED_DATA / name}")
            continue
        work = a.work / name
        manifest = synthetic(work, 160, 96) if name == "synthetic" else prepare(name, work)
        catalog = with_split_column(manifest, load_config(PRESET), work)
        m, taxonomy = load_catalog(catalog)
        counts = {s: sum(r.split == s for r in m.records) for s in ("train", "val", "test")}
        est = estimate_seconds(counts, a)
        print(f"{name}: {counts}; estimated {est / 60:.1f} min on 2 cores from nothing (less what {work} holds)",
              flush=True)  # fmt: skip
        t0 = time.perf_counter()
        results = {(i, f, s): refine(catalog, work, i, f, s, a) for i in a.inits for f in a.fractions for s in a.seeds}
        majority = majority_metrics(catalog, {"val_fraction": 0.1, "test_fraction": 0.1, "split_seed": 0})
        table, means = table3_rows(results, taxonomy, a, majority)
        tops = sorted({INITS[i][0] for i in a.inits if INITS[i][0] is not None})
        hi = max(a.fractions)
        intro = intro_text(name, counts, a, tops, work)
        if "table3" in a.sections:
            body = (intro + "\n\n" + table + "\n\n" + few_labels_verdict(means, a.inits, a.fractions)
                    + f"\n\nTraining time in the results (refinements and base models, as each was run): "
                    f"{_recorded_minutes(results, work, a.inits):.0f} min; wall clock of this invocation: "
                    f"{(time.perf_counter() - t0) / 60:.0f} min (cached results count zero).")  # fmt: skip
            print(body)
            if not a.no_write:
                write_section(f"base-model-table3-{name}", f"Title base model, Table 3: {name}", body, doc=doc)
        if "table4" in a.sections:
            production = derived_catalog(catalog, work, "small")
            best = max(a.inits, key=lambda i: means[(i, hi)] if means[(i, hi)] is not None else -1.0)
            is_title = INITS[best][0] is not None
            others = [i for i in a.inits if (INITS[i][0] is not None) != is_title]
            rows = [best] + ([max(others, key=lambda i: means[(i, hi)] or -1.0)] if others else [])
            comps = {}
            for i in rows:
                ckpt = Path(results[(i, hi, a.seeds[0])]["checkpoint"])
                comps[i] = compare(ckpt, catalog, production, work / "table4" / i)
            body = table4_text(name, comps, best, means, hi, a)
            print(body)
            if not a.no_write:
                write_section(f"base-model-table4-{name}", f"Title base model, Table 4: {name}", body, doc=doc)


def intro_text(name: str, counts: dict[str, int], a: argparse.Namespace, tops: list[int], work: Path) -> str:
    """The set-up of Table 3: data, split, budgets, vocabularies and the words left out."""
    t = load_config(PRESET).train
    src = ("a synthetic catalog (`vestis synth`, 160 images; smoke run)" if name == "synthetic" else
           f"`{name}` (../shared/data), `vestis import` with values under 20 examples folded into `other`")  # fmt: skip
    text = (
        f"Dataset: {src}; one group-aware 80/10/10 split for every row ({counts['train']} training, {counts['val']} "
        f"validation, {counts['test']} test photos). Network: EfficientNet-Lite0 `baseline` (`{PRESET}` preset: "
        f"{t.optimizer}, lr {t.lr:g}, backbone x{t.backbone_lr_mult:g}, {t.schedule}), {a.image_size} px for every "
        f"run. Refinement: {_n(a.epochs, 'epoch')}, "
        f"the last {a.trainable_blocks} backbone blocks + the attribute branches trained on the cached frozen trunk "
        f"below them (`train.trainable_blocks={a.trainable_blocks} train.cache_features=true`) for every "
        "initialisation, so the scratch row refines on a **random frozen trunk**; the base models enter with "
        "`model.init=BASE/best.ckpt` (title head replaced by the branches). Labelled rows: a seeded subset of the "
        "training split per seed (nested across fractions); the other training rows are **dropped** from the run's "
        "manifest (the same epochs, so fewer steps), validation (checkpoint selection) and test rows untouched. "
        f"Seeds {', '.join(map(str, a.seeds))}; cells: mean ± half range over them of accuracy / average per-class "
        "accuracy on the test split (`vestis.eval.run.evaluate_checkpoint`)."
    )
    if tops:
        how = []
        if any(INITS[i][0] is not None and not INITS[i][1] for i in a.inits):
            how.append(f"from scratch: the whole network from random weights, lr {SCRATCH_PRETRAIN_LR:g}, image "
                       "augmentation on")  # fmt: skip
        if any(INITS[i][0] is not None and INITS[i][1] for i in a.inits):
            how.append(f"from ImageNet: the last {a.pretrain_blocks} blocks on the cached ImageNet trunk")
        text += (
            f"\n\nTitle base models (`vestis pretrain`): {_n(a.pretrain_epochs, 'epoch')} at {a.image_size} px on "
            "the training split's photos and title words (sigmoid head over the vocabulary; a row without a "
            f"vocabulary word is masked); {'; '.join(how)}. Vocabularies (`vestis vocab`, training split only, "
            f"label-word exclusion on): {vocab_facts(work, tops)}. Left out as restating an attribute value (word "
            f"(training titles)): {excluded_words(work, tops)}. Validation mean average precision of the base "
            f"models over their vocabulary (how well they learnt the words): {base_facts(work, a.inits)}."
        )
    return text


def table4_text(name: str, comps: dict[str, dict[str, Any]], best: str, means: dict[tuple[str, float], float | None],
                hi: float, a: argparse.Namespace) -> str:  # fmt: skip
    """Table 4: the best model on its test split (A) vs the 60x80 px production copy (B)."""
    from vestis.eval.compare import format_comparison

    parts = [
        f"The best Table-3 model at {hi * 100:g} % of the labels ({LABELS[best]}, mean test accuracy "
        f"{fmt(means[(best, hi)])}, seed {a.seeds[0]}'s checkpoint) scored by `vestis evaluate --compare` on the "
        f"`{name}` test split as shot (A) and on the same photos re-encoded to fit 60x80 px (JPEG quality 90) and "
        f"upscaled to {a.image_size} px by the loader (B, the production set). Accuracy columns: multi-class "
        "accuracy (micro-F1 for multi-label attributes); drop = A - B; TVD: total variation distance of the label "
        "and predicted value distributions."
    ]
    drops = {}
    for i, c in comps.items():
        s = c["metrics"]["summary"]
        drops[i] = s.get("mean_accuracy_drop")
        parts.append(f"**{LABELS[i]}** (report and figures: `{c['markdown']}`, `figures/` beside it):\n\n"
                     + format_comparison(c["metrics"]))  # fmt: skip
        parts.append(
            f"Mean accuracy {fmt(s.get('mean_accuracy_a'))} -> {fmt(s.get('mean_accuracy_b'))} (drop "
            f"{fmt(s.get('mean_accuracy_drop'))}); mean average per-class accuracy "
            f"{fmt(s.get('mean_average_per_class_accuracy_a'))} -> {fmt(s.get('mean_average_per_class_accuracy_b'))}"
            f"; mean predicted-value TVD {fmt(s.get('mean_predicted_tvd'))} (label TVD "
            f"{fmt(s.get('mean_label_tvd'))}"
            + (": the same products, so only the predictions shift)." if not s.get("mean_label_tvd") else ").")
        )
    title = [i for i in comps if INITS[i][0] is not None]
    plain = [i for i in comps if INITS[i][0] is None]
    if title and plain and drops[title[0]] is not None and drops[plain[0]] is not None:
        t, o = title[0], plain[0]
        better = drops[t] < drops[o]
        parts.append(
            f"The best model {'is' if INITS[best][0] is not None else 'is not'} a title base model. Under the "
            f"production shift the title base model ({LABELS[t]}) loses {drops[t] * 100:.1f} points of mean accuracy "
            f"against {drops[o] * 100:.1f} for {LABELS[o]}: it holds up {'better' if better else 'no better'}."
        )
    parts.append("Few labels (Table 3): " + few_labels_verdict(means, a.inits, a.fractions))
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
