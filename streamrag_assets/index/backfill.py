"""(Re)index a range of Gold into pgvector, and retry dead letters: for backfills, model changes and failures.

Both go through `DocumentIndex.index`, the same code the stream uses, so a range indexed twice changes nothing; a
document is embedded again only when its content or the model changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from streamrag_assets.documents.models import DeadLetter
from streamrag_assets.documents.store import DocumentIndex, IndexResult
from streamrag_assets.streaming.delta import DeltaTables

log = logging.getLogger(__name__)

_TIME_FIELDS = ("event_time", "ingested_at")


def _add(total: IndexResult, part: IndexResult) -> None:
    for name, value in asdict(part).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            setattr(total, name, getattr(total, name) + value)


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
        _add(total, index.index(rows))
        done += len(rows)
        if progress is not None:
            progress(done, len(table), total)
    return total


def retry_dead_letters(index: DocumentIndex) -> tuple[IndexResult, int]:
    """Index the dead-lettered documents again; returns the outcome and how many still fail."""
    with Session(index.engine) as session:
        letters = session.execute(select(DeadLetter).order_by(DeadLetter.id)).scalars().all()
        latest = {letter.doc_id: letter for letter in letters}  # a document may have failed more than once
        ids = [letter.id for letter in letters]
        rows = [_decode(letter.payload) for letter in latest.values()]
        attempts = {letter.doc_id: letter.attempts + 1 for letter in latest.values()}
    if not rows:
        return IndexResult(), 0
    # Failures are written again (attempts + 1) in the same transaction as the successes; then the old letters go.
    result = index.index(rows, attempts=attempts)
    with Session(index.engine) as session, session.begin():
        session.execute(delete(DeadLetter).where(DeadLetter.id.in_(ids)))
    log.info(
        "retried %d dead-lettered document(s): %d indexed, %d still failing",
        len(rows),
        len(rows) - result.dead_letters,
        result.dead_letters,
    )
    return result, result.dead_letters


def _decode(payload: str) -> dict[str, Any]:
    row = json.loads(payload)
    for name in _TIME_FIELDS:
        if row.get(name):
            row[name] = datetime.fromisoformat(row[name])
    return row
