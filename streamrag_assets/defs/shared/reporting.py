"""The continuous query's micro-batches as Dagster asset materializations (the stream's process reports them: see
`runtime/dagster_reporter.py`).

Every ``dagster_report_interval_s`` the batches processed since the last report become one materialization per table
(rows written, Delta version, offsets reached, batch ids), so the asset pages show the tables fresh without a Dagster
run per micro-batch and the event log grows per interval, not per batch. A report means "the table reflects the topic
up to these offsets", so each unpartitioned table is reported whenever a batch ran, even with zero new rows; Gold and
its embeddings (hourly partitions by event time) are reported for each hour the interval wrote documents into.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dagster as dg

from streamrag_assets.defs.shared.keys import BRONZE, EMBEDDINGS, GOLD, QUARANTINE, SILVER
from streamrag_assets.streaming.batch_result import BatchResult


def materializations(results: Iterable[BatchResult], source: str) -> list[dg.AssetMaterialization]:
    """One materialization per table summarising ``results`` (in batch order)."""
    results = list(results)
    if not results:
        return []
    last = results[-1]

    def total(key: str, field: str = "counts") -> int:
        return sum(getattr(r, field).get(key, 0) for r in results)

    offsets: dict[int, int] = {}
    for result in results:
        offsets.update(result.offsets)
    reasons: dict[str, int] = {}
    for result in results:
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
        dg.AssetMaterialization(
            BRONZE,
            metadata=common
            | version("bronze")
            | {"rows": total("bronze"), "next_offsets": dg.MetadataValue.json({str(p): o for p, o in offsets.items()})},
        ),
        dg.AssetMaterialization(
            SILVER,
            metadata=common
            | version("silver")
            | {"rows": total("silver"), "duplicates_dropped": total("duplicate"), "canary_dropped": total("canary")},
        ),
        dg.AssetMaterialization(
            QUARANTINE,
            metadata=common
            | version("quarantine")
            | {"rows": total("quarantine"), "reasons": dg.MetadataValue.json(reasons)},
        ),
    ] + hourly_materializations(results, common | version("gold"))


def hourly_materializations(results: list[BatchResult], common: dict[str, Any]) -> list[dg.AssetMaterialization]:
    """Gold and its embeddings are partitioned by hour of event time: one materialization per hour written."""
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
        events.append(dg.AssetMaterialization(GOLD, partition=hour, metadata=common | {"rows": rows}))
        # The index applies a batch's documents together; its counts are per interval, reported with each hour.
        events.append(
            dg.AssetMaterialization(EMBEDDINGS, partition=hour, metadata=common | {"documents": rows} | indexed)
        )
    return events
