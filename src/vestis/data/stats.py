"""Label statistics of a catalog: counts, missing rates, co-occurrence and imbalance (IR, MeanIR, SCUMBLE).

The imbalance measures follow Charte et al. (2014, 2015), as used in the hierarchical pipeline paper (eqs 8-10):

* ``IR(y) = max_y' count(y') / count(y)``, where ``count(y)`` is the number of rows whose labels contain ``y``;
* ``MeanIR = mean_y IR(y)``;
* ``SCUMBLE = mean_i [1 - (prod_{l in Y_i} IR(l))^(1/|Y_i|) / IR_i]`` with ``IR_i`` the mean IR of the labels
  ``Y_i`` of row ``i``: one minus the ratio of the geometric to the arithmetic mean of the row's IRs (the Atkinson
  index), 0 when a row's labels are equally (im)balanced and close to 1 when a rare label sits with frequent ones.

Choices, recorded under ``conventions`` in ``stats.json``:

* Label set. A label is an attribute value and ``Y`` is the values of one attribute: IR compares values that
  compete for the same output head, so every measure is computed per attribute. For a single-label attribute
  every row holds one label, so its SCUMBLE is 0 by definition. ``overall`` also flattens all attributes into
  one label set (``attribute=value``) to show the concurrence of rare and frequent labels across attributes.
* Zero counts. A taxonomy value with no row has an undefined IR (division by zero): it is left out of MeanIR
  and SCUMBLE and listed under ``zero_count_values``. Values that are not in the taxonomy are not labels: they
  are counted under ``unknown_values`` only (``vestis validate`` reports them).
* Rows without labels. In the reference implementation (the ``mldr`` R package) a row with an empty label set
  counts as SCUMBLE 0 in the mean. In a manifest an empty cell is a *missing* label, not an empty label set, so
  such rows are not part of ``D``: the mean runs over the rows with at least one label of the attribute.
* Missing rates. ``missing_rate_applicable`` is over the rows the attribute applies to (``applies_to`` holds
  the row's category, or the category is unknown); ``missing_rate_all_rows`` is over every row.
* Co-occurrence. A multi-label attribute gets its value x value matrix (rows having both; the diagonal is the
  count); other attributes get a category x value matrix over the rows with one known category.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from vestis.data.manifest import SPLITS, Manifest, Record
from vestis.data.taxonomy import Attribute, Taxonomy
from vestis.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "compute_stats",
    "imbalance_ratios",
    "mean_ir",
    "scumble",
    "scumble_instance",
    "write_stats",
]

_CONVENTIONS = {
    "label_set": "per attribute: the labels are the attribute's taxonomy values; 'overall' flattens all attributes",
    "zero_count": "values with no row have an undefined IR: excluded from MeanIR and SCUMBLE, listed separately",
    "scumble_rows": "mean over the rows with at least one label of the attribute (an empty cell is missing)",
    "missing_rate_applicable": "over the rows whose category the attribute applies to (unknown category: applies)",
    "missing_rate_all_rows": "over every row of the manifest",
}
_MAX_BARS = 60  # a chart with more values shows the most frequent ones
_MD_TOP_PAIRS = 10


# --- imbalance measures -------------------------------------------------------------------------------------
def imbalance_ratios(counts: Mapping[str, int]) -> dict[str, float | None]:
    """IR per label (eq 8): the largest count divided by the label's count; ``None`` for a zero count."""
    top = max(counts.values(), default=0)
    return {y: (top / c if c > 0 else None) for y, c in counts.items()}


def mean_ir(irs: Mapping[str, float | None]) -> float | None:
    """MeanIR (eq 9) over the labels with a defined IR; ``None`` when there is none."""
    defined = [v for v in irs.values() if v is not None]
    return math.fsum(defined) / len(defined) if defined else None


def scumble_instance(irs: Sequence[float]) -> float:
    """The term of eq 10 for one row: ``1 - geometric_mean(irs) / arithmetic_mean(irs)``."""
    n = len(irs)
    if n < 2:
        return 0.0
    arith = math.fsum(irs) / n
    # logs instead of the product: a few dozen IRs of 1e4 would overflow a float product
    geo = math.exp(math.fsum(math.log(x) for x in irs) / n)
    # geo <= arith (AM-GM); rounding can make the difference a tiny negative number
    return max(0.0, 1.0 - geo / arith)


