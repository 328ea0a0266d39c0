"""One refined model per attribute (what the Softlines base-model paper deploys), served as one combined model.

:func:`train_per_attribute` trains, for each chosen attribute of the taxonomy, an ordinary vestis run with the
same configuration on a one-attribute taxonomy, through :func:`vestis.train.loop.train`, into
``RUN/<attribute>/`` (``last.ckpt``, ``best.ckpt``, ``config.yaml``, plus the ``manifest.csv`` and
``taxonomy.yaml`` it trained on), then writes ``RUN/combined.json`` (:func:`vestis.inference.combined.write_combined`),
which ``Predictor.from_path``, ``vestis predict``, ``vestis export`` and ``vestis serve`` take as one model.

* Each member's manifest holds every row of the original one (absolute image paths, ids, groups, titles) with
  only that attribute's label and the ``split`` the original manifest gets under the run's split settings, so all
  members train, select and calibrate on the same rows as a joint run would; a row without that label is masked
  out of the loss as usual.
* A member's taxonomy is the attribute alone; ``applies_to`` needs the category attribute, so it is left out
  there (rows of other categories carry no label) and kept in ``combined.json``'s taxonomy when the category
  attribute is a member too, so the combined predictor leaves out attributes that do not apply.
* Resumable: a member that finished (``RUN/<attribute>/finished.json``) is skipped on a rerun, after checking it
  was trained with the same settings on the same rows; ``resume`` continues an interrupted member exactly.
* With a base model in ``model.init`` and a frozen trunk (``train.trainable_blocks=0``, optionally
  ``train.cache_features``), every member keeps the base model's backbone, and the combined predictor runs it
  once per batch for all of them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vestis.config import Config
from vestis.data.catalog import load_catalog
from vestis.data.manifest import Manifest, Record, read_manifest, write_manifest
from vestis.data.splits import assign_splits
from vestis.data.taxonomy import Taxonomy, load_taxonomy, save_taxonomy
from vestis.data.validate import clean_catalog, validate_manifest
from vestis.errors import VestisError
from vestis.io import atomic_write_text

__all__ = ["FINISHED", "MemberResult", "PerAttributeResult", "member_catalog", "member_dirs", "train_per_attribute"]

FINISHED = "finished.json"  # written into a member's folder once its training returned
MEMBER_MANIFEST = "manifest.csv"
MEMBER_TAXONOMY = "taxonomy.yaml"


@dataclass(frozen=True)
class MemberResult:
    """One attribute's run.

    Attributes:
        attribute: the attribute.
        out_dir: its run folder.
        checkpoint: the member checkpoint (``best.ckpt``; ``last.ckpt`` when validation never gave a value).
        fingerprint: the checkpoint's fingerprint.
        selection: ``best.ckpt``'s selection record (metric, value, epoch, mode), or ``None``.
        skipped: it had finished before this call.
    """

    attribute: str
    out_dir: Path
    checkpoint: Path
    fingerprint: str
    selection: dict[str, Any] | None
    skipped: bool


@dataclass(frozen=True)
class PerAttributeResult:
    """What :func:`train_per_attribute` wrote: the members in taxonomy order and ``combined.json``."""

    out_dir: Path
    combined: Path
    fingerprint: str
    members: list[MemberResult] = field(default_factory=list)


def member_dirs(names: Sequence[str]) -> dict[str, str]:
    """Attribute -> folder name inside the run: ``[A-Za-z0-9_.-]`` only, never ``.``/``..``, unique."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for n in names:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", n)
        if not base.strip(".") or base.startswith("."):
            base = f"attr_{base}"
        name, k = base, 2
        while name.lower() in taken or name == "combined.json":
            name, k = f"{base}_{k}", k + 1
        taken.add(name.lower())
        out[n] = name
    return out


