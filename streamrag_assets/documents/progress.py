"""How far the index has come: the last micro-batch below which every document is committed (`IndexProgress`) and,
per partition of the topic, the offset and the newest ingest and event times it reached. With the topic's heads
these make the true low watermark every API response carries (`streamrag_api.watermark`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple


def stream_progress_name(topic: str) -> str:
    """The name under which the stream of ``topic`` records its progress (`IndexProgress.stream`)."""
    return f"medallion:{topic}"


class PartitionMark(NamedTuple):
    """How far into one partition a micro-batch (or everything up to it) reached: the next offset, and the newest
    ingest and event times among the records before it."""

    offset: int
    ingested_at: datetime | None
    event_time: datetime | None

    def after(self, earlier: PartitionMark | None) -> PartitionMark:
        """This mark, reached after ``earlier``: the furthest offset and the newest times of the two."""
        if earlier is None:
            return self
        return PartitionMark(
            max(self.offset, earlier.offset),
            _newest(self.ingested_at, earlier.ingested_at),
            _newest(self.event_time, earlier.event_time),
        )


Marks = dict[int, PartitionMark]


def merged(earlier: Marks, later: Marks) -> Marks:
    """The marks of everything in ``earlier`` and then ``later``."""
    return earlier | {partition: mark.after(earlier.get(partition)) for partition, mark in later.items()}


def _newest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True)
class Progress:
    """What an index transaction records: ``stream``'s batches up to ``batch_key`` are indexed, reaching ``marks``
    (partitions absent keep what was recorded before)."""

    stream: str
    batch_key: int
    marks: Marks = field(default_factory=dict)

    def marks_json(self) -> dict[str, Any]:
        return {str(partition): mark_json(mark) for partition, mark in self.marks.items()}


def mark_json(mark: PartitionMark) -> dict[str, Any]:
    return {
        "offset": mark.offset,
        "ingested_at": mark.ingested_at.isoformat() if mark.ingested_at else None,
        "event_time": mark.event_time.isoformat() if mark.event_time else None,
    }


def marks_from_json(value: dict[str, Any] | None) -> Marks:
    """The marks as `IndexProgress.partitions` keeps them."""
    marks: Marks = {}
    for partition, mark in (value or {}).items():
        marks[int(partition)] = PartitionMark(
            int(mark["offset"]),
            datetime.fromisoformat(mark["ingested_at"]) if mark.get("ingested_at") else None,
            datetime.fromisoformat(mark["event_time"]) if mark.get("event_time") else None,
        )
    return marks
