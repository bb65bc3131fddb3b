"""How an operation reports progress: one line at a time to a callback its caller picks, so the CLI (which prints
them) and Dagster (which logs them to the run) show the same lines; and, for the CLI's progress bar, how much of how
much is done (`Steps`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

Progress = Callable[[str], None]
# (done, total) in the operation's own unit (rows, chunks); total may grow as the operation learns more.
Steps = Callable[[int, int], None]


def reporter(progress: Progress | None, log: logging.Logger) -> Progress:
    """``progress``, or the operation's logger when the caller gave none (a library call, a test)."""
    return progress if progress is not None else log.info


def counter(steps: Steps | None) -> Steps:
    """``steps``, or nothing when the caller counts nothing."""
    return steps if steps is not None else lambda done, total: None
