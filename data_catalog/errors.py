"""User-facing errors shared by every layer.

A :class:`UserError` carries one clear line for the user. The CLI prints ``error: <message>`` and
exits with status 2; library callers can catch it like any exception.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class UserError(Exception):
    """An error caused by the user's input (config, data, checkpoint), reported in one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def run_module_main(main: Callable[[], int | None]) -> NoReturn:
    """Exit status of ``main()`` for a ``python -m`` entry point; a :class:`UserError` becomes the
    one-line ``error: <message>`` on stderr and its exit code, as in the ``wxens`` CLI."""
    try:
        code = main()
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(code or 0)
