"""One YAML loader for every file a user gives (taxonomies, configs): PyYAML's safe loader, bounded.

``yaml.safe_load`` builds no arbitrary objects, but it still accepts what hurts a reader afterwards:

* aliases that expand without bound ("billion laughs": 1.9 KB of nested anchors stand for 10^9 strings; the
  loaded object shares them, and the first walk over it hangs);
* an alias that points into its own node (a cycle no walk ends on);
* nesting deep enough to exhaust Python's recursion (20,000 ``[`` are a ``RecursionError``);
* duplicate mapping keys, where the last one silently wins;
* integers longer than Python converts (over 4,300 digits is a ``ValueError``).

:class:`BoundedLoader` refuses each with a ``yaml.MarkedYAMLError`` that carries the line, and
:func:`load_yaml` turns any YAML error into ``file:line: what: ...`` as a :class:`~vestis.errors.VestisError`.
"""

from __future__ import annotations

import os
import reprlib
import sys
from typing import Any

import yaml
from yaml.error import MarkedYAMLError

from vestis.data.textio import read_text
from vestis.errors import VestisError

__all__ = ["MAX_DEPTH", "MAX_NODES", "BoundedLoader", "RefusedYAML", "load_yaml", "read_yaml"]

MAX_DEPTH = 64
"""Deepest nesting of collections accepted; real taxonomies and configs use four levels."""
MAX_NODES = 200_000
"""Most nodes a document may stand for once its aliases are expanded (a 10,000-value taxonomy is ~30,000)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class RefusedYAML(MarkedYAMLError):
    """Well-formed YAML that :class:`BoundedLoader` refuses to load (its ``problem`` says why)."""


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with bounded nesting, bounded alias expansion, no duplicate keys and no huge integers."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    # --- scanning and composing: depth ----------------------------------------------------------------------
    def fetch_more_tokens(self) -> None:
        super().fetch_more_tokens()
        # the scanner reads ahead over a whole run of '[' / '{' (each may start a key): stop it early
        if self.flow_level > self.max_depth:
            raise RefusedYAML(None, None, f"nesting deeper than {self.max_depth} levels", self.get_mark())

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # the composer recurses once per level: count levels before Python's own limit is reached
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise RefusedYAML(None, None, f"nesting deeper than {self.max_depth} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            self._check_expansion(node)
        return node

    # --- the composed graph: expansion and cycles --------------------------------------------------------
    def _check_expansion(self, root: yaml.Node) -> None:
        """Count the nodes the document stands for with every alias expanded, in time linear in its size.

        An alias is the same node object in several places, so a memo by identity gives each node's expanded
        size once; a node met again while its own size is being computed is a cycle.
        """
        size: dict[int, int] = {}
        busy: set[int] = set()
        # iterative post-order walk: the depth is bounded already, but a cycle would not be
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, done = stack.pop()
            key = id(node)
            children = _children(node)
            if done:
                busy.discard(key)
                total = 1 + sum(size[id(c)] for c in children)
                if total > self.max_nodes:
                    raise RefusedYAML(
                        None,
                        None,
                        f"aliases expand to more than {self.max_nodes:,} nodes (an alias bomb?)",
                        node.start_mark,
                    )
                size[key] = total
                continue
            if key in size:
                continue
            if key in busy:
                raise RefusedYAML(None, None, "an alias refers to a node that contains it", node.start_mark)
            busy.add(key)
            stack.append((node, True))
            for c, mark in _children_marks(node):
                if id(c) in busy:
                    raise RefusedYAML(None, None, "an alias refers to a node that contains it", mark)
                if id(c) not in size:
                    stack.append((c, False))

    # --- constructing: duplicate keys, integers, values that do not fit their tag ---------------------------
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as e:  # PyYAML's constructors trust an explicit tag: '!!int' on an empty value, ...
            value = reprlib.repr(node.value) if isinstance(node, yaml.ScalarNode) else f"a {node.id}"
            raise RefusedYAML(
                None, None, f"expected a valid {node.tag} value, got {value} ({type(e).__name__})", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # ``<<`` merges: keys given beside it override the merged ones by design
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base constructor reports it
                if first is not None:
                    raise RefusedYAML(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {reprlib.repr(key)} (first on line {first}); expected each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            digits = sum(ch.isdigit() for ch in str(node.value))
            raise RefusedYAML(
                None,
                None,
                f"an integer of {digits:,} digits; expected at most {sys.get_int_max_str_digits():,} "
                "(quote it to keep it as text)",
                node.start_mark,
            ) from None


BoundedLoader.add_constructor("tag:yaml.org,2002:int", BoundedLoader.construct_yaml_int)


def _children_marks(node: yaml.Node) -> list[tuple[yaml.Node, yaml.Mark]]:
    """Each child with where it is used: a mapping value at its key (an alias has no node of its own)."""
    if isinstance(node, yaml.MappingNode):
        return [(n, k.start_mark) for k, v in node.value for n in (k, v)]
    return [(n, node.start_mark) for n in _children(node)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for kv in node.value for n in kv]
    return []


def _error(source: str, what: str, e: yaml.YAMLError, text: str) -> VestisError:
    if isinstance(e, yaml.reader.ReaderError):
        # a control character: the reader gives an offset, not a mark
        line = text.count("\n", 0, e.position) + 1
        return VestisError(f"{source}:{line}: {what}: not valid YAML (character #x{e.character:04x} is not allowed)")
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if isinstance(e, RefusedYAML):
        return VestisError(f"{source}:{line}: {what}: {problem}")
    return VestisError(f"{source}:{line}: {what}: not valid YAML ({problem})")


def load_yaml(text: str, source: str, what: str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document with :class:`BoundedLoader`.

    Args:
        text: the document.
        source: the file name, for messages.
        what: what the document is (``taxonomy``, ``config``), for messages.

    Returns:
        ``(data, node)``: the loaded value and its composed node (``None`` for an empty document), whose marks
        give the source line of every part.

    Raises:
        VestisError: ``source:line: what: not valid YAML (...)`` for a syntax error or a refused construct.
    """
    try:
        loader = BoundedLoader(text)  # the reader checks every character here
    except yaml.YAMLError as e:
        raise _error(source, what, e, text) from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise _error(source, what, e, text) from None
    except RecursionError:
        # deep nesting is refused while composing; this is the last guard for constructs that recurse anyway
        raise VestisError(f"{source}:1: {what}: nested too deeply to read") from None
    finally:
        loader.dispose()
    return data, node


def read_yaml(path: str | os.PathLike[str], what: str) -> tuple[Any, yaml.Node | None]:
    """:func:`load_yaml` on a UTF-8 file (see :func:`vestis.data.textio.read_text` for the encoding errors)."""
    return load_yaml(read_text(path, what), str(path), what)
