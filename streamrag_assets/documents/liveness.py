"""The heartbeats as the supervisor reads them: one query on a plain psycopg connection, so the supervisor, which
asks every few seconds for the whole run, never imports the ORM (SQLAlchemy and pgvector: ~18 MiB of its memory,
measured)."""

from __future__ import annotations

import psycopg

STREAM = "stream"  # the streaming job's component name in pipeline_heartbeats


def seconds_since_beat(dsn: str, component: str, connect_timeout: int = 2) -> float | None:
    """Seconds since ``component`` last beat, by the database's clock; None before its first beat. On a connection
    (libpq ``dsn``) made and closed each time: the supervisor keeps none open. Raises `psycopg.Error` when the
    database cannot be read."""
    with psycopg.connect(dsn, connect_timeout=connect_timeout) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM now() - beat_at) FROM pipeline_heartbeats WHERE component = %s", (component,)
        ).fetchone()
    return float(row[0]) if row else None
