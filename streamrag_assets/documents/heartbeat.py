"""Heartbeats in Postgres: where the API (on any machine) learns whether the streaming job is alive and how far
behind it is, without reaching into the stream's process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from streamrag_assets.documents.models import Heartbeat

log = logging.getLogger(__name__)


def beat(engine: Engine, component: str, detail: dict[str, Any]) -> None:
    statement = insert(Heartbeat).values(component=component, beat_at=datetime.now(UTC), detail=detail)
    with engine.begin() as conn:
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[Heartbeat.component],
                set_={"beat_at": statement.excluded.beat_at, "detail": statement.excluded.detail},
            )
        )


def latest(engine: Engine, component: str) -> tuple[datetime, dict[str, Any]] | None:
    with engine.connect() as conn:
        row = conn.execute(select(Heartbeat.beat_at, Heartbeat.detail).where(Heartbeat.component == component)).first()
    return (row[0], row[1]) if row else None


class HeartbeatThread:
    """Beats every ``interval_s`` with ``detail()`` until closed; a database hiccup skips a beat, never more."""

    def __init__(self, database_url: str, component: str, detail: Callable[[], dict[str, Any]], interval_s: float):
        self.engine = create_engine(database_url, pool_pre_ping=True)
        self.component, self.detail, self.interval_s = component, detail, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{component}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                beat(self.engine, self.component, self.detail())
            except (SQLAlchemyError, OSError) as exc:
                log.warning("heartbeat of %s not recorded: %s", self.component, exc)
            if self._stop.wait(self.interval_s):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.engine.dispose()