def scumble(labelsets: Iterable[Iterable[str]], irs: Mapping[str, float | None]) -> float | None:
    """SCUMBLE (eq 10): the mean of :func:`scumble_instance` over the rows with at least one label.

    Args:
        labelsets: the labels of each row; labels without a defined IR are ignored.
        irs: IR per label, from :func:`imbalance_ratios`.

    Returns:
        The mean, or ``None`` when no row has a label.
    """
    terms = []
    for labels in labelsets:
        row = [ir for y in dict.fromkeys(labels) if (ir := irs.get(y)) is not None]
        if row:
            terms.append(scumble_instance(row))
    return math.fsum(terms) / len(terms) if terms else None


# --- statistics ---------------------------------------------------------------------------------------------
def _row_category(record: Record, taxonomy: Taxonomy) -> str | None:
    if taxonomy.category_attribute is None:
        return None
    vals = record.labels.get(taxonomy.category_attribute, ())
    return vals[0] if len(vals) == 1 and vals[0] in taxonomy.categories else None


def _imbalance(counts: dict[str, int], labelsets: list[tuple[str, ...]]) -> dict[str, Any]:
    irs = imbalance_ratios(counts)
    defined = [v for v in irs.values() if v is not None]
    return {
        "ir": irs,
        "zero_count_values": [y for y, v in irs.items() if v is None],
        "mean_ir": mean_ir(irs),
        "max_ir": max(defined, default=None),
        "scumble": scumble(labelsets, irs),
        "scumble_rows": sum(1 for s in labelsets if s),
    }


def _attribute_stats(
    attr: Attribute, records: Sequence[Record], categories: Sequence[str | None], taxonomy: Taxonomy
) -> dict[str, Any]:
    known = set(attr.values)
    counts = dict.fromkeys(attr.values, 0)
    unknown: Counter[str] = Counter()
    labelsets: list[tuple[str, ...]] = []
    applicable = labelled = labelled_applicable = 0
    n_known_labels = 0
    for r, cat in zip(records, categories, strict=True):
        values = tuple(dict.fromkeys(r.labels.get(attr.name, ())))  # a value counts once per row
        applies = attr.name == taxonomy.category_attribute or attr.applies(cat)
        applicable += applies
        if values:
            labelled += 1
            labelled_applicable += applies
        good = tuple(v for v in values if v in known)
        for v in values:
            if v in known:
                counts[v] += 1
            else:
                unknown[v] += 1
        n_known_labels += len(good)
        labelsets.append(good)
    out: dict[str, Any] = {
        "kind": attr.kind,
        "roi": attr.roi,
        "applies_to": list(attr.applies_to) if attr.applies_to is not None else None,
        "rows_applicable": applicable,
        "rows_labelled": labelled,
        "rows_labelled_applicable": labelled_applicable,
        "missing_rate_applicable": 1 - labelled_applicable / applicable if applicable else None,
        "missing_rate_all_rows": 1 - labelled / len(records) if records else None,
        "labels_per_labelled_row": n_known_labels / labelled if labelled else None,
        "counts": counts,
        "unknown_values": dict(unknown.most_common()),
    }
    out.update(_imbalance(counts, labelsets))
    out["cooccurrence"] = _cooccurrence(attr, labelsets, categories, taxonomy)
    return out


def _cooccurrence(
    attr: Attribute, labelsets: Sequence[tuple[str, ...]], categories: Sequence[str | None], taxonomy: Taxonomy
) -> dict[str, Any] | None:
    index = {v: i for i, v in enumerate(attr.values)}
    if attr.kind == "multi":
        n = len(attr.values)
        m = [[0] * n for _ in range(n)]
        for labels in labelsets:
            for a in labels:
                for b in labels:
                    m[index[a]][index[b]] += 1
        return {"kind": "value_by_value", "rows": list(attr.values), "cols": list(attr.values), "matrix": m}
    if taxonomy.category_attribute is None or attr.name == taxonomy.category_attribute:
        return None
    cats = list(taxonomy.categories)
    cindex = {c: i for i, c in enumerate(cats)}
    m = [[0] * len(attr.values) for _ in cats]
    for labels, cat in zip(labelsets, categories, strict=True):
        if cat is None:
            continue
        for v in labels:
            m[cindex[cat]][index[v]] += 1
    return {"kind": "category_by_value", "rows": cats, "cols": list(attr.values), "matrix": m}


