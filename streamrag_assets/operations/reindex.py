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
import pyarrow.compute as pc
import pyarrow.dataset as ds

from streamrag_assets.documents.progress import stream_progress_name
from streamrag_assets.documents.store import DocumentIndex, IndexResult
from streamrag_assets.enrichment.diffs import FRAGMENT_CHARS, DiffRecords, enriched_text
from streamrag_assets.operations.progress import Progress, Steps, counter, reporter
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.checkpoint import query_running
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
    leave_to_stream: bool = False,
) -> IndexResult:
    """Apply every Gold row with ``since <= event_time < until`` (either end open) to pgvector; reports each batch
    (``steps``: Gold rows done of the range's). ``index``: one the caller also uses for other work (absent: the
    platform's, made here). ``leave_to_stream``: while a query holds the checkpoints (the stream at work, or a bounded
    run), leave it the rows of the batches past its recorded progress — all of them before its first is recorded (a
    reconcile during a backlog would otherwise embed what the stream embeds a moment later; the stream's index worker
    takes a backlog newest first, and its progress is the batch below which every document is indexed)."""
    report, count = reporter(progress, log), counter(steps)

    def batch_done(done: int, total: int, so_far: IndexResult) -> None:
        count(done, total)
        if steps is None:  # a bar shows the counts; lines are for logs (Dagster's run, a pipe)
            report(f"{done}/{total} Gold rows: {so_far.embedded} embedded, {so_far.unchanged} unchanged")

    index = index if index is not None else document_index(settings)
    delta = DeltaTables.from_settings(settings)
    through = None
    if leave_to_stream and query_running(settings):
        done = index.progress(stream_progress_name(settings.topic))
        through = -1 if done is None else done
    result = reindex(index, delta, since, until, batch_size, batch_done, settings.enrich_max_chars, through)
    if result.left_to_stream:
        report(f"{result.left_to_stream} Gold rows of batches after {through} left to the stream, which is at work")
    return result


def _window(since: datetime | None, until: datetime | None) -> ds.Expression | None:
    expr = None
    if since is not None:
        expr = ds.field("event_time") >= pa.scalar(since, pa.timestamp("us", "UTC"))
    if until is not None:
        upper = ds.field("event_time") < pa.scalar(until, pa.timestamp("us", "UTC"))
        expr = upper if expr is None else expr & upper
    return expr


def gold_range(
    delta: DeltaTables,
    since: datetime | None,
    until: datetime | None,
    columns: list[str] | None = None,
    doc_ids: pa.Array | None = None,
) -> pa.Table:
    """Gold rows with ``since <= event_time < until`` (either end open), in event order; only ``columns`` (absent:
    all) and only the documents ``doc_ids`` when given (picked batch by batch, so the window's other rows are never
    all in memory)."""
    if doc_ids is None:
        table = delta.read("gold", columns, filter_expr=_window(since, until))
    else:
        table = delta.rows_with("gold", "doc_id", doc_ids, columns, filter_expr=_window(since, until))
    return table.sort_by([("event_time", "ascending"), ("partition", "ascending"), ("offset", "ascending")])


def _batches(table: pa.Table, size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(table), size):
        yield table.slice(start, size).to_pylist()


# Gold rows compared with pgvector at a time: the documents of their event-time span are read in one query.
COMPARE_ROWS = 50_000


def needing_work(index: DocumentIndex, keys: pa.Table) -> pa.Array:
    """The doc ids of ``keys`` (Gold's doc_id, content_hash, op and event_time) whose rows would change pgvector:
    every delete and rename (bounded by their event time, applying one again changes nothing) and each upsert whose
    content or vector version differs from what pgvector holds. The others are what `DocumentIndex.apply` would count
    as unchanged, found here from four columns and a query per ``COMPARE_ROWS`` rows, not from whole rows and a query
    per batch: a trailing window of hours is almost all unchanged."""
    version, parts = index.vector_version, []
    for start in range(0, len(keys), COMPARE_ROWS):
        chunk = keys.slice(start, COMPARE_ROWS)
        times = chunk.column("event_time")
        known = index.versions_between(pc.min(times).as_py(), pc.max(times).as_py())
        held = [known.get(doc_id) for doc_id in chunk.column("doc_id").to_pylist()]
        changed = pa.array(
            [
                h is None or h != (c, version)
                for h, c in zip(held, chunk.column("content_hash").to_pylist(), strict=True)
            ]
        )
        upsert = pc.equal(chunk.column("op"), "upsert")
        parts.append(chunk.filter(pc.or_(pc.invert(upsert), changed)).column("doc_id").combine_chunks())
    return pc.unique(pa.concat_arrays(parts)) if parts else pa.array([], pa.string())


def reindex(
    index: DocumentIndex,
    delta: DeltaTables,
    since: datetime | None = None,
    until: datetime | None = None,
    batch_size: int = 256,
    progress: Callable[[int, int, IndexResult], None] | None = None,
    diff_chars: int = FRAGMENT_CHARS,
    through_batch: int | None = None,
) -> IndexResult:
    """Apply every Gold row in the range that changes pgvector, batch by batch; returns the summed outcome (the
    rows left out counted as unchanged). A document whose diff enrichment kept a diff (``gold_diffs``) is written
    with it, as the enricher wrote it (``diff_chars`` of each side). ``through_batch``: only the rows of batch keys
    up to it (the others counted as ``left_to_stream``)."""
    columns = ["doc_id", "content_hash", "op", "event_time", "partition", "offset", "batch_id"]
    keys = gold_range(delta, since, until, columns)
    in_range = len(keys)
    if through_batch is not None:
        keys = keys.filter(pc.less_equal(keys.column("batch_id"), through_batch))
    work = needing_work(index, keys)
    rows = gold_range(delta, since, until, doc_ids=work) if len(work) else keys.slice(0, 0)
    if through_batch is not None:  # a document's id in a later batch too (a replayed record) stays the stream's
        rows = rows.filter(pc.less_equal(rows.column("batch_id"), through_batch))
    diffs = DiffRecords(delta).for_documents(work, _window(since, until)) if len(work) else {}
    done = len(keys) - len(rows)
    total = IndexResult(unchanged=done, left_to_stream=in_range - len(keys))
    if progress is not None:
        progress(done, len(keys), total)
    for batch in _batches(rows, batch_size):
        for row in batch:
            if row["doc_id"] in diffs and row["op"] == "upsert":
                row["text"] = enriched_text(row["text"], diffs[row["doc_id"]], diff_chars)
        total.add(index.index(batch))
        done += len(batch)
        if progress is not None:
            progress(done, len(keys), total)
    return total
