"""Per-attribute models served as one: ``combined.json`` and the predictor built from it.

``vestis train --per-attribute`` (:mod:`vestis.train.per_attribute`) trains one refined model per attribute, as
the paper deploys them, into ``RUN/<attribute>/``, then writes ``RUN/combined.json``::

    {"format": "vestis-combined", "version": 1,
     "taxonomy": {...},                      # the union: the original taxonomy restricted to the members
     "preprocessing": {"image_size": 224, "mean": [...], "std": [...], "pad_value": 255, "resize": "letterbox"},
     "members": {"category": {"checkpoint": "category/best.ckpt", "fingerprint": "sha256:...",
                              "selection": {"metric": "...", "value": 0.91, "epoch": 3, "mode": "max"}}, ...},
     "fingerprint": "sha256:..."}            # combined_fingerprint() of members, taxonomy and preprocessing

:func:`combined_predictor_args` (what ``Predictor.from_path(RUN)`` or ``Predictor.from_path(RUN/combined.json)`` calls)
returns an ordinary :class:`~vestis.inference.predictor.Predictor` whose module is :class:`CombinedModule`:

* every image is decoded and letterboxed once for all members (one preprocessing, refused when members differ);
* members whose backbones hold identical tensors (a frozen or cached trunk refined from the same base model)
  share one backbone module, run once per batch; each member's neck, attention and heads run on its output
  (:meth:`~vestis.inference.onnx_format.InferenceModule.from_features`); backbones that only begin with identical
  blocks (refined in their last blocks from one base model) run those blocks once and each the rest; other
  members run their own backbone (``info["backbone_groups"]`` and ``info["shared_blocks"]`` say which);
* the outputs are the union of the members' attributes, in taxonomy order, each with its member's calibrated
  thresholds; the heat-map is the mean of the members' heat-maps (on the first member's grid).

Since the predictor is a plain ``Predictor`` on a torch module, ``vestis predict`` tags with it, the service
serves it and ``vestis export`` writes it as one ONNX graph with the single-model metadata.

A ``combined.json`` is input like any model file: it is read as bounded JSON, its checkpoints must lie inside its
folder, each must carry the fingerprint recorded for it, and the combined fingerprint is recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vestis.data.paths import UnsafePath, confine
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.errors import VestisError
from vestis.fingerprint import PREFIX, canonical_json
from vestis.inference.onnx_format import InferenceModule
from vestis.io import atomic_write_text
from vestis.models.backbones.base import Backbone

__all__ = [
    "COMBINED_FILENAME",
    "COMBINED_FORMAT",
    "CombinedModule",
    "backbone_groups",
    "combined_fingerprint",
    "combined_predictor_args",
    "is_combined",
    "read_combined",
    "shared_blocks",
    "trunk_groups",
    "union_taxonomy",
    "write_combined",
]

COMBINED_FORMAT = "vestis-combined"
COMBINED_VERSION = 1
COMBINED_FILENAME = "combined.json"
MAX_COMBINED_BYTES = 4 * 2**20  # a description file, not weights


def is_combined(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a combined model: a folder holding ``combined.json``, or a ``.json`` file."""
    p = Path(path)
    if p.is_dir():
        return (p / COMBINED_FILENAME).is_file()
    return p.suffix.lower() == ".json" and p.is_file()


def combined_fingerprint(
    members: Mapping[str, str], taxonomy: Mapping[str, Any], preprocessing: Mapping[str, Any]
) -> str:
    """``sha256:...`` over the members' fingerprints (attribute -> fingerprint), the taxonomy and preprocessing."""
    body = {"format": COMBINED_FORMAT, "members": dict(members), "taxonomy": taxonomy, "preprocessing": preprocessing}
    return PREFIX + hashlib.sha256(canonical_json(body)).hexdigest()


def member_attribute(original: Attribute, keep_applies_to: bool) -> Attribute:
    """``original`` as the union taxonomy holds it: ``applies_to`` only when the category attribute is a member."""
    return original if keep_applies_to else dataclasses.replace(original, applies_to=None)