def compute_stats(manifest: Manifest, taxonomy: Taxonomy) -> dict[str, Any]:
    """Label statistics of ``manifest`` under ``taxonomy`` as a JSON-ready dict (see the module docstring).

    Only the attributes of the taxonomy are counted; values outside it go to ``unknown_values``.
    """
    records = manifest.records
    categories = [_row_category(r, taxonomy) for r in records]
    split_counts = Counter(r.split or "none" for r in records)
    attributes = {a.name: _attribute_stats(a, records, categories, taxonomy) for a in taxonomy}
    # overall: every attribute's values flattened into one label set
    flat_counts: dict[str, int] = {}
    for name, st in attributes.items():
        flat_counts.update({f"{name}={v}": c for v, c in st["counts"].items()})
    flat_sets = [
        tuple(f"{a.name}={v}" for a in taxonomy for v in dict.fromkeys(r.labels.get(a.name, ())) if v in a.values)
        for r in records
    ]
    overall = _imbalance(flat_counts, flat_sets)
    overall.pop("ir")  # the per-attribute tables already hold every IR's count
    overall["zero_count_labels"] = overall.pop("zero_count_values")
    return {
        "manifest": manifest.source,
        "taxonomy": taxonomy.name,
        "rows": len(records),
        "format_problems": len(manifest.problems),
        "groups": len({r.group_key for r in records}),
        "splits": {s: split_counts[s] for s in (*SPLITS, "none") if split_counts[s]},
        "category_attribute": taxonomy.category_attribute,
        "conventions": dict(_CONVENTIONS),
        "attributes": attributes,
        "overall": overall,
    }


