"""Rebuild: Silver, quarantine and Gold recomputed from all of Bronze in one batch job, with the live stream's
transforms, written as new versions of those tables (overwrite; time travel keeps the old ones)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from streamrag_assets.operations.progress import Progress, reporter
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.checkpoint import checkpoints_for_run
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.pipeline import APP_ID, record_counts
from streamrag_assets.streaming.spark import get_spark
from streamrag_assets.streaming.transforms import refine_dataframe, split_layers

log = logging.getLogger(__name__)


def rebuild_from_bronze(
    settings: Settings, progress: Progress | None = None, who: str = "a rebuild from Bronze"
) -> dict[str, int]:
    """Recompute Silver/quarantine/Gold from all of Bronze, the continuous query paused meanwhile (``who`` says what
    it waits for); returns the row counts."""
    report = reporter(progress, log)
    with checkpoints_for_run(settings, who, progress=report):
        return _rebuild(settings, report)


def _rebuild(settings: Settings, report: Progress) -> dict[str, int]:
    began = time.perf_counter()
    delta = DeltaTables.from_settings(settings)
    bronze = delta.read("bronze")
    spark = get_spark(settings)
    refined = refine_dataframe(spark.createDataFrame(bronze)).toArrow() if len(bronze) else None
    if refined is None:
        return {"bronze": 0}
    layers = split_layers(refined, set(), datetime.now(UTC))
    version = int(time.time())
    for layer in ("silver", "quarantine", "gold"):
        delta.write_once(layer, getattr(layers, layer), f"{APP_ID}-rebuild-{layer}", version, mode="overwrite")
    record_counts(layers)
    report(f"rebuilt from {len(bronze)} Bronze rows in {time.perf_counter() - began:.1f} s: {layers.counts}")
    return layers.counts