def union_taxonomy(taxonomy: Taxonomy, names: Sequence[str]) -> Taxonomy:
    """``taxonomy`` restricted to ``names`` (in taxonomy order); without its category attribute, applicability
    (``applies_to``, the hierarchy) cannot be decided and is left out."""
    wanted = set(names)
    with_category = taxonomy.category_attribute in wanted
    attrs = tuple(member_attribute(a, with_category) for a in taxonomy if a.name in wanted)
    return Taxonomy(
        attributes=attrs,
        category_attribute=taxonomy.category_attribute if with_category else None,
        hierarchy=dict(taxonomy.hierarchy) if with_category else {},
        metadata=taxonomy.metadata,
        name=taxonomy.name,
    )


def write_combined(
    run_dir: str | os.PathLike[str], taxonomy: Taxonomy, members: Mapping[str, str | os.PathLike[str]]
) -> Path:
    """Write ``run_dir/combined.json`` for member checkpoints (attribute -> checkpoint inside ``run_dir``).

    Args:
        run_dir: the folder of the per-attribute run.
        taxonomy: the union taxonomy (see :func:`union_taxonomy`); its attributes are the members'.
        members: attribute -> checkpoint path (absolute or relative to the working directory) inside ``run_dir``.

    Returns:
        The written file.

    Raises:
        VestisError: a member checkpoint outside ``run_dir``, unreadable, without the attribute, with another
            kind or values, or with other preprocessing than the first member's.
    """
    from vestis.train.checkpoint import fingerprint_of, load_checkpoint

    root = Path(run_dir)
    if sorted(members) != sorted(taxonomy.names):
        raise VestisError(f"{root}: members {sorted(members)} differ from the taxonomy's attributes {taxonomy.names}")
    entries: dict[str, dict[str, Any]] = {}
    prep: dict[str, Any] | None = None
    first = ""
    for a in taxonomy:
        path = Path(members[a.name])
        try:
            rel = Path(os.path.relpath(confine(path, root), os.path.realpath(root)))
        except UnsafePath as e:
            raise VestisError(f"{path}: member {a.name!r}: the checkpoint must lie inside {root} ({e})") from None
        state = load_checkpoint(path)
        _check_member_attribute(path, a, state)
        p = dict(state.get("preprocessing") or {})
        if prep is None:
            prep, first = p, a.name
        elif p != prep:
            raise VestisError(
                f"{path}: preprocessing {p} differs from member {first!r}'s {prep}; members of one combined model "
                "must share it (train them with the same data settings)"
            )
        selection = (state.get("metrics") or {}).get("selection")
        entries[a.name] = {"checkpoint": rel.as_posix(), "fingerprint": fingerprint_of(state), "selection": selection}
    assert prep is not None  # a taxonomy has at least one attribute
    tax = taxonomy.to_dict()
    fp = combined_fingerprint({k: v["fingerprint"] for k, v in entries.items()}, tax, prep)
    doc = {
        "format": COMBINED_FORMAT,
        "version": COMBINED_VERSION,
        "taxonomy": tax,
        "preprocessing": prep,
        "members": entries,
        "fingerprint": fp,
    }
    out = root / COMBINED_FILENAME
    atomic_write_text(out, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return out


def _check_member_attribute(path: Path, want: Attribute, state: Mapping[str, Any]) -> int:
    """The index of ``want`` among the checkpoint's outputs, refusing another kind or other values."""
    try:
        tax = Taxonomy.from_dict(state.get("taxonomy"), source=f"{path} (taxonomy)")
    except VestisError as e:
        raise VestisError(f"{path}: {e}") from None
    if want.name not in tax:
        raise VestisError(f"{path}: member {want.name!r}: the checkpoint predicts {tax.names}, not {want.name!r}")
    have = tax[want.name]
    if (have.kind, have.values) != (want.kind, want.values):
        raise VestisError(
            f"{path}: member {want.name!r}: the checkpoint's attribute is {have.kind} {list(have.values)}, the "
            f"combined taxonomy's {want.kind} {list(want.values)}"
        )
    return tax.names.index(want.name)


def read_combined(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """Read and check ``combined.json`` (or the folder holding it) without loading any checkpoint.

    Returns:
        ``(file, document)``; the document's ``taxonomy`` is a :class:`Taxonomy`, each member's ``checkpoint``
        the confined absolute path.

    Raises:
        VestisError: a missing, oversized or malformed file, another format or a newer version, a missing or
            mistyped field, a member checkpoint outside the file's folder, a fingerprint that does not match.
    """
    p = Path(path)
    if p.is_dir():
        p = p / COMBINED_FILENAME
    if not p.is_file():
        raise VestisError(f"{p}: combined model file not found")
    size = p.stat().st_size
    if size > MAX_COMBINED_BYTES:
        raise VestisError(f"{p}: {size} bytes, over the {MAX_COMBINED_BYTES} a combined model file may hold")
    try:
        doc = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise VestisError(f"{p}: not a combined model file (expected UTF-8 JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("format") != COMBINED_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise VestisError(
            f"{p}: format: expected {COMBINED_FORMAT!r} (from `vestis train --per-attribute`), got {got!r}"
        )
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= COMBINED_VERSION:
        raise VestisError(f"{p}: version: expected an integer 1..{COMBINED_VERSION}, got {version!r}")
    for key, kind in (("taxonomy", dict), ("preprocessing", dict), ("members", dict), ("fingerprint", str)):
        if not isinstance(doc.get(key), kind):
            raise VestisError(f"{p}: {key}: expected a JSON {'object' if kind is dict else 'string'}")
    taxonomy = Taxonomy.from_dict(doc["taxonomy"], source=f"{p} (taxonomy)")
    members: dict[str, dict[str, Any]] = {}
    root = p.parent
    for name in taxonomy.names:
        entry = doc["members"].get(name)
        where = f"{p}: members.{name}"
        if not isinstance(entry, dict):
            raise VestisError(f"{where}: expected an object (checkpoint, fingerprint) for every attribute")
        rel, fp = entry.get("checkpoint"), entry.get("fingerprint")
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
            raise VestisError(f"{where}.checkpoint: expected a path relative to {root}, got {rel!r}")
        if not isinstance(fp, str) or not fp.startswith(PREFIX):
            raise VestisError(f"{where}.fingerprint: expected a {PREFIX}... string, got {fp!r}")
        try:
            ckpt = confine(root / rel, root)
        except UnsafePath as e:
            raise VestisError(f"{where}.checkpoint: {rel!r} must lie inside {root} ({e})") from None
        members[name] = {**entry, "checkpoint": ckpt}
    extra = sorted(set(doc["members"]) - set(taxonomy.names))
    if extra:
        raise VestisError(f"{p}: members: {extra} are not attributes of its taxonomy {taxonomy.names}")
    want = combined_fingerprint(
        {k: v["fingerprint"] for k, v in members.items()}, doc["taxonomy"], doc["preprocessing"]
    )
    if doc["fingerprint"] != want:
        raise VestisError(f"{p}: fingerprint: {doc['fingerprint']!r} does not match its members ({want!r})")
    return p, {**doc, "taxonomy": taxonomy, "members": members}


def backbone_groups(models: Sequence[nn.Module]) -> list[list[int]]:
    """Indices of ``models`` grouped by identical backbones: the same class, maps and tensors (bit for bit).

    Returns:
        Groups in order of their first member, each in model order; every index is in exactly one group.
    """
    groups: list[list[int]] = []
    for i, m in enumerate(models):
        for g in groups:
            if _same_backbone(models[g[0]].backbone, m.backbone):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def _same_backbone(a: nn.Module, b: nn.Module) -> bool:
    if type(a) is not type(b) or getattr(a, "out_features", None) != getattr(b, "out_features", None):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(_same_tensor(x, y) for x, y in zip(sa.values(), sb.values(), strict=True))


def shared_blocks(a: nn.Module, b: nn.Module) -> int:
    """How many leading backbone blocks of ``a`` and ``b`` hold identical tensors (0 when they are not two
    :class:`~vestis.models.backbones.base.Backbone` of one architecture with the same maps)."""
    if not (isinstance(a, Backbone) and isinstance(b, Backbone)) or type(a) is not type(b):
        return 0
    blocks = a.blocks()
    if [k.name for k in blocks] != [k.name for k in b.blocks()] or a.out_features != b.out_features:
        return 0
    sa, sb = a.state_dict(), b.state_dict()
    n = 0
    for block in blocks:
        prefixes = tuple(f"{path}." for path in block.paths)
        ka = [k for k in sa if k.startswith(prefixes)]
        if ka != [k for k in sb if k.startswith(prefixes)] or not all(_same_tensor(sa[k], sb[k]) for k in ka):
            break
        n += 1
    return n


def _same_tensor(x: Tensor, y: Tensor) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


def trunk_groups(models: Sequence[nn.Module], groups: Sequence[Sequence[int]]) -> list[tuple[list[int], int]]:
    """Backbone groups whose backbones begin with the same blocks: ``(group indices, shared blocks)``.

    A trunk of one group shares nothing below it (``0``); several groups share the blocks every one of them has in
    common with the first (a trunk refined in its last blocks only, from the same base model).
    """
    trunks: list[tuple[list[int], int]] = []
    for gi, g in enumerate(groups):
        bb = models[g[0]].backbone
        for t, (members, k) in enumerate(trunks):
            n = shared_blocks(models[groups[members[0]][0]].backbone, bb)
            if n > 0:
                trunks[t] = ([*members, gi], n if len(members) == 1 else min(k, n))
                break
        else:
            trunks.append(([gi], 0))
    return trunks


class CombinedModule(nn.Module):
    """Several :class:`~vestis.inference.onnx_format.InferenceModule` as one: ``uint8`` images in, the chosen
    outputs of each member and the mean heat-map out (the graph the combined predictor runs).

    Members of one group (see :func:`backbone_groups`) are given the first one's backbone module, which runs
    once per batch; the others' identical backbones are dropped. Groups whose backbones begin with identical blocks
    (:func:`trunk_groups`) run those blocks once (``forward_until``), then each group the rest (``forward_from``).

    Args:
        members: one inference module per member; they normalise alike (the first one's mean and std are used).
        outputs: for each output in order, ``(member index, index of the member's output)``.
        groups: member indices sharing a backbone; default :func:`backbone_groups` of the members' models.
    """

    def __init__(
        self,
        members: Sequence[InferenceModule],
        outputs: Sequence[tuple[int, int]],
        groups: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        if not members:
            raise VestisError("CombinedModule: no member")
        self.members = nn.ModuleList(members)
        models = [m.model for m in members]
        self.groups = [list(g) for g in (groups if groups is not None else backbone_groups(models))]
        if sorted(i for g in self.groups for i in g) != list(range(len(members))):
            raise VestisError(f"CombinedModule: groups {self.groups} must hold every member once")
        self.trunks = trunk_groups(models, self.groups)
        for g in self.groups:
            shared = members[g[0]].model.backbone
            for i in g[1:]:
                members[i].model.backbone = shared
        self.outputs = [(int(i), int(j)) for i, j in outputs]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """The chosen probabilities in order, then the heat-map ``(B, h, w)``."""
        x = self.members[0].normalize(images)
        results: list[tuple[Tensor, ...]] = [() for _ in self.members]
        for trunk, k in self.trunks:
            backbones = [self.members[self.groups[gi][0]].model.backbone for gi in trunk]
            if k:  # the shared lower blocks once, the rest of each group's backbone on their output
                cut, taps = backbones[0].forward_until(x, k)
                feats = [bb.forward_from(cut, k, taps) for bb in backbones]
            else:
                feats = [bb(x) for bb in backbones]
            for gi, f in zip(trunk, feats, strict=True):
                for i in self.groups[gi]:
                    results[i] = self.members[i].from_features(f)
        probs = [results[i][j] for i, j in self.outputs]
        heats = [r[-1] for r in results]
        size = heats[0].shape[-2:]
        heats = [
            h
            if h.shape[-2:] == size
            else F.interpolate(h[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            for h in heats
        ]
        return (*probs, torch.stack(heats).mean(0))


def combined_predictor_args(
    path: str | os.PathLike[str],
    device: str | None = None,
    *,
    threads: int | None = None,
    trust_checkpoint: bool = False,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of the :class:`~vestis.inference.predictor.Predictor` of a combined model (module docstring):
    ``Predictor(*args, **kwargs)``, which is what ``Predictor.from_path`` returns for one.

    Args:
        path: ``combined.json`` or the run folder holding it.
        device, threads, trust_checkpoint: as :meth:`Predictor.from_path`.

    Returns:
        ``(args, kwargs)`` of a ``Predictor`` (PyTorch backend) with the union taxonomy, every member's calibrated
        thresholds, the combined fingerprint and, in ``info``, the members' fingerprints and the backbone groups.

    Raises:
        VestisError: what :func:`read_combined` refuses, a member checkpoint that is missing, unreadable, not an
            attribute classifier, carries another fingerprint than recorded, or another preprocessing.
    """
    from vestis.inference.backends import TorchBackend
    from vestis.inference.runtime import check_threads, eager_memory_format, torch_device
    from vestis.train.checkpoint import fingerprint_of, load_checkpoint, rebuild_model
    from vestis.train.tasks import model_task

    file, doc = read_combined(path)
    taxonomy: Taxonomy = doc["taxonomy"]
    prep = dict(doc["preprocessing"])
    if threads is not None:
        torch.set_num_threads(check_threads(threads))
    dev = torch_device(device)
    modules: list[InferenceModule] = []
    outputs: list[tuple[int, int]] = []
    thresholds: dict[str, list[float]] = {}
    config: dict[str, Any] | None = None
    for a in taxonomy:
        entry = doc["members"][a.name]
        ckpt: Path = entry["checkpoint"]
        if not ckpt.is_file():
            raise VestisError(f"{file}: members.{a.name}.checkpoint: {ckpt} not found")
        state = load_checkpoint(ckpt, trust=trust_checkpoint)
        name = str((state.get("config") or {}).get("model", {}).get("name", ""))
        if state.get("embedding") or (name and model_task(name) != "classification"):
            raise VestisError(
                f"{ckpt}: member {a.name!r} is a {name or 'embedding'} model, not an attribute classifier"
            )
        if fingerprint_of(state) != entry["fingerprint"]:
            raise VestisError(
                f"{ckpt}: fingerprint {fingerprint_of(state)} differs from the {entry['fingerprint']} that {file} "
                f"records for {a.name!r} (retrained since?); rerun `vestis train --per-attribute` to rewrite it"
            )
        if dict(state.get("preprocessing") or {}) != prep:
            raise VestisError(f"{ckpt}: preprocessing {state.get('preprocessing')} differs from {file}'s {prep}")
        index = _check_member_attribute(ckpt, a, state)
        model = eager_memory_format(rebuild_model(state, source=str(ckpt), map_location=dev), dev)
        modules.append(InferenceModule(model, model.taxonomy, prep["mean"], prep["std"]))
        outputs.append((len(modules) - 1, index))
        if a.name in (state.get("thresholds") or {}):
            thresholds[a.name] = list(state["thresholds"][a.name])
        config = config if config is not None else state.get("config")
    module = CombinedModule(modules, outputs)
    info = {
        "quantization": "none",
        "members": {a.name: doc["members"][a.name]["fingerprint"] for a in taxonomy},
        "backbone_groups": [[taxonomy.names[i] for i in g] for g in module.groups],
        # groups whose backbones begin alike, and how many blocks of it run once for them
        "shared_blocks": [
            {"groups": [[taxonomy.names[i] for i in module.groups[gi]] for gi in t], "blocks": k}
            for t, k in module.trunks
            if k
        ],
    }
    args = (TorchBackend(module, dev), taxonomy, prep, thresholds)
    return args, {"config": config, "path": file, "info": info, "fingerprint": doc["fingerprint"]}
