"""The base class of every error that describes a bad input rather than a bug, and how command lines report it.

Each module keeps its own subclass (``ConfigError``, ``DataError``, ``CheckpointError``, ...), usually also
deriving from ``ValueError`` or ``RuntimeError`` as before; :func:`run_cli` catches them all through
:class:`UserError`, so a new error class cannot be forgotten by one command line and remembered by another.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

CLI_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
TIMED_CLI_LOG_FORMAT = f"%(asctime)s {CLI_LOG_FORMAT}"  # for the long-running data and tokenizer tools


class UserError(Exception):
    """A missing file, bad flag or inconsistent input: reported in one line, exit code 2, no traceback."""


def run_cli(main: Callable[[], int], log_format: str | None = CLI_LOG_FORMAT, logger: logging.Logger | None = None,
            user_errors: tuple[type[BaseException], ...] = (UserError,)) -> int:
    """Run a command line's ``main`` and return its exit code; a user error ends it with ``error: MESSAGE`` on
    stderr and exit code 2.

    ``log_format``: INFO logging to stderr in this format (None: the caller configured logging itself).
    ``logger``: also record the error there (the trainer's rank-prefixed log). ``user_errors``: what counts as a
    user error; only widened for a class that does not derive from :class:`UserError` yet.
    """
    if log_format is not None:
        logging.basicConfig(level=logging.INFO, format=log_format, stream=sys.stderr)
    try:
        return main()
    except user_errors as err:
        if logger is not None:
            logger.error("%s: %s", type(err).__name__, err)
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
