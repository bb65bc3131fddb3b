"""How the command line shows long work: a progress bar (rich, which typer already brings) with the count, the rate
and the time left when stderr is a terminal; nothing but the operation's own lines when it is not (a pipe, a log, CI),
so scripts see no control characters."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from streamrag_assets.operations.progress import Steps


class _Rate(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"– {self.unit}/s", style="cyan")


@contextmanager
def progress_bar(what: str, unit: str, stream: IO[str] | None = None) -> Iterator[Steps | None]:
    """A `Steps` callback drawing a bar of ``what`` on ``stream`` (stderr) while the block runs; None when the stream
    is not a terminal (the operation then reports in lines)."""
    stream = stream if stream is not None else sys.stderr
    if not stream.isatty():
        yield None
        return
    console = Console(file=stream)
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), _Rate(unit), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def working(what: str, stream: IO[str] | None = None) -> Iterator[None]:
    """A spinner saying ``what`` on ``stream`` (stderr) while the block runs, for work with no count; nothing when
    the stream is not a terminal."""
    stream = stream if stream is not None else sys.stderr
    if not stream.isatty():
        yield
        return
    with Console(file=stream).status(what):
        yield
