"""Retention: documents older than the window leave the index (Dagster schedules this)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import CursorResult, create_engine, delete

from streamrag_assets.documents.models import Document, DocumentRemoval

REMOVALS_KEPT = timedelta(days=1)


def prune(database_url: str, older_than_days: float) -> int:
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            result = cast(CursorResult, conn.execute(delete(Document).where(Document.event_time < cutoff)))
            # The removal log only has to outlive a follower's poll; a follower that restarts reads the table anew.
            conn.execute(delete(DocumentRemoval).where(DocumentRemoval.removed_at < datetime.now(UTC) - REMOVALS_KEPT))
            return result.rowcount or 0
    finally:
        engine.dispose()
