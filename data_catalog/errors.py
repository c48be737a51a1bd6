"""User-facing errors shared by every layer.

A :class:`UserError` carries one clear line for the user. The CLI prints ``error: <message>`` and
exits with status 2; library callers can catch it like any exception.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input (config, data, checkpoint), reported in one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
