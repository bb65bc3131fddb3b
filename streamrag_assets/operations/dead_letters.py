"""Dead-letter retry: the documents that failed to index, indexed again through `DocumentIndex.index`."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from streamrag_assets.documents.models import DeadLetter
from streamrag_assets.documents.store import DocumentIndex, IndexResult
from streamrag_assets.operations.progress import Progress, reporter
from streamrag_assets.operations.reindex import document_index
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

_TIME_FIELDS = ("event_time", "ingested_at")


def retry(
    settings: Settings, progress: Progress | None = None, index: DocumentIndex | None = None
) -> tuple[IndexResult, int]:
    """Retry every dead letter against ``index`` (absent: the platform's, made here); returns the outcome and how
    many still fail."""
    return retry_dead_letters(index if index is not None else document_index(settings), progress)


def retry_dead_letters(index: DocumentIndex, progress: Progress | None = None) -> tuple[IndexResult, int]:
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
    reporter(progress, log)(
        f"retried {len(rows)} dead-lettered document(s): {len(rows) - result.dead_letters} indexed, "
        f"{result.dead_letters} still failing"
    )
    return result, result.dead_letters


def _decode(payload: str) -> dict[str, Any]:
    row = json.loads(payload)
    for name in _TIME_FIELDS:
        if row.get(name):
            row[name] = datetime.fromisoformat(row[name])
    return row
