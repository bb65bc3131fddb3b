"""Pruning Dagster's history so that a platform left running does not grow it forever: finished runs (with their
events) and the continuous query's runless table reports older than a cutoff. Sensor ticks are pruned by Dagster
itself (`retention` in dagster.yaml).

Dagster has a public call to delete a run, none to delete single runless events: those are removed from its event
log tables directly (the schema of the pinned Dagster version, `dagster._core.storage.event_log.schema`), keeping the
newest report of each asset and partition, so the asset pages, partition status and freshness stay as they were."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.event_log.schema import AssetEventTagsTable, SqlEventLogStorageTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
RUNLESS = ""  # the run id Dagster gives runless asset events
CHUNK = 500


def prune(instance: dg.DagsterInstance, before: datetime, log: Callable[[str], None] = print) -> dict[str, int]:
    """Delete the runs that finished before ``before`` and the runless asset events reported before it (but the
    newest of each asset and partition); returns how many of each."""
    runs = 0
    while records := instance.get_run_records(dg.RunsFilter(statuses=FINISHED, updated_before=before), limit=CHUNK):
        for record in records:
            instance.delete_run(record.dagster_run.run_id)
        runs += len(records)
        log(f"deleted {runs} run(s) that finished before {before.isoformat()}")
    events = _prune_runless_events(instance, before)
    log(f"deleted {events} runless asset event(s) reported before {before.isoformat()}")
    return {"runs": runs, "runless_events": events}


def _prune_runless_events(instance: dg.DagsterInstance, before: datetime) -> int:
    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        return 0
    events = SqlEventLogStorageTable
    newest = (
        sa.select(sa.func.max(events.c.id))
        .where(events.c.run_id == RUNLESS, events.c.asset_key.is_not(None))
        .group_by(events.c.asset_key, events.c.partition)
    )
    old = (
        sa.select(events.c.id)
        .where(
            events.c.run_id == RUNLESS,
            events.c.dagster_event_type.in_(
                [dg.DagsterEventType.ASSET_MATERIALIZATION.value, dg.DagsterEventType.ASSET_OBSERVATION.value]
            ),
            events.c.timestamp < before.astimezone(UTC).replace(tzinfo=None),  # stored as naive UTC
            events.c.id.not_in(newest),
        )
        .limit(CHUNK * 10)
    )
    deleted = 0
    while True:
        with storage.index_connection() as conn:
            ids = [row[0] for row in conn.execute(old)]
            if not ids:
                return deleted
            conn.execute(AssetEventTagsTable.delete().where(AssetEventTagsTable.c.event_id.in_(ids)))
            conn.execute(events.delete().where(events.c.id.in_(ids)))
        deleted += len(ids)
