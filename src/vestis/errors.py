"""The one exception type for user-facing errors.

Anything a user can cause (a bad file, a wrong option, a missing column) is raised as
:class:`VestisError`; the CLI prints its message and exits 1 with no traceback unless
``--debug`` is given.
"""

from __future__ import annotations

__all__ = ["VestisError"]


class VestisError(Exception):
    """An error caused by input or usage, shown to the user as a one-line message."""
