"""What the stream's micro-batches did, summarised per table for Dagster, without Dagster (the stream's process
does not load it): plain, JSON-able events that `defs/shared/reporting.py` turns into asset materializations.

A summary covers the batches since the last one: one event per table (rows written, Delta version, offsets reached,
batch ids), so the asset pages show the tables fresh without a Dagster run per micro-batch and the event log grows
per interval, not per batch. A report means "the table reflects the topic up to these offsets", so each unpartitioned
table is reported whenever a batch ran, even with zero new rows; Gold and its embeddings (hourly partitions by event
time) are reported for each hour the interval wrote documents into. A metadata value that is a dict is JSON metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from streamrag_assets.streaming.batch_result import BatchResult

# The asset keys (`defs/shared/keys.py`, which needs Dagster) as their names.
BRONZE, SILVER, QUARANTINE = "bronze_events", "silver_events", "silver_quarantine"
GOLD, EMBEDDINGS = "gold_documents", "document_embeddings"


def event(asset: str, metadata: dict[str, Any], partition: str | None = None) -> dict[str, Any]:
    return {"asset": asset, "partition": partition, "metadata": metadata}


def summary(results: Iterable[BatchResult], source: str) -> list[dict[str, Any]]:
    """One event per table summarising ``results`` (in batch order); none for no batch."""
    results = list(results)
    if not results:
        return []
    last = results[-1]

    def total(key: str) -> int:
        return sum(r.counts.get(key, 0) for r in results)

    offsets: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for result in results:
        offsets.update({str(p): o for p, o in result.offsets.items()})
        for reason, n in result.quarantine_reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    common: dict[str, Any] = {
        "source": source,
        "batches": len(results),
        "first_batch_id": results[0].batch_key,
        "last_batch_id": last.batch_key,
    }

    def version(layer: str) -> dict[str, Any]:
        v = last.delta_versions.get(layer)
        return {"delta_version": v} if v is not None else {}

    return [
        event(BRONZE, common | version("bronze") | {"rows": total("bronze"), "next_offsets": offsets}),
        event(
            SILVER,
            common
            | version("silver")
            | {"rows": total("silver"), "duplicates_dropped": total("duplicate"), "canary_dropped": total("canary")},
        ),
        event(QUARANTINE, common | version("quarantine") | {"rows": total("quarantine"), "reasons": reasons}),
        *_hourly(results, common | version("gold")),
    ]


def _hourly(results: list[BatchResult], common: dict[str, Any]) -> list[dict[str, Any]]:
    """Gold and its embeddings are partitioned by hour of event time: one event each per hour written."""
    hours: dict[str, int] = {}
    for result in results:
        for hour, n in result.gold_hours.items():
            hours[hour] = hours.get(hour, 0) + n
    indexed = {
        name: sum(r.indexed.get(name, 0) for r in results)
        for name in ("upserted", "embedded", "deleted", "dead_letters")
    }
    events = []
    for hour, rows in sorted(hours.items()):
        events.append(event(GOLD, common | {"rows": rows}, hour))
        # The index applies a batch's documents together; its counts are per interval, reported with each hour.
        events.append(event(EMBEDDINGS, common | {"documents": rows} | indexed, hour))
    return events
