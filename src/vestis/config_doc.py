"""A configuration as commented YAML: every field with the comment :mod:`vestis.config` gives it in its source.

The comments are read from the source of :mod:`vestis.config` itself (``tokenize`` for the comments, ``ast`` for
the fields), so the YAML says what the code says and cannot drift from it: the comment block directly above a
field and the comment at the end of its line both belong to it. A class docstring heads its section.

The YAML loads back to the same configuration (``load_config(path)``); ``vestis train`` writes it into the run
folder as ``config.yaml``, and ``vestis config show`` prints it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import math
import tokenize
import typing
from typing import Any

import yaml

from vestis import config as config_module
from vestis.config import Config

__all__ = ["config_yaml", "field_comments"]


@functools.cache
def field_comments() -> dict[str, dict[str, tuple[list[str], str]]]:
    """Class name -> field -> ``(comment lines above it, end-of-line comment)``, from :mod:`vestis.config`."""
    source = inspect.getsource(config_module)
    comments: dict[int, str] = {}  # line -> comment text without the '#'
    code_lines: set[int] = set()  # lines holding code (a comment there is an end-of-line one)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string[1:].strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    out: dict[str, dict[str, tuple[list[str], str]]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, tuple[list[str], str]] = {}
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above, line = [], stmt.lineno - 1
            while line in comments and line not in code_lines:  # the unbroken comment block right above
                above.insert(0, comments[line])
                line -= 1
            end = stmt.end_lineno or stmt.lineno
            trailing = comments.get(end, "") if end in code_lines else ""
            fields[stmt.target.id] = (above, trailing)
        out[node.name] = fields
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists, all the way down: what YAML (and the config loader) reads back."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _scalar(value: Any) -> str:
    """One value as inline YAML (flow style for lists and mappings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=math.inf, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _section(obj: Any, indent: int, lines: list[str], comments: dict[str, dict[str, tuple[list[str], str]]]) -> None:
    cls = type(obj)
    pad = " " * indent
    hints = typing.get_type_hints(cls)
    docs = comments.get(cls.__name__, {})
    for f in dataclasses.fields(cls):
        above, trailing = docs.get(f.name, ([], ""))
        lines.extend(f"{pad}# {c}".rstrip() for c in above)
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            head = (inspect.getdoc(type(value)) or "").split("\n")[0]
            lines.append(f"{pad}{f.name}:" + (f"  # {trailing or head}" if trailing or head else ""))
            _section(value, indent + 2, lines, comments)
            continue
        lines.append(f"{pad}{f.name}: {_scalar(value)}" + (f"  # {trailing}" if trailing else ""))


def config_yaml(cfg: Config, *, header: str = "") -> str:
    """``cfg`` as YAML with each field's comment from :mod:`vestis.config`.

    Args:
        cfg: the configuration (usually resolved, as :func:`~vestis.config.load_config` returns it).
        header: comment lines put first (e.g. where the configuration came from); ``#`` is added.
    """
    lines = [f"# {h}".rstrip() for h in header.splitlines()]
    _section(cfg, 0, lines, field_comments())
    return "\n".join(lines) + "\n"