def member_catalog(
    manifest: Manifest, taxonomy: Taxonomy, name: str, split: dict[str, str]
) -> tuple[Manifest, Taxonomy]:
    """The manifest and taxonomy one attribute's run trains on.

    Args:
        manifest: the original catalog (validated).
        taxonomy: its taxonomy.
        name: the attribute.
        split: record id -> ``train``/``val``/``test`` (:func:`~vestis.data.splits.assign_splits`).

    Returns:
        Every row with absolute image paths and only ``name``'s label (absent when unlabelled), and a taxonomy of
        that attribute alone (``applies_to`` left out; the category attribute keeps its hierarchy).
    """
    import dataclasses

    attr = taxonomy[name]
    is_category = name == taxonomy.category_attribute
    records = [
        Record(
            id=r.id,
            image=str(manifest.image_path(r).absolute()),
            labels={name: r.labels[name]} if name in r.labels else {},
            group=r.group,
            split=split[r.id],
            title=r.title,
            line=r.line,
        )
        for r in manifest.records
    ]
    tax = Taxonomy(
        attributes=(dataclasses.replace(attr, applies_to=None),),
        category_attribute=name if is_category else None,
        hierarchy=dict(taxonomy.hierarchy) if is_category else {},
        name=f"{taxonomy.name or 'taxonomy'}: {name}",
    )
    return Manifest(records, attributes=[name], root=manifest.root), tax


def train_per_attribute(
    cfg: Config,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    taxonomy: str | os.PathLike[str] | None = None,
    attributes: Sequence[str] | None = None,
    resume: bool = False,
    skip_invalid: bool = False,
    check_images: bool = True,
    device: str | None = None,
    progress: bool = True,
    log: Any = print,
    trust_checkpoint: bool = False,
    command: str = "vestis train --per-attribute",
) -> PerAttributeResult:
    """Train one model per attribute into ``out_dir/<attribute>/`` and write ``out_dir/combined.json``.

    Args:
        cfg: the configuration every member trains with (an attribute classifier).
        data: the manifest; the taxonomy defaults to ``taxonomy.yaml`` beside it.
        out_dir: the run folder.
        taxonomy: the taxonomy file.
        attributes: the attributes to train, in any order (default: all); the members follow taxonomy order.
        resume: continue a member whose run was interrupted (``last.ckpt`` without ``finished.json``).
        skip_invalid: leave out rows that fail validation (listed in ``out_dir/skipped_rows.csv``).
        check_images, device, progress, trust_checkpoint: as :func:`vestis.train.loop.train`.
        log: where one-line messages go: a line per member, and each member's training log prefixed with it.
        command: the command line recorded at the top of each member's ``config.yaml``.

    Returns:
        The members and the combined model file.

    Raises:
        VestisError: not a classifier config, an unknown attribute, an invalid manifest (without
            ``skip_invalid``), a finished member trained with other settings or on other rows, an interrupted
            member without ``resume``, what :func:`~vestis.train.loop.train` refuses.
    """
    from vestis.config_doc import config_yaml
    from vestis.inference.combined import union_taxonomy, write_combined
    from vestis.train.checkpoint import fingerprint_of, load_checkpoint
    from vestis.train.loop import _check_resume_config, train
    from vestis.train.tasks import model_task

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise VestisError("--per-attribute: runs in one process; start it without torchrun")
    kind = model_task(cfg.model.name)
    if kind != "classification":
        raise VestisError(f"--per-attribute: model {cfg.model.name!r} is a {kind} model; pick a classifier (--model)")
    cfg = cfg.resolved()
    data, out = Path(data), Path(out_dir)
    manifest, tax = load_catalog(data, taxonomy)
    names = list(attributes) if attributes else tax.names
    unknown = [n for n in names if n not in tax]
    if unknown:
        raise VestisError(f"--attributes: {unknown} not in the taxonomy; expected some of {tax.names}")
    if len(set(names)) != len(names):
        raise VestisError(f"--attributes: {names} names an attribute twice")
    names = [a.name for a in tax if a.name in names]  # taxonomy order
    out.mkdir(parents=True, exist_ok=True)
    problems = validate_manifest(manifest, tax, check_images=False, max_pixels=cfg.data.max_pixels)
    manifest = clean_catalog(manifest, tax, problems, skip_invalid=skip_invalid, skipped_path=out / "skipped_rows.csv")
    d = cfg.data
    split = assign_splits(
        manifest.records, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=d.split_seed
    )
    folders = member_dirs(names)
    results: list[MemberResult] = []
    for k, name in enumerate(names, 1):
        sub = out / folders[name]
        tag = f"[{k}/{len(names)}] {name}"
        m, t = member_catalog(manifest, tax, name, split)
        m_path, t_path, done = sub / MEMBER_MANIFEST, sub / MEMBER_TAXONOMY, sub / FINISHED
        if done.is_file():
            member = _finished(done, sub, name, cfg, m, t, _check_resume_config)
            log(f"{tag}: finished before, skipped ({_shown(member.selection)})")
            results.append(member)
            continue
        interrupted = (sub / "last.ckpt").is_file()
        if interrupted and not resume:
            raise VestisError(
                f"{sub}: member {name!r} was interrupted (last.ckpt, no {FINISHED}); pass --resume to continue it"
            )
        if interrupted:
            _check_same(m, t, m_path, t_path)
        sub.mkdir(parents=True, exist_ok=True)
        write_manifest(m, m_path)
        save_taxonomy(t, t_path)
        atomic_write_text(sub / "config.yaml", config_yaml(cfg, header=f"{command} (attribute {name})"))
        log(f"{tag}: training -> {sub}")
        result = train(
            cfg, m_path, sub, taxonomy=t_path, resume=interrupted, skip_invalid=skip_invalid,
            check_images=check_images, device=device, progress=progress,
            log=lambda msg, _n=name: log(f"  {_n}: {msg}"), trust_checkpoint=trust_checkpoint,
        )  # fmt: skip
        ckpt = result.best if result.best.is_file() else result.last
        if ckpt == result.last:
            log(f"  {name}: no validation value in any epoch; its member is last.ckpt (no calibrated thresholds)")
        state = load_checkpoint(ckpt)
        selection = (state.get("metrics") or {}).get("selection")
        member = MemberResult(name, sub, ckpt, fingerprint_of(state), selection, skipped=False)
        record = {
            "attribute": name,
            "checkpoint": ckpt.name,
            "fingerprint": member.fingerprint,
            "selection": selection,
            "config": cfg.to_dict(),
        }
        atomic_write_text(done, json.dumps(record, indent=2, allow_nan=False) + "\n")
        log(f"{tag}: done ({_shown(selection)}) -> {ckpt}")
        results.append(member)
    union = union_taxonomy(tax, names)
    combined = write_combined(out, union, {r.attribute: r.checkpoint for r in results})
    fp = json.loads(combined.read_text(encoding="utf-8"))["fingerprint"]
    log(f"combined model of {len(results)} attribute(s): {combined} ({fp[:19]}...)")
    return PerAttributeResult(out, combined, fp, results)


