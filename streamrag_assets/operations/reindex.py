"""Reindex: the Gold documents of a window of event time applied to pgvector again, for backfills, model changes and
restores.

It goes through `DocumentIndex.index`, the same code the stream uses, so a window indexed twice changes nothing; a
document is embedded again only when its content or the model changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from streamrag_assets.documents.store import DocumentIndex, IndexResult
from streamrag_assets.operations.progress import Progress, Steps, counter, reporter
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.delta import DeltaTables

log = logging.getLogger(__name__)


def document_index(settings: Settings) -> DocumentIndex:
    """The pgvector index with the process's embedder."""
    from streamrag_assets.embedding.embedder import get_embedder

    return DocumentIndex(settings.app_database_url, get_embedder(settings))


def reindex_window(
    settings: Settings,
    since: datetime | None,
    until: datetime | None,
    batch_size: int = 256,
    progress: Progress | None = None,
    index: DocumentIndex | None = None,
    steps: Steps | None = None,
) -> IndexResult:
    """Apply every Gold row with ``since <= event_time < until`` (either end open) to pgvector; reports each batch
    (``steps``: Gold rows done of the range's). ``index``: one the caller also uses for other work (absent: the
    platform's, made here)."""
    report, count = reporter(progress, log), counter(steps)

    def batch_done(done: int, total: int, so_far: IndexResult) -> None:
        count(done, total)
        if steps is None:  # a bar shows the counts; lines are for logs (Dagster's run, a pipe)
            report(f"{done}/{total} Gold rows: {so_far.embedded} embedded, {so_far.unchanged} unchanged")

    index = index if index is not None else document_index(settings)
    return reindex(index, DeltaTables.from_settings(settings), since, until, batch_size, batch_done)


def gold_range(delta: DeltaTables, since: datetime | None, until: datetime | None) -> pa.Table:
    """Gold rows with ``since <= event_time < until`` (either end open), in event order."""
    expr = None
    if since is not None:
        expr = ds.field("event_time") >= pa.scalar(since, pa.timestamp("us", "UTC"))
    if until is not None:
        upper = ds.field("event_time") < pa.scalar(until, pa.timestamp("us", "UTC"))
        expr = upper if expr is None else expr & upper
    table = delta.read("gold", filter_expr=expr)
    return table.sort_by([("event_time", "ascending"), ("partition", "ascending"), ("offset", "ascending")])


def _batches(table: pa.Table, size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(table), size):
        yield table.slice(start, size).to_pylist()


def reindex(
    index: DocumentIndex,
    delta: DeltaTables,
    since: datetime | None = None,
    until: datetime | None = None,
    batch_size: int = 256,
    progress: Callable[[int, int, IndexResult], None] | None = None,
) -> IndexResult:
    """Apply every Gold row in the range, batch by batch; returns the summed outcome."""
    table = gold_range(delta, since, until)
    total, done = IndexResult(), 0
    for rows in _batches(table, batch_size):
        total.add(index.index(rows))
        done += len(rows)
        if progress is not None:
            progress(done, len(table), total)
    return total
