"""The one exception type of the dev cluster: a problem the user can act on."""

from __future__ import annotations


class DevClusterError(Exception):
    """Raised with a message meant for a person; the CLI prints it without a traceback."""
