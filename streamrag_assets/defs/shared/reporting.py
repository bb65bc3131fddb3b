"""Micro-batch summaries (`streaming/reports.py`) as Dagster asset materializations: for the bounded runs' own
batches, and for the continuous query's reports, which reach Dagster through Postgres (`defs/medallion/sensors.py`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dagster as dg

from streamrag_assets.streaming import reports
from streamrag_assets.streaming.batch_result import BatchResult


def to_materializations(events: Iterable[dict[str, Any]]) -> list[dg.AssetMaterialization]:
    """`reports.summary` events as materializations (a dict value is JSON metadata)."""
    return [
        dg.AssetMaterialization(
            dg.AssetKey(e["asset"]),
            partition=e.get("partition"),
            metadata={k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in e["metadata"].items()},
        )
        for e in events
    ]


def materializations(results: Iterable[BatchResult], source: str) -> list[dg.AssetMaterialization]:
    """One materialization per table summarising ``results`` (in batch order)."""
    return to_materializations(reports.summary(results, source))
