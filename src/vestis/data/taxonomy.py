"""The taxonomy: which attributes exist, their values, their kind and where they apply.

A taxonomy is a YAML file::

    name: my-catalog
    category_attribute: category        # the attribute whose values are the categories
    hierarchy:                          # optional: object type -> categories
      upper body: [t-shirt, shirt]
      lower body: [trousers]
    attributes:
      - name: category
        kind: single                    # single: one value (softmax); multi: several (sigmoid)
        values: [t-shirt, shirt, trousers]
      - name: closure
        kind: single
        values: [buttons, zip, none]
        applies_to: [trousers]          # optional: the categories this attribute applies to
        roi: small                      # optional: how much of the image holds the evidence
    metadata: [year]                    # optional: free-text manifest columns (meta_<name>)

Validation collects every problem and reports each as ``file:line: field: what was expected``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vestis.data.yaml_safe import read_yaml
from vestis.errors import VestisError
from vestis.io import atomic_write_text

__all__ = ["KINDS", "Attribute", "Taxonomy", "load_taxonomy", "save_taxonomy"]

KINDS = ("single", "multi")
ROIS = ("small", "large")
_FORBIDDEN = "|"  # the manifest's multi-value separator


@dataclass(frozen=True)
class Attribute:
    """One attribute (a task): its values and how they are predicted.

    Attributes:
        name: column name in the manifest.
        kind: ``single`` (exactly one value, softmax) or ``multi`` (any subset, sigmoid).
        values: the allowed values, in output order.
        applies_to: categories the attribute applies to; ``None`` means every category.
        roi: optional ``small``/``large`` hint of the image fraction holding the evidence (reports group by it).
        description: free text.
    """

    name: str
    kind: Literal["single", "multi"]
    values: tuple[str, ...]
    applies_to: tuple[str, ...] | None = None
    roi: str | None = None
    description: str = ""

    @property
    def num_values(self) -> int:
        return len(self.values)

    def index(self, value: str) -> int:
        try:
            return self._index[value]
        except KeyError:
            raise VestisError(f"{self.name}: unknown value {value!r}; expected one of {list(self.values)}") from None

    @property
    def _index(self) -> dict[str, int]:
        cache = self.__dict__.get("_index_cache")
        if cache is None:
            cache = {v: i for i, v in enumerate(self.values)}
            object.__setattr__(self, "_index_cache", cache)
        return cache

    def applies(self, category: str | None) -> bool:
        """Whether the attribute applies to an item of ``category`` (unknown category: yes)."""
        return self.applies_to is None or category is None or category in self.applies_to

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "values": list(self.values)}
        if self.applies_to is not None:
            d["applies_to"] = list(self.applies_to)
        if self.roi is not None:
            d["roi"] = self.roi
        if self.description:
            d["description"] = self.description
        return d


@dataclass(frozen=True)
class Taxonomy:
    """An ordered set of attributes, the category attribute and an optional object-type hierarchy."""

    attributes: tuple[Attribute, ...]
    category_attribute: str | None = None
    hierarchy: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    metadata: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        problems = _check(self)
        if problems:
            raise VestisError("invalid taxonomy:\n" + "\n".join(f"  {p}" for p in problems))

    # --- lookup -------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def __getitem__(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise VestisError(f"unknown attribute {name!r}; the taxonomy has {self.names}")

    def __contains__(self, name: object) -> bool:
        return any(a.name == name for a in self.attributes)

    def __iter__(self):
        return iter(self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)

    @property
    def categories(self) -> tuple[str, ...]:
        return self[self.category_attribute].values if self.category_attribute else ()

    def object_type(self, category: str) -> str | None:
        """The object type (hierarchy parent) of ``category``, or ``None``."""
        for parent, children in self.hierarchy.items():
            if category in children:
                return parent
        return None

    # --- (de)serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.name:
            d["name"] = self.name
        if self.category_attribute:
            d["category_attribute"] = self.category_attribute
        if self.hierarchy:
            d["hierarchy"] = {k: list(v) for k, v in self.hierarchy.items()}
        if self.metadata:
            d["metadata"] = list(self.metadata)
        d["attributes"] = [a.to_dict() for a in self.attributes]
        return d

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<taxonomy>", lines: Mapping[str, int] | None = None) -> Taxonomy:
        """Build and validate a taxonomy; every problem is reported as ``source:line: field: message``."""
        problems: list[str] = []
        lines = lines or {}

        def where(path: str) -> str:
            # the line of the nearest enclosing node that we know
            p = path
            while p and p not in lines:
                p = p.rsplit(".", 1)[0] if "." in p else ""
            return f"{source}:{lines.get(p, 1)}"

        def bad(path: str, msg: str) -> None:
            problems.append(f"{where(path)}: {path}: {msg}")

        if not isinstance(data, Mapping):
            raise VestisError(f"{source}:1: taxonomy: expected a mapping with an 'attributes' list")
        known_keys = {"name", "category_attribute", "hierarchy", "attributes", "metadata"}
        for k in data:
            if k not in known_keys:
                bad(str(k), f"unknown key; expected one of {sorted(known_keys)}")
        raw_attrs = data.get("attributes")
        attrs: list[Attribute] = []
        if not isinstance(raw_attrs, list) or not raw_attrs:
            bad("attributes", "expected a non-empty list of attributes")
            raw_attrs = []
        for i, ra in enumerate(raw_attrs):
            p = f"attributes[{i}]"
            if not isinstance(ra, Mapping):
                bad(p, "expected a mapping with name, kind and values")
                continue
            for k in ra:
                if k not in {"name", "kind", "values", "applies_to", "roi", "description"}:
                    bad(f"{p}.{k}", "unknown key; expected name, kind, values, applies_to, roi or description")
            name = ra.get("name")
            if not isinstance(name, str) or not name.strip():
                bad(f"{p}.name", "expected a non-empty string")
                continue
            kind = ra.get("kind", "single")
            if kind not in KINDS:
                bad(f"{p}.kind", f"expected one of {list(KINDS)}, got {kind!r}")
                kind = "single"
            values = ra.get("values")
            if not isinstance(values, list) or not values:
                bad(f"{p}.values", f"attribute {name!r} is empty: expected a non-empty list of values")
                values = []
            clean: list[str] = []
            for j, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, str | int | float):
                    hint = (
                        " (YAML reads unquoted yes/no/on/off as booleans: quote the value)"
                        if isinstance(v, bool)
                        else ""
                    )
                    bad(f"{p}.values[{j}]", f"expected a string, got {type(v).__name__}{hint}")
                    continue
                clean.append(str(v))
            applies = ra.get("applies_to")
            if applies is not None and (not isinstance(applies, list) or not all(isinstance(c, str) for c in applies)):
                bad(f"{p}.applies_to", "expected a list of category names")
                applies = None
            roi = ra.get("roi")
            if roi is not None and roi not in ROIS:
                bad(f"{p}.roi", f"expected one of {list(ROIS)}, got {roi!r}")
                roi = None
            attrs.append(
                Attribute(
                    name=name,
                    kind=kind,
                    values=tuple(clean),
                    applies_to=tuple(applies) if applies is not None else None,
                    roi=roi,
                    description=str(ra.get("description", "")),
                )
            )
        hierarchy = data.get("hierarchy") or {}
        if not isinstance(hierarchy, Mapping) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in hierarchy.values()
        ):
            bad("hierarchy", "expected a mapping: object type -> list of categories")
            hierarchy = {}
        metadata = data.get("metadata") or []
        if not isinstance(metadata, list) or not all(isinstance(m, str) for m in metadata):
            bad("metadata", "expected a list of column names")
            metadata = []
        cat = data.get("category_attribute")
        if cat is None and any(a.name == "category" for a in attrs):
            cat = "category"
        if problems:
            raise VestisError("invalid taxonomy:\n" + "\n".join(f"  {p}" for p in problems))
        try:
            return cls(
                attributes=tuple(attrs),
                category_attribute=cat,
                hierarchy={str(k): tuple(v) for k, v in hierarchy.items()},
                metadata=tuple(metadata),
                name=str(data.get("name", "")),
            )
        except VestisError as e:
            # semantic problems found by _check: attach the file and the line of the offending node
            msgs = [m.strip() for m in str(e).splitlines()[1:]]
            raise VestisError(
                "invalid taxonomy:\n" + "\n".join(f"  {where(m.split(':', 1)[0])}: {m}" for m in msgs)
            ) from None


def _check(t: Taxonomy) -> list[str]:
    """Semantic checks, each message ``path: what was expected``."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, a in enumerate(t.attributes):
        p = f"attributes[{i}]"
        if a.name in seen:
            problems.append(f"{p}.name: duplicate attribute {a.name!r}")
        seen.add(a.name)
        if a.name in _RESERVED_COLUMNS or a.name.startswith("meta_"):
            problems.append(f"{p}.name: {a.name!r} is a reserved manifest column; choose another name")
        if not a.values:
            problems.append(f"{p}.values: attribute {a.name!r} is empty: expected at least one value")
        if a.kind == "single" and len(a.values) == 1:
            problems.append(f"{p}.values: single-label attribute {a.name!r} needs at least two values")
        vseen: set[str] = set()
        for j, v in enumerate(a.values):
            if v in vseen:
                problems.append(f"{p}.values[{j}]: duplicate value {v!r} in attribute {a.name!r}")
            vseen.add(v)
            if not v.strip() or v != v.strip() or _FORBIDDEN in v:
                problems.append(f"{p}.values[{j}]: value {v!r} must be non-empty, without surrounding spaces or '|'")
    cats: set[str] = set()
    if t.category_attribute is not None:
        if t.category_attribute not in seen:
            problems.append(f"category_attribute: {t.category_attribute!r} is not an attribute of the taxonomy")
        else:
            ca = next(a for a in t.attributes if a.name == t.category_attribute)
            cats = set(ca.values)
            if ca.kind != "single":
                problems.append(f"category_attribute: {ca.name!r} must be single-label")
    for i, a in enumerate(t.attributes):
        if a.applies_to is None:
            continue
        if t.category_attribute is None:
            problems.append(f"attributes[{i}].applies_to: needs a category attribute (category_attribute)")
            continue
        for c in a.applies_to:
            if c not in cats:
                problems.append(f"attributes[{i}].applies_to: unknown category {c!r}; expected one of {sorted(cats)}")
    placed: dict[str, str] = {}
    for parent, children in t.hierarchy.items():
        for c in children:
            if c not in cats:
                problems.append(f"hierarchy.{parent}: unknown category {c!r}; expected one of {sorted(cats)}")
            elif c in placed:
                problems.append(f"hierarchy.{parent}: category {c!r} is already under {placed[c]!r}")
            placed[c] = parent
    return problems


