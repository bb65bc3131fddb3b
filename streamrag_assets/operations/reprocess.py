"""Reprocess: re-read the topic from an offset or a time with a fresh checkpoint (a new epoch), in an availableNow
query; the rows that came from those offsets are deleted from every table first, so nothing is held twice."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.operations.progress import Progress, Steps, counter, reporter
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.batch_result import BatchResult
from streamrag_assets.streaming.checkpoint import checkpoint_root, checkpoints_for_run, current_epoch
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.pipeline import start_query

log = logging.getLogger(__name__)


class OffsetsRemoved(ValueError):
    """A reprocess was asked to start below what the broker still holds."""


@dataclass(frozen=True)
class Reprocessed:
    start: dict[int, int]  # partition -> first offset re-read
    epoch: int  # the checkpoint epoch the query ran in


def reprocess(
    settings: Settings,
    from_offsets: dict[int, int] | None,
    from_time: datetime | None,
    progress: Progress | None = None,
    who: str = "a reprocess of the topic",
    steps: Steps | None = None,
) -> Reprocessed:
    """Re-read the topic from ``from_offsets`` (partitions not named: from their beginning) or from the first offset
    at or after ``from_time``, the continuous query paused meanwhile (it resumes in the new epoch). Raises
    QueryAlreadyRunning when the query does not pause. ``steps`` counts the events re-read against the topic's heads
    when it began."""
    report = reporter(progress, log)
    with checkpoints_for_run(settings, who, progress=report):
        start = resolve_start(settings, from_offsets, from_time)
        epoch = prepare_reprocess(settings, start, report)
        re_read = _ReReading(
            start, kafka_offsets.topic_heads(settings.bootstrap_servers, settings.topic), counter(steps)
        )
        report(f"re-reading the topic from {start} into checkpoint epoch {epoch} ({re_read.total:,} events)")
        query = start_query(
            settings,
            available_now=True,
            starting_offsets=starting_offsets_option(start),
            epoch=epoch,
            on_batch=re_read.batch_done,
        )
        query.awaitTermination()
        re_read.finished()
    return Reprocessed(start, epoch)


class _ReReading:
    """How many of the events between the start offsets and the heads the query has re-read, told to ``advance``."""

    def __init__(self, start: dict[int, int], heads: dict[int, int], advance: Steps) -> None:
        self.start = start
        self.reached = dict(start)
        self.total = sum(max(heads.get(p, o) - o, 0) for p, o in start.items())
        self.advance = advance
        advance(0, self.total)

    def batch_done(self, result: BatchResult) -> None:
        for partition, offset in result.offsets.items():
            self.reached[partition] = max(self.reached.get(partition, 0), offset + 1)
        done = self._done()
        self.advance(done, max(self.total, done))  # events produced since the start count as they arrive

    def finished(self) -> None:
        done = max(self.total, self._done())
        self.advance(done, done)

    def _done(self) -> int:
        return sum(max(self.reached[p] - o, 0) for p, o in self.start.items())


def resolve_start(
    settings: Settings, from_offsets: dict[int, int] | None, from_time: datetime | None
) -> dict[int, int]:
    consumer = kafka_offsets.make_consumer(settings.bootstrap_servers)
    try:
        tps = kafka_offsets.topic_partitions(consumer, settings.topic)
        if from_time is not None:
            return kafka_offsets.offsets_for_time(consumer, tps, int(from_time.timestamp() * 1000))
        beginning = kafka_offsets.beginning_offsets(consumer, tps)
        removed = {p: o for p, o in (from_offsets or {}).items() if o < beginning.get(p, 0)}
        if removed:
            # Reprocessing deletes the rows from these offsets on first: records the broker no longer holds would
            # be deleted and never read again.
            raise OffsetsRemoved(
                "the broker no longer holds offsets "
                + ", ".join(f"{p}:{o} (partition {p} begins at {beginning[p]})" for p, o in sorted(removed.items()))
                + "; reprocess from the beginning offsets, or rebuild Silver and Gold from Bronze (`streamrag replay "
                "rebuild`)"
            )
        return {tp.partition: (from_offsets or {}).get(tp.partition, beginning[tp.partition]) for tp in tps}
    finally:
        consumer.close()


def prepare_reprocess(settings: Settings, start: dict[int, int], progress: Progress | None = None) -> int:
    """Delete what came from offsets >= start in every table and open a new checkpoint epoch; returns the epoch."""
    report = reporter(progress, log)
    delta = DeltaTables.from_settings(settings)
    predicate = " OR ".join(f"(partition = {int(p)} AND offset >= {int(o)})" for p, o in sorted(start.items()))
    for layer in ("bronze", "silver", "quarantine", "gold"):
        table = delta.table(layer)
        if table is not None and predicate:
            metrics = table.delete(predicate)
            report(f"{layer}: deleted rows from the reprocessed range ({metrics})")
    epoch = current_epoch(settings) + 1
    (checkpoint_root(settings) / f"epoch-{epoch}").mkdir(parents=True, exist_ok=True)
    return epoch


def starting_offsets_option(start: dict[int, int]) -> str:
    return json.dumps({str(p): o for p, o in start.items()})
