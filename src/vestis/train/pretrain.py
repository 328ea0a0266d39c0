"""A catalog base model trained on title words (the Softlines base-model paper's "Top500" / "Top2000").

The base model has one task: a multi-label attribute (``title_words`` by default) whose values are the
vocabulary of :mod:`vestis.data.vocab`, each row labelled with the vocabulary words its title holds. It is an
ordinary vestis run: :func:`pretrain` derives a manifest and a taxonomy inside the run folder
(``pretrain_manifest.csv``, ``pretrain_taxonomy.yaml``) and calls :func:`vestis.train.loop.train` on them, so the
checkpoint loads, evaluates and initialises a refined model (``model.init``) like any other.

* Images are referenced by absolute path, so the derived manifest can live in the run folder.
* Every row carries the ``split`` the original manifest gets under the vocabulary's split settings (the same
  :func:`~vestis.data.splits.assign_splits` that ``vestis train`` uses), so the base model trains on exactly the
  rows whose titles were counted, and a refined model's test rows were never seen by the base model.
* A row without a title, or whose title holds no vocabulary word, has no label (the manifest cannot state "all
  words absent": an empty cell is a missing label), so it is masked out of the loss like any missing label.
* ``best.ckpt`` is picked by the validation mean average precision (:data:`SELECTION_METRIC`) unless the config
  names another metric: a vocabulary of hundreds of sparse words keeps every score under the 0.5 threshold for
  the first epochs, so micro-F1 (the classifier default) stays 0 and cannot rank them.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from vestis.config import Config
from vestis.data.manifest import Manifest, Record, read_manifest, write_manifest
from vestis.data.splits import assign_splits
from vestis.data.taxonomy import Attribute, Taxonomy, load_taxonomy, save_taxonomy
from vestis.data.vocab import Vocabulary, file_sha256, load_vocabulary, title_labels
from vestis.errors import VestisError
from vestis.io import atomic_write_bytes
from vestis.train.loop import TrainResult, train

__all__ = ["PRETRAIN_MANIFEST", "PRETRAIN_TAXONOMY", "SELECTION_METRIC", "derive_pretrain_catalog", "pretrain"]

PRETRAIN_MANIFEST = "pretrain_manifest.csv"
PRETRAIN_TAXONOMY = "pretrain_taxonomy.yaml"
SELECTION_METRIC = "mean_average_precision"  # what picks best.ckpt when train.selection_metric is auto


def check_split(vocab: Vocabulary, cfg: Config, source: str) -> None:
    """The vocabulary must have been counted on the split this run trains on."""
    ours = {"val_fraction": cfg.data.val_fraction, "test_fraction": cfg.data.test_fraction, "seed": cfg.data.split_seed}
    theirs = {k: vocab.split.get(k) for k in ours}
    if ours != theirs:
        raise VestisError(
            f"{source}: split: the vocabulary was counted with {theirs} but the run splits with {ours} "
            "(data.val_fraction, data.test_fraction, data.split_seed); rebuild it with `vestis vocab` and the same "
            "config, or set the run's data settings to the vocabulary's"
        )


def derive_pretrain_catalog(manifest: Manifest, vocab: Vocabulary) -> tuple[Manifest, Taxonomy]:
    """The base model's manifest and taxonomy: each row labelled with the vocabulary words of its title.

    Args:
        manifest: the original catalog.
        vocab: the title vocabulary (its ``split`` settings assign every row's ``split``).

    Returns:
        ``(manifest, taxonomy)``: rows with absolute image paths, the original ids, groups, titles and the split,
        and one ``multi`` attribute named ``vocab.attribute`` whose values are the words in vocabulary order.
    """
    s = vocab.split
    where = assign_splits(
        manifest.records, val_fraction=float(s["val_fraction"]), test_fraction=float(s["test_fraction"]),
        seed=int(s["seed"]),
    )  # fmt: skip
    name = vocab.attribute
    records = []
    for r in manifest.records:
        words = title_labels(r, vocab)
        records.append(
            Record(
                id=r.id,
                image=str(manifest.image_path(r).absolute()),
                labels={name: words} if words else {},
                group=r.group,
                split=where[r.id],
                title=r.title,
                line=r.line,
            )
        )
    attr = Attribute(
        name=name,
        kind="multi",
        values=tuple(vocab.words),
        description=f"the {len(vocab.words)} most frequent title words of the training split (vestis vocab)",
    )
    taxonomy = Taxonomy(attributes=(attr,), name=f"title words top {len(vocab.words)}")
    return Manifest(records, attributes=[name], root=manifest.root), taxonomy


def pretrain(
    cfg: Config,
    data: str | os.PathLike[str],
    vocab: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    skip_invalid: bool = False,
    check_images: bool = True,
    device: str | None = None,
    progress: bool = True,
    log: Any = print,
    trust_checkpoint: bool = False,
) -> TrainResult:
    """Train a base model on the title words of ``data`` (what ``vestis pretrain`` runs).

    Args:
        cfg: the run's configuration (its data split settings must be the vocabulary's).
        data: the original manifest (its ``title`` column).
        vocab: a ``vocab.json`` from ``vestis vocab`` counted on ``data``.
        out_dir: run directory; also receives ``pretrain_manifest.csv``, ``pretrain_taxonomy.yaml`` and a copy
            of the vocabulary (``vocab.json``).
        resume: continue the run in ``out_dir`` (the derived files must come out the same).
        skip_invalid: leave out rows that fail reading or validation instead of stopping.
        check_images, device, progress, log, trust_checkpoint: as :func:`vestis.train.loop.train`.

    Returns:
        The :class:`~vestis.train.loop.TrainResult`.

    Raises:
        VestisError: the vocabulary was counted on another manifest or split, the manifest has unreadable rows
            (without ``skip_invalid``), ``out_dir`` already holds a run (without ``resume``), or what ``train``
            refuses.
    """
    data, out = Path(data), Path(out_dir)
    vocab_path = Path(vocab)
    voc = load_vocabulary(vocab_path)
    check_split(voc, cfg, str(vocab_path))
    if voc.manifest and voc.manifest.get("sha256") and Path(data).is_file():
        sha = file_sha256(data)
        if sha != voc.manifest["sha256"]:
            raise VestisError(
                f"{vocab_path}: manifest: counted on {voc.manifest.get('path')} ({voc.manifest['sha256'][:19]}...) "
                f"but --data {data} is another file ({sha[:19]}...); rebuild the vocabulary on it with `vestis vocab`"
            )
    manifest = read_manifest(data)
    if manifest.problems:
        if not skip_invalid:
            shown = "\n".join(f"  {p}" for p in manifest.problems[:5])
            raise VestisError(
                f"{data}: {len(manifest.problems)} unreadable row(s); fix them or pass --skip-invalid\n{shown}"
            )
        log(f"{len(manifest.problems)} unreadable row(s) of {data} left out")
    if not resume and (out / "last.ckpt").exists():
        raise VestisError(
            f"{out}: already holds a run (last.ckpt); pass --resume to continue it or choose another --out"
        )
    derived, taxonomy = derive_pretrain_catalog(manifest, voc)
    labelled = sum(1 for r in derived.records if r.labels)
    log(f"title words: {len(voc.words)}; {labelled} of {len(derived)} rows hold at least one (the rest are masked)")
    out.mkdir(parents=True, exist_ok=True)
    m_path, t_path = out / PRETRAIN_MANIFEST, out / PRETRAIN_TAXONOMY
    if resume and m_path.is_file() and t_path.is_file():
        _check_same(derived, taxonomy, m_path, t_path)
    write_manifest(derived, m_path)
    save_taxonomy(taxonomy, t_path)
    if vocab_path.resolve() != (out / "vocab.json").resolve():
        atomic_write_bytes(out / "vocab.json", vocab_path.read_bytes())
    if cfg.train.selection_metric == "auto" and not cfg.train.early_stop_metric:
        cfg = copy.deepcopy(cfg)
        cfg.train.selection_metric = SELECTION_METRIC
    return train(
        cfg, m_path, out, taxonomy=t_path, resume=resume, skip_invalid=skip_invalid, check_images=check_images,
        device=device, progress=progress, log=log, trust_checkpoint=trust_checkpoint,
    )  # fmt: skip


def _check_same(manifest: Manifest, taxonomy: Taxonomy, m_path: Path, t_path: Path) -> None:
    """On ``--resume`` the derived catalog must be the one the run started on."""
    old_tax = load_taxonomy(t_path)
    if old_tax.to_dict() != taxonomy.to_dict():
        raise VestisError(f"{t_path}: the vocabulary differs from the one this run started with; use a new --out")
    old = read_manifest(m_path)
    key = lambda r: (r.id, r.image, r.split, r.labels)  # noqa: E731
    if [key(r) for r in old.records] != [key(r) for r in manifest.records]:
        raise VestisError(f"{m_path}: the manifest's rows or labels changed since this run started; use a new --out")
