"""Replays, built on the same transforms as the live stream.

- ``rebuild``: Silver, quarantine and Gold recomputed from Bronze in one batch job, written as new versions of those
  tables (overwrite; time travel keeps the old ones).
- ``reprocess``: re-read the topic from an offset or a time with a fresh checkpoint (a new epoch); rows that came
  from those offsets are deleted from every table first, so nothing is held twice.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.pipeline import APP_ID, checkpoint_root, current_epoch, record_counts, tables
from streamrag_assets.streaming.transforms import refine, split_layers

log = logging.getLogger(__name__)


def rebuild_from_bronze(settings: Settings) -> dict[str, int]:
    """Recompute Silver/quarantine/Gold from all of Bronze; returns the row counts."""
    from streamrag_assets.streaming.spark import get_spark

    began = time.perf_counter()
    delta = tables(settings)
    bronze = delta.read("bronze")
    spark = get_spark(settings)
    refined = refine(spark.createDataFrame(bronze)).toArrow() if len(bronze) else None
    if refined is None:
        return {"bronze": 0}
    layers = split_layers(refined, set(), datetime.now(UTC))
    version = int(time.time())
    for layer in ("silver", "quarantine", "gold"):
        delta.write_once(layer, getattr(layers, layer), f"{APP_ID}-rebuild-{layer}", version, mode="overwrite")
    record_counts(layers)
    log.info("rebuilt from %d Bronze rows in %.1f s: %s", len(bronze), time.perf_counter() - began, layers.counts)
    return layers.counts


def resolve_start(
    settings: Settings, from_offsets: dict[int, int] | None, from_time: datetime | None
) -> dict[int, int]:
    consumer = kafka_offsets.make_consumer(settings.bootstrap_servers)
    try:
        tps = kafka_offsets.topic_partitions(consumer, settings.topic)
        if from_time is not None:
            return kafka_offsets.offsets_for_time(consumer, tps, int(from_time.timestamp() * 1000))
        beginning = kafka_offsets.beginning_offsets(consumer, tps)
        return {tp.partition: (from_offsets or {}).get(tp.partition, beginning[tp.partition]) for tp in tps}
    finally:
        consumer.close()


def prepare_reprocess(settings: Settings, start: dict[int, int]) -> int:
    """Delete what came from offsets >= start in every table and open a new checkpoint epoch; returns the epoch."""
    delta = tables(settings)
    predicate = " OR ".join(f"(partition = {int(p)} AND offset >= {int(o)})" for p, o in sorted(start.items()))
    for layer in ("bronze", "silver", "quarantine", "gold"):
        table = delta.table(layer)
        if table is not None and predicate:
            metrics = table.delete(predicate)
            log.info("%s: deleted rows from the reprocessed range (%s)", layer, metrics)
    epoch = current_epoch(settings) + 1
    (checkpoint_root(settings) / f"epoch-{epoch}").mkdir(parents=True, exist_ok=True)
    return epoch


def starting_offsets_option(start: dict[int, int]) -> str:
    return json.dumps({str(p): o for p, o in start.items()})