_RESERVED_COLUMNS = ("id", "image", "group", "split", "title")


def _line_map(node: yaml.Node, path: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """Map dotted paths (``attributes[2].values[1]``) to 1-based source lines."""
    out = {} if out is None else out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = str(k.value)
            sub = f"{path}.{key}" if path else key
            out[sub] = k.start_mark.line + 1
            _line_map(v, sub, out)
            out[sub] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_map(v, f"{path}[{i}]", out)
    return out


def load_taxonomy(path: str | os.PathLike[str]) -> Taxonomy:
    """Read and validate a taxonomy YAML file.

    Raises:
        VestisError: the file is unreadable, not UTF-8, not valid YAML, refused by
            :class:`~vestis.data.yaml_safe.BoundedLoader` (alias bombs, deep nesting, duplicate keys), or not
            a valid taxonomy; each message names the file and the line.
    """
    path = Path(path)
    # bounded: aliases, nesting, duplicate keys and encodings are refused with the line (see yaml_safe)
    data, node = read_yaml(path, "taxonomy")
    lines = _line_map(node) if node is not None else {}
    return Taxonomy.from_dict(data, source=str(path), lines=lines)


def save_taxonomy(taxonomy: Taxonomy, path: str | os.PathLike[str]) -> Path:
    """Write ``taxonomy`` as YAML atomically (temporary file, then rename)."""
    path = Path(path)
    text = yaml.safe_dump(taxonomy.to_dict(), sort_keys=False, allow_unicode=True, width=120)
    atomic_write_text(path, text)
    return path
