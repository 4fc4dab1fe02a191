"""User-facing errors: bad input or configuration that should end a job with a message, not a
traceback.

Library code raises :class:`UserError` (or a subclass) with a sentence that names the row, file or
option at fault. The command-line entry points wrap their work in :func:`exit_on_user_error`, which
prints ``error: <message>`` to stderr and exits with status 2.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable)


_WARNED: set[str] = set()


def warn_once(logger, message: str, *args) -> bool:
    """Log a warning the first time this process meets it (a model built three times in one
    run, for training, the baseline and the export, warns once); return whether it was logged."""
    text = message % args if args else message
    if text in _WARNED:
        return False
    _WARNED.add(text)
    logger.warning(text)
    return True


class UserError(Exception):
    """Bad input or configuration; the message is shown to the user as it is."""


def exit_on_user_error(main: F) -> F:
    """Decorate a command-line ``main`` so a :class:`UserError` becomes a message and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
