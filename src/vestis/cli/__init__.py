"""The ``vestis`` command line: one thin module per command, each calling the library.

Every public module of this package registers its command(s) on :data:`app` when imported.
"""

from __future__ import annotations

import importlib
import pkgutil

from vestis.cli._app import app, main

__all__ = ["app", "main"]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
