"""What one micro-batch did, as the stream reports it (its log line, the heartbeat, Dagster's materializations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from streamrag_assets.documents.progress import Marks, PartitionMark

if TYPE_CHECKING:
    from streamrag_assets.documents.store import IndexResult

HOUR_KEY_FORMAT = "%Y-%m-%d-%H:%M"  # Dagster's hourly partition keys


def partition_marks(refined: pa.Table) -> Marks:
    """Per partition of a refined micro-batch (every record, rejected ones too): its `PartitionMark`."""
    grouped = refined.group_by("partition").aggregate(
        [("offset", "max"), ("ingested_at", "max"), ("event_time", "max")]
    )
    return {
        row["partition"]: PartitionMark(row["offset_max"] + 1, row["ingested_at_max"], row["event_time_max"])
        for row in grouped.to_pylist()
    }


@dataclass
class BatchResult:
    batch_key: int
    counts: dict[str, int]
    quarantine_reasons: dict[str, int]
    offsets: dict[int, int]
    delta_versions: dict[str, int | None] = field(default_factory=dict)  # set once the tables are written
    seconds: float = 0.0
    indexed: dict[str, int] = field(default_factory=dict)
    # Gold documents written per hour of event time (``HOUR_KEY_FORMAT``): the hourly partitions the batch touched.
    gold_hours: dict[str, int] = field(default_factory=dict)
    # Seconds per phase (refine, dedupe, queue, write_/maintain_<layer>, index, embed): where a slow batch's time went.
    phases: dict[str, float] = field(default_factory=dict)
    marks: Marks = field(default_factory=dict)  # `offsets` with the newest ingest and event times of each partition

    def record_index(self, outcome: IndexResult, seconds: float) -> None:
        """The batch's index phase: its time, the embedding's share and the documents' counts."""
        self.phases["index"] = round(seconds, 3)
        self.phases["embed"] = round(outcome.embed_seconds, 3)
        names = ("embedded", "upserted", "unchanged", "deleted", "dead_letters")
        self.indexed = {name: getattr(outcome, name) for name in names}


def hour_counts(times: pa.ChunkedArray) -> dict[str, int]:
    """How many of ``times`` fall in each hour, keyed like the hourly partitions."""
    counts: dict[str, int] = {}
    for hour in pc.floor_temporal(times, unit="hour").to_pylist():
        if hour is not None:
            key = hour.strftime(HOUR_KEY_FORMAT)
            counts[key] = counts.get(key, 0) + 1
    return counts
