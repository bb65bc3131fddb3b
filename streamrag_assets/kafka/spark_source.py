"""Spark Python Data Source for Kafka, built on kafka-python.

The JVM Kafka connector's jars cannot be fetched here (no Maven), so Spark reads the topic through this source.
Offsets are ``{"<partition>": next_offset}`` dicts that Spark checkpoints; a micro-batch reads each partition's
``[start, end)`` range in one task. Readers are pickled to executors, so consumers are created inside ``read()``.

Options: ``bootstrap_servers``, ``topic``, ``startingOffsets`` (earliest | latest | a timestamp in ms | a JSON
offsets dict), ``maxOffsetsPerTrigger`` (admission control), ``endingOffsets`` (batch reads: latest | JSON),
``gapLedger`` (the directory of the offset gap ledger; default ``<state_dir>/offset_gaps``), ``gapIdleSeconds``
(how long a range's end may yield nothing before the broker is asked whether it is a gap; see `read_ranges`),
``trimIntervalSeconds`` (how often the Python processes that read and plan hand freed memory back; `runtime/memory.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql.datasource import DataSource, DataSourceReader, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxRows,
    SupportsTriggerAvailableNow,
)
from pyspark.sql.types import StructType

from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.kafka.gaps import LOST_REASONS, GapLedger, ledger_dir
from streamrag_assets.metrics import expose_offset_gaps
from streamrag_assets.runtime.memory import release_if_due

SOURCE_NAME = "streamrag_kafka"
KAFKA_SCHEMA = (
    "topic string, partition int, offset long, timestamp timestamp, key binary, value binary, "
    "headers map<string,string>"
)

Offsets = dict[str, int]
SINGLE_TASK_RECORDS = 2_000  # micro-batches up to this size are read by one task
# A range up to this size whose records the heads' fetch already returned travels to its task with them instead of
# being fetched again (on Tansu 0.6 with S3 storage each fetch lists every object of the partition).
PREFETCHED_RECORDS = 2_000
# A partition that answers no records for this long below its high watermark is looked at as a possible gap (see
# `offsets.read_ranges`); the margin is wide because skipping records that are merely slow to arrive would lose
# them.
GAP_IDLE_S = 20.0


def _default_ledger() -> str:
    from streamrag_assets.settings import get_settings

    return str(ledger_dir(get_settings().state_dir))


def _ledger_totals() -> dict[str, tuple[int, int]]:
    return GapLedger(Path(_default_ledger())).totals()


# Gaps are found in Spark's Python workers, which nobody scrapes; the process that runs the query (it imports this
# module to register the source) serves their counts from the ledger.
expose_offset_gaps(_ledger_totals, LOST_REASONS)


@dataclass(frozen=True)
class KafkaRange:
    bootstrap_servers: str
    topic: str
    partition: int
    start: int
    end: int
    rows: tuple[tuple, ...] | None = None  # the range's rows when the driver already holds them (see `prefetched`)
    gap_idle_s: float = GAP_IDLE_S
    gap_ledger: str | None = None  # where gaps found reading the range are kept (only logged without one)


@dataclass(frozen=True)
class KafkaSplit(InputPartition):
    """One Spark task's share of a micro-batch: several partitions' ranges read with one consumer (a consumer's
    connect costs more than reading a thousand records, so tasks are few: ``maxTasks``, default 2)."""

    ranges: tuple[KafkaRange, ...]
    trim_interval_s: float = 0.0  # the worker hands freed memory back at most this often (0: never)


def _to_offsets(by_partition: dict[int, int]) -> Offsets:
    return {str(p): int(o) for p, o in sorted(by_partition.items())}


class _KafkaOptions:
    def __init__(self, options: Mapping[str, str]) -> None:
        self.bootstrap_servers = options.get("bootstrap_servers", "127.0.0.1:9092")
        self.topic = options["topic"]
        self.starting = options.get("startingOffsets", "earliest")
        self.ending = options.get("endingOffsets", "latest")
        self.max_per_trigger = int(options["maxOffsetsPerTrigger"]) if "maxOffsetsPerTrigger" in options else None
        self.max_tasks = int(options.get("maxTasks", "2"))
        self.gap_ledger = options.get("gapLedger") or _default_ledger()
        self.gap_idle_s = float(options.get("gapIdleSeconds", GAP_IDLE_S))
        self.trim_interval_s = float(options.get("trimIntervalSeconds", "0"))

    def resolve(self, spec: str, consumer: object) -> Offsets:
        tps = kafka_offsets.topic_partitions(consumer, self.topic)
        if spec == "earliest":
            return _to_offsets(kafka_offsets.beginning_offsets(consumer, tps))
        if spec == "latest":
            return _to_offsets(kafka_offsets.high_watermarks(consumer, tps))
        if spec.isdigit():
            return _to_offsets(kafka_offsets.offsets_for_time(consumer, tps, int(spec)))
        try:
            given = {str(k): int(v) for k, v in json.loads(spec).items()}
        except (ValueError, AttributeError) as exc:
            raise ValueError(
                f"offsets must be earliest, latest, a timestamp in ms, or a JSON dict, not {spec!r}"
            ) from exc
        beginning = kafka_offsets.beginning_offsets(consumer, tps)
        return {str(tp.partition): given.get(str(tp.partition), beginning[tp.partition]) for tp in tps}

    def ranges(self, start: Offsets, end: Offsets, held: dict[int, dict[int, tuple]] | None = None) -> list[KafkaSplit]:
        ranges = [
            KafkaRange(
                self.bootstrap_servers,
                self.topic,
                int(p),
                start.get(p, 0),
                end[p],
                prefetched((held or {}).get(int(p), {}), start.get(p, 0), end[p]),
                self.gap_idle_s,
                self.gap_ledger,
            )
            for p in sorted(end, key=int)
            if end[p] > start.get(p, 0)
        ]
        # One consumer fetches all its partitions together, so a small batch is one task (each task costs a Python
        # worker round trip); a large one is spread, largest range first onto the least loaded task.
        total = sum(r.end - r.start for r in ranges)
        count = 1 if total <= SINGLE_TASK_RECORDS else self.max_tasks
        tasks: list[list[KafkaRange]] = [[] for _ in range(min(count, len(ranges)))]
        for item in sorted(ranges, key=lambda r: r.end - r.start, reverse=True):
            min(tasks, key=lambda t: sum(r.end - r.start for r in t)).append(item)
        return [KafkaSplit(tuple(task), self.trim_interval_s) for task in tasks]


def prefetched(held: dict[int, tuple], start: int, end: int) -> tuple[tuple, ...] | None:
    """The rows of ``[start, end)`` when ``held`` has every offset of it (a small range), else None."""
    if end - start > PREFETCHED_RECORDS or any(offset not in held for offset in range(start, end)):
        return None
    return tuple(held[offset] for offset in range(start, end))


def read_split(split: KafkaSplit) -> Iterator[tuple]:
    """Yield every record of the split's ranges as rows of KAFKA_SCHEMA: the rows a range carries, and the rest
    fetched with one consumer for them all."""
    to_fetch = [r for r in split.ranges if r.rows is None]
    try:
        for held in split.ranges:
            if held.rows is not None:
                yield from held.rows
        if not to_fetch:
            return
        consumer = kafka_offsets.make_consumer(to_fetch[0].bootstrap_servers, max_poll_records=5000)
        try:
            yield from read_ranges(consumer, to_fetch)
        finally:
            consumer.close()
    finally:
        release_if_due(split.trim_interval_s)


def read_ranges(consumer, parts: tuple[KafkaRange, ...] | list[KafkaRange]) -> Iterator[tuple]:
    """Yield every record of the ranges (one consumer, fetched together) as rows of KAFKA_SCHEMA."""
    from kafka import TopicPartition

    ranges = {TopicPartition(part.topic, part.partition): (part.start, part.end) for part in parts}
    ledger = next((GapLedger(Path(part.gap_ledger)) for part in parts if part.gap_ledger), None)
    idle_s = max((part.gap_idle_s for part in parts), default=GAP_IDLE_S)
    for record in kafka_offsets.read_ranges(consumer, ranges, idle_s=idle_s, ledger=ledger):
        yield _row(record)


def _row(record) -> tuple:
    """A consumer record as a row of KAFKA_SCHEMA."""
    headers = {k: v.decode("utf-8", "replace") for k, v in (record.headers or []) if v is not None}
    return (
        record.topic,
        record.partition,
        record.offset,
        _timestamp(record.timestamp),
        record.key,
        record.value,
        headers,
    )


def _timestamp(ms: int | None) -> datetime | None:
    """A record's timestamp; None when the producer set one no calendar holds (it would fail the whole batch)."""
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms is not None and ms >= 0 else None
    except (OverflowError, OSError, ValueError):
        return None


