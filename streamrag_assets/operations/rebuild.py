"""Rebuild: Silver, quarantine and Gold recomputed from all of Bronze, chunk by chunk in Spark, with the live stream's
transforms, written as new versions of those tables (overwrite; time travel keeps the old ones)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pyarrow.compute as pc

from streamrag_assets.operations.progress import Progress, Steps, counter, reporter
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.checkpoint import checkpoints_for_run
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.pipeline import APP_ID, record_counts
from streamrag_assets.streaming.spark import get_spark
from streamrag_assets.streaming.transforms import refine_dataframe, split_layers

log = logging.getLogger(__name__)


def rebuild_from_bronze(
    settings: Settings,
    progress: Progress | None = None,
    who: str = "a rebuild from Bronze",
    steps: Steps | None = None,
) -> dict[str, int]:
    """Recompute Silver/quarantine/Gold from all of Bronze, the continuous query paused meanwhile (``who`` says what
    it waits for); returns the row counts."""
    report = reporter(progress, log)
    with checkpoints_for_run(settings, who, progress=report):
        return _rebuild(settings, report, counter(steps))


def _rebuild(settings: Settings, report: Progress, advance: Steps) -> dict[str, int]:
    """Bronze in chunks of whole micro-batches, in batch order, so that memory stays bounded whatever Bronze holds
    and duplicates are still told by their first occurrence across all of it (the ids already kept are carried
    from chunk to chunk). The first chunk overwrites each table, the others append."""
    began = time.perf_counter()
    delta = DeltaTables.from_settings(settings)
    table = delta.table("bronze")
    if table is None:
        return {"bronze": 0}
    bronze = table.to_pyarrow_dataset()
    batch_sizes = bronze.to_table(columns=["batch_id"])["batch_id"].value_counts().to_pylist()
    chunks = _chunks(sorted((s["values"], s["counts"]) for s in batch_sizes), settings.rebuild_chunk_rows)
    if not chunks:
        return {"bronze": 0}
    spark = get_spark(settings)
    kept: set[str] = set()
    totals: dict[str, int] = {}
    version = int(time.time())
    now = datetime.now(UTC)
    bronze_rows = sum(s["counts"] for s in batch_sizes)
    advance(0, bronze_rows)
    for number, (first, last) in enumerate(chunks):
        rows = bronze.to_table(filter=(pc.field("batch_id") >= first) & (pc.field("batch_id") <= last))
        refined = refine_dataframe(spark.createDataFrame(rows)).toArrow()
        layers = split_layers(refined, kept, now)
        kept.update(layers.silver["event_id"].to_pylist())
        for layer in ("silver", "quarantine", "gold"):
            rows_out = getattr(layers, layer)
            if number == 0:
                delta.write_once(layer, rows_out, f"{APP_ID}-rebuild-{layer}", version, mode="overwrite")
            else:
                delta.write_once(layer, rows_out, f"{APP_ID}-rebuild-{layer}-{version}", number)
        record_counts(layers)
        for name, count in layers.counts.items():
            totals[name] = totals.get(name, 0) + count
        report(f"rebuilt chunk {number + 1}/{len(chunks)}: {totals['bronze']} Bronze rows so far")
        advance(totals["bronze"], bronze_rows)
    report(f"rebuilt from {totals['bronze']} Bronze rows in {time.perf_counter() - began:.1f} s: {totals}")
    return totals


def _chunks(batch_sizes: list[tuple[int, int]], rows: int) -> list[tuple[int, int]]:
    """Consecutive runs of micro-batch ids of about ``rows`` Bronze rows each (a larger batch is a chunk alone)."""
    chunks: list[tuple[int, int]] = []
    start: int | None = None
    previous = size = 0
    for batch_id, count in batch_sizes:
        if start is not None and size + count > rows:
            chunks.append((start, previous))
            start, size = None, 0
        if start is None:
            start = batch_id
        size += count
        previous = batch_id
    if start is not None:
        chunks.append((start, previous))
    return chunks
