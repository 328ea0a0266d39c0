"""The detector registry: a registry of its own, so ``vestis models`` listings of classifiers stay unchanged."""

from __future__ import annotations

from typing import Any

from torch import nn

from vestis.registry import Registry

__all__ = ["DETECTORS", "build_detector"]

DETECTORS = Registry("detector")


def build_detector(name: str, /, **kwargs: Any) -> nn.Module:
    """Build the registered detector ``name`` (e.g. ``centernet``, ``centernet_tiny``) with ``kwargs``."""
    return DETECTORS.build(name, **kwargs)