def _shown(selection: dict[str, Any] | None) -> str:
    if not selection:
        return "no selection record"
    v = selection.get("value")
    return f"{selection.get('metric')} = {'None' if v is None else f'{v:.4g}'}, epoch {selection.get('epoch')}"


def _finished(
    done: Path, sub: Path, name: str, cfg: Config, m: Manifest, t: Taxonomy, check_config: Any
) -> MemberResult:
    """A member that finished: its settings and rows must be this call's; its checkpoint must be the recorded one."""
    from vestis.train.checkpoint import fingerprint_of, load_checkpoint

    try:
        rec = json.loads(done.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VestisError(f"{done}: unreadable ({e}); delete it and pass --resume to finish the member again") from None
    if (
        not isinstance(rec, dict)
        or rec.get("attribute") != name
        or rec.get("checkpoint") not in ("best.ckpt", "last.ckpt")
    ):
        raise VestisError(f"{done}: expected the record of member {name!r}; delete the folder {sub} to retrain it")
    check_config(rec.get("config") or {}, cfg, done)
    _check_same(m, t, sub / MEMBER_MANIFEST, sub / MEMBER_TAXONOMY)
    ckpt = sub / rec["checkpoint"]
    state = load_checkpoint(ckpt)
    fp = fingerprint_of(state)
    if fp != rec.get("fingerprint"):
        raise VestisError(f"{ckpt}: fingerprint {fp} is not the {rec.get('fingerprint')} recorded in {done}")
    return MemberResult(name, sub, ckpt, fp, (state.get("metrics") or {}).get("selection"), skipped=True)


def _check_same(manifest: Manifest, taxonomy: Taxonomy, m_path: Path, t_path: Path) -> None:
    """A member continued or skipped must have started on these rows and this taxonomy."""
    if not (m_path.is_file() and t_path.is_file()):
        raise VestisError(f"{m_path.parent}: no {m_path.name} / {t_path.name} of the member; use a new --out")
    if load_taxonomy(t_path).to_dict() != taxonomy.to_dict():
        raise VestisError(f"{t_path}: the attribute changed since this member started; use a new --out")
    old = read_manifest(m_path)
    key = lambda r: (r.id, r.image, r.split, r.labels)  # noqa: E731
    if [key(r) for r in old.records] != [key(r) for r in manifest.records]:
        raise VestisError(f"{m_path}: the manifest's rows or labels changed since this member started; use a new --out")