class KafkaBatchReader(DataSourceReader):
    def __init__(self, options: _KafkaOptions) -> None:
        self.options = options

    def partitions(self) -> list[KafkaSplit]:
        consumer = kafka_offsets.make_consumer(self.options.bootstrap_servers)
        try:
            start = self.options.resolve(self.options.starting, consumer)
            end = self.options.resolve(self.options.ending, consumer)
        finally:
            consumer.close()
        return self.options.ranges(start, end)

    def read(self, partition: KafkaSplit) -> Iterator[tuple]:  # type: ignore[override]
        yield from read_split(partition)


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    def __init__(self, options: _KafkaOptions) -> None:
        self.options = options
        self._consumer = None
        self._target: Offsets | None = None  # availableNow: the heads when the query started
        self._heads: Offsets | None = None  # the heads the last `latestOffset` read
        self._held: dict[int, dict[int, tuple]] = {}  # rows its fetches returned: partition -> offset -> row

    def prepareForTriggerAvailableNow(self) -> None:
        consumer = self._admin_consumer()
        tps = kafka_offsets.topic_partitions(consumer, self.options.topic)
        self._target = _to_offsets(kafka_offsets.high_watermarks(consumer, tps))

    def _admin_consumer(self):  # runs on the driver only; kept open across micro-batches
        if self._consumer is None:
            self._consumer = kafka_offsets.make_consumer(self.options.bootstrap_servers)
        return self._consumer

    def initialOffset(self) -> Offsets:
        return self.options.resolve(self.options.starting, self._admin_consumer())

    def getDefaultReadLimit(self) -> ReadLimit:
        if self.options.max_per_trigger:
            return ReadMaxRows(self.options.max_per_trigger)
        return ReadAllAvailable()

    def latestOffset(self, start: Offsets, limit: ReadLimit) -> Offsets:
        consumer = self._admin_consumer()
        tps = kafka_offsets.topic_partitions(consumer, self.options.topic)
        near = {int(p): o for p, o in (self._heads or start).items()}
        seen: dict[int, dict] = {}
        heads = self._heads = _to_offsets(kafka_offsets.high_watermarks(consumer, tps, near=near, seen=seen))
        # The fetches that found the heads returned the records below them: kept for `partitions`, rows only.
        self._held = {p: {o: _row(r) for o, r in records.items()} for p, records in seen.items()}
        if self._target is not None:
            # availableNow: nothing that arrived after the query started; batches still respect the limit.
            heads = {p: min(o, self._target.get(p, o)) for p, o in heads.items() if p in self._target}
            heads = {p: max(o, start.get(p, 0)) for p, o in heads.items()}
        # Partitions added since the query started are read from their beginning.
        new = [tp for tp in tps if str(tp.partition) not in start]
        begin = {**_to_offsets(kafka_offsets.beginning_offsets(consumer, new)), **start} if new else dict(start)
        if not isinstance(limit, ReadMaxRows):
            return heads
        return cap_offsets(begin, heads, limit.max_rows)

    def reportLatestOffset(self) -> Offsets | None:
        """The heads `latestOffset` just read (Spark asks right after it, for the query's progress report)."""
        if self._heads is None:
            consumer = self._admin_consumer()
            tps = kafka_offsets.topic_partitions(consumer, self.options.topic)
            self._heads = _to_offsets(kafka_offsets.high_watermarks(consumer, tps))
        return self._heads

    def partitions(self, start: Offsets, end: Offsets) -> list[KafkaSplit]:
        held, self._held = self._held, {}
        release_if_due(self.options.trim_interval_s)  # the planner's process holds the rows it fetched ahead
        return self.options.ranges(start, end, held)

    def read(self, partition: KafkaSplit) -> Iterator[tuple]:  # type: ignore[override]
        yield from read_split(partition)

    def commit(self, end: Offsets) -> None:
        """Spark's checkpoint is the source of truth for progress; nothing to commit on the broker."""

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def cap_offsets(start: Offsets, heads: Offsets, max_rows: int) -> Offsets:
    """Advance each partition towards its head so that at most ``max_rows`` records are admitted in total.

    The budget is shared evenly, and what a short partition leaves is handed to the longer ones, so one hot
    partition cannot starve the others and no budget is wasted.
    """
    end = {p: start.get(p, 0) for p in heads}
    pending = {p: heads[p] - end[p] for p in heads if heads[p] > end[p]}
    budget = max_rows
    while pending and budget > 0:
        share = max(1, budget // len(pending))
        for p in sorted(pending, key=int):
            take = min(share, pending[p], budget)
            end[p] += take
            pending[p] -= take
            budget -= take
            if budget == 0:
                break
        pending = {p: n for p, n in pending.items() if n > 0}
    return end


class KafkaDataSource(DataSource):
    """``spark.read/readStream.format("streamrag_kafka")``: a Kafka topic as rows of KAFKA_SCHEMA."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self) -> str:
        return KAFKA_SCHEMA

    def reader(self, schema: StructType) -> KafkaBatchReader:
        return KafkaBatchReader(_KafkaOptions(self.options))

    def streamReader(self, schema: StructType) -> KafkaStreamReader:
        return KafkaStreamReader(_KafkaOptions(self.options))


def pass_through(batches):
    """A ``mapInArrow`` body that changes nothing: run once, it leaves a Python worker with this module imported."""
    yield from batches
