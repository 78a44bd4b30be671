"""The one exception type the runtime raises for user-facing failures (printed without a traceback)."""

from __future__ import annotations


class RuntimeFailure(Exception):
    """Something the user can act on; the message says what is wrong."""