# --- output -------------------------------------------------------------------------------------------------
def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _md(s: object) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _markdown(stats: Mapping[str, Any], charts: Mapping[str, str], missing_chart: str | None) -> str:
    o = stats["overall"]
    lines = [
        f"# Label statistics: {_md(stats['manifest'])}",
        "",
        f"- rows: {stats['rows']} ({', '.join(f'{k}: {v}' for k, v in stats['splits'].items()) or 'no splits'})",
        f"- groups: {stats['groups']}",
        f"- rows the reader rejected or flagged (format problems): {stats['format_problems']}",
        f"- overall (all attributes as one label set): MeanIR {_num(o['mean_ir'])}, SCUMBLE {_num(o['scumble'])}",
        "",
        "Missing (applicable) is over the rows the attribute applies to; missing (all) over every row. "
        "IR = largest value count / value count; values with no row have no IR and are left out of MeanIR. "
        "SCUMBLE is averaged over the rows with at least one label of the attribute.",
        "",
        "| attribute | kind | labelled rows | missing (applicable) | missing (all) | MeanIR | max IR | SCUMBLE |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in stats["attributes"].items():
        lines.append(
            f"| {_md(name)} | {a['kind']} | {a['rows_labelled']} | {_pct(a['missing_rate_applicable'])} "
            f"| {_pct(a['missing_rate_all_rows'])} | {_num(a['mean_ir'])} | {_num(a['max_ir'])} "
            f"| {_num(a['scumble'])} |"
        )
    if missing_chart:
        lines += ["", f"![missing rates]({missing_chart})"]
    for name, a in stats["attributes"].items():
        lines += ["", f"## {_md(name)}", ""]
        if a["zero_count_values"]:
            lines.append(f"Values with no row (IR undefined): {', '.join(_md(v) for v in a['zero_count_values'])}.")
            lines.append("")
        if a["unknown_values"]:
            unk = ", ".join(f"{_md(v)} ({c})" for v, c in a["unknown_values"].items())
            lines += [f"Values not in the taxonomy (not counted): {unk}.", ""]
        lines += ["| value | count | IR |", "|---|---:|---:|"]
        for v, c in sorted(a["counts"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {_md(v)} | {c} | {_num(a['ir'][v], 2)} |")
        co = a["cooccurrence"]
        if co and co["kind"] == "value_by_value":
            pairs = [
                (co["matrix"][i][j], co["rows"][i], co["cols"][j])
                for i in range(len(co["rows"]))
                for j in range(i + 1, len(co["cols"]))
                if co["matrix"][i][j]
            ]
            if pairs:
                lines += ["", "Most frequent value pairs:", "", "| values | rows |", "|---|---:|"]
                for n, x, y in sorted(pairs, key=lambda t: -t[0])[:_MD_TOP_PAIRS]:
                    lines.append(f"| {_md(x)} + {_md(y)} | {n} |")
        if name in charts:
            lines += ["", f"![{_md(name)} counts]({charts[name]})"]
    lines += ["", "Co-occurrence matrices are in stats.json (`cooccurrence` of each attribute).", ""]
    return "\n".join(lines)


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "attribute"
    slug, i = base, 2
    while slug in taken:  # two names may map to the same file name
        slug, i = f"{base}_{i}", i + 1
    taken.add(slug)
    return slug


def _png(fig: Any) -> bytes:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _counts_chart(name: str, a: Mapping[str, Any]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = sorted(a["counts"].items(), key=lambda kv: -kv[1])
    shown = items[:_MAX_BARS]
    fig = Figure(figsize=(7, max(2.0, 0.25 * len(shown) + 1.2)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(range(len(shown)), [c for _, c in shown], color="#4C72B0")
    ax.set_yticks(range(len(shown)), [v for v, _ in shown], fontsize=8)
    ax.invert_yaxis()  # most frequent on top
    for i, (_, c) in enumerate(shown):
        ax.annotate(str(c), (c, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    more = f" (top {_MAX_BARS} of {len(items)})" if len(items) > _MAX_BARS else ""
    ax.set_title(f"{name}: rows per value{more}  MeanIR {_num(a['mean_ir'], 2)}", fontsize=10)
    ax.set_xlabel("rows")
    ax.margins(x=0.12)
    return _png(fig)


def _missing_chart(stats: Mapping[str, Any]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(stats["attributes"])
    app = [stats["attributes"][n]["missing_rate_applicable"] or 0.0 for n in names]
    every = [stats["attributes"][n]["missing_rate_all_rows"] or 0.0 for n in names]
    fig = Figure(figsize=(7, max(2.0, 0.4 * len(names) + 1.2)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = range(len(names))
    ax.barh([y - 0.2 for y in ys], app, height=0.4, label="rows where it applies", color="#4C72B0")
    ax.barh([y + 0.2 for y in ys], every, height=0.4, label="all rows", color="#DD8452")
    for y, a, e in zip(ys, app, every, strict=True):
        ax.annotate(f"{100 * a:.1f}%", (a, y - 0.2), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.annotate(f"{100 * e:.1f}%", (e, y + 0.2), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(list(ys), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("missing rate")
    ax.set_title("Missing labels per attribute", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def write_stats(stats: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``stats.json``, ``stats.md`` and PNG bar charts into ``out_dir``, each atomically.

    The charts are ``missing_rate.png`` and one ``counts_<attribute>.png`` per attribute.

    Returns:
        The written files: ``stats.json``, ``stats.md``, then the charts.
    """
    out = Path(out_dir)
    charts: dict[str, str] = {}
    pngs: list[Path] = []
    missing = None
    if stats["attributes"]:
        missing = "missing_rate.png"
        pngs.append(atomic_write_bytes(out / missing, _missing_chart(stats)))
    taken: set[str] = set()
    for name, a in stats["attributes"].items():
        fname = f"counts_{_slug(name, taken)}.png"
        pngs.append(atomic_write_bytes(out / fname, _counts_chart(name, a)))
        charts[name] = fname
    text = json.dumps(stats, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    js = atomic_write_text(out / "stats.json", text)
    md = atomic_write_text(out / "stats.md", _markdown(stats, charts, missing))
    return [js, md, *pngs]
