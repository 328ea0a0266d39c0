"""Name -> builder registries for backbones, necks, attention layers, heads and models.

A part registers itself with a decorator; a factory turns a name from a config into an object::

    @BACKBONES.register("resnet18")
    def resnet18(**kwargs) -> Backbone: ...

    BACKBONES.build("resnet18", pretrained=None)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from vestis.errors import VestisError

__all__ = ["ATTENTION", "BACKBONES", "MODELS", "NECKS", "Registry"]

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """A named mapping from strings to builder callables."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``; ``meta`` is free-form (e.g. ``tiny=True``)."""

        def deco(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            self._meta[name] = dict(meta)
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise VestisError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def build(self, name: str, /, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self, **filters: Any) -> list[str]:
        """Sorted names whose metadata matches every ``key=value`` in ``filters``."""
        return sorted(n for n, m in self._meta.items() if all(m.get(k) == v for k, v in filters.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)


BACKBONES = Registry("backbone")
NECKS = Registry("neck")
ATTENTION = Registry("attention")
MODELS = Registry("model")
