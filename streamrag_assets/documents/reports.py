"""The continuous query's reports for Dagster, through Postgres (`models.StreamReport`): the stream's process
collects its micro-batches and writes a summary every ``dagster_report_interval_s`` (`StreamReporter`); the
`stream_reports` sensor in the Dagster code location reads them as runless asset materializations and removes what
it has reported. The stream therefore never loads Dagster (~50 MiB of its process), and a Dagster that is down or
slow never delays a micro-batch: the summaries wait in the table."""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import create_engine, delete, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from streamrag_assets.documents.models import StreamReport
from streamrag_assets.streaming import reports
from streamrag_assets.streaming.batch_result import BatchResult

log = logging.getLogger(__name__)

# Reports nobody read (Dagster not running for a day) are dropped by the writer: the tables and the topic stay the
# record; the reports only make Dagster's asset pages current.
UNREAD_KEPT = "1 day"
# Batches kept in memory while Postgres cannot be written (~20 minutes at the default trigger); older ones are dropped.
PENDING_MAX = 5000


def write(engine: Engine, events: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(StreamReport).values(events=events))
        conn.execute(delete(StreamReport).where(StreamReport.reported_at < text(f"now() - interval '{UNREAD_KEPT}'")))


def unread(engine: Engine, after: int, limit: int = 500) -> list[tuple[int, list[dict[str, Any]]]]:
    """Reports after id ``after``, oldest first: (id, events)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(StreamReport.id, StreamReport.events)
            .where(StreamReport.id > after)
            .order_by(StreamReport.id)
            .limit(limit)
        )
        return [(row.id, row.events) for row in rows]


def forget(engine: Engine, through: int) -> None:
    """Remove the reports up to id ``through`` (reported)."""
    with engine.begin() as conn:
        conn.execute(delete(StreamReport).where(StreamReport.id <= through))


class StreamReporter:
    """Collects batch results (``add`` is the query's ``on_batch``) and writes their summary from a background
    thread every ``interval_s``; a database that cannot be written keeps them for the next attempt."""

    def __init__(self, database_url: str, interval_s: float, source: str = "continuous query") -> None:
        self.engine = create_engine(database_url, pool_pre_ping=True, pool_size=1, max_overflow=0)
        self.interval_s, self.source = interval_s, source
        self._pending: list[BatchResult] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-reporter", daemon=True)
        self._thread.start()

    def add(self, result: BatchResult) -> None:
        with self._lock:
            self._pending.append(result)

    def flush(self) -> int:
        """Write what is pending now as one report; returns how many events it holds."""
        with self._lock:
            batch, self._pending = self._pending, []
        events = reports.summary(batch, self.source)
        if not events:
            return 0
        try:
            write(self.engine, events)
        except (SQLAlchemyError, OSError) as exc:  # Postgres down: keep the results, never fail the stream
            log.warning("could not record %d batch(es) for Dagster (%s); will retry", len(batch), exc)
            with self._lock:
                self._pending = batch + self._pending
                if len(self._pending) > PENDING_MAX:
                    log.warning("dropping %d unrecorded batch(es)", len(self._pending) - PENDING_MAX)
                    self._pending = self._pending[-PENDING_MAX:]
            return 0
        return len(events)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
        self.engine.dispose()
