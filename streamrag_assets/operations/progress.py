"""How an operation reports progress: one line at a time to a callback its caller picks, so the CLI (which prints
them) and Dagster (which logs them to the run) show the same lines."""

from __future__ import annotations

import logging
from collections.abc import Callable

Progress = Callable[[str], None]


def reporter(progress: Progress | None, log: logging.Logger) -> Progress:
    """``progress``, or the operation's logger when the caller gave none (a library call, a test)."""
    return progress if progress is not None else log.info
