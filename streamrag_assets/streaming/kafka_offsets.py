"""Reading partition offsets from a Kafka-protocol broker.

Tansu 0.6 answers ListOffsets(LATEST) wrongly (``end_offsets()`` returns 1), so the head of each partition is
taken from the high watermark that a fetch response carries instead; this works on any Kafka as well.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

log = logging.getLogger(__name__)


def make_consumer(bootstrap_servers: str, **overrides: object) -> KafkaConsumer:
    config: dict[str, object] = {
        "bootstrap_servers": bootstrap_servers,
        "enable_auto_commit": False,
        "request_timeout_ms": 10_000,
        "fetch_max_wait_ms": 100,
    }
    config.update(overrides)
    return KafkaConsumer(**config)


def topic_partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() > deadline:
            raise LookupError(f"topic {topic!r} does not exist on the broker")
        time.sleep(0.2)


def high_watermarks(
    consumer: KafkaConsumer,
    tps: list[TopicPartition],
    timeout_s: float = 10.0,
    near: dict[int, int] | None = None,
    seen: dict[int, dict[int, ConsumerRecord]] | None = None,
) -> dict[int, int]:
    """Offset of the next record each partition will receive, taken from fetch responses (Tansu 0.6 answers
    ListOffsets LATEST with the last batch's start, not the head).

    A partition's mark is read only from a fetch that returned one of its records after this call's seek: the
    consumer keeps the high watermark of whatever response it processed last, and a reused consumer's last response
    can be seconds old (measured: heads 2.6 s behind the broker at 10 records/s). Partitions with no record at the
    seek position take the mark of an empty response once a fetch wait has passed. The fetch starts at a
    partition's beginning or, given the heads of an earlier call (``near``), at the last record below them, so the
    broker answers with about one record at once instead of the partition's first batch. The records those fetches
    returned are put in ``seen`` (partition -> offset -> record) when it is given."""
    consumer.assign(tps)
    unknown = [tp for tp in tps if not near or near.get(tp.partition, 0) <= 0]
    beginning = consumer.beginning_offsets(unknown) if unknown else {}
    for tp in tps:
        consumer.seek(tp, beginning[tp] if tp in beginning else (near or {})[tp.partition] - 1)
    began = time.monotonic()
    deadline = began + timeout_s
    marks: dict[int, int] = {}
    while len(marks) < len(tps):
        fetched = consumer.poll(timeout_ms=200, update_offsets=False)
        waited = time.monotonic() - began > 2 * consumer.config["fetch_max_wait_ms"] / 1000
        if seen is not None:
            for tp, records in fetched.items():
                seen.setdefault(tp.partition, {}).update((record.offset, record) for record in records)
        for tp in tps:
            mark = consumer.highwater(tp)
            if tp.partition not in marks and mark is not None and (fetched.get(tp) or waited):
                marks[tp.partition] = mark
        if time.monotonic() > deadline:
            missing = sorted({tp.partition for tp in tps} - set(marks))
            raise TimeoutError(f"no high watermark for partitions {missing} of {tps[0].topic} in {timeout_s:.0f} s")
    return marks


def topic_size(bootstrap_servers: str, topic: str, wait_for_topic_s: float = 10.0) -> int:
    """Records ever written to ``topic`` (the sum of its partitions' heads); 0 while it does not exist."""
    consumer = make_consumer(bootstrap_servers)
    try:
        return sum(high_watermarks(consumer, topic_partitions(consumer, topic, wait_for_topic_s)).values())
    except LookupError:
        return 0
    finally:
        consumer.close()


def beginning_offsets(consumer: KafkaConsumer, tps: list[TopicPartition]) -> dict[int, int]:
    return {tp.partition: offset for tp, offset in consumer.beginning_offsets(tps).items()}


def offsets_for_time(consumer: KafkaConsumer, tps: list[TopicPartition], timestamp_ms: int) -> dict[int, int]:
    """First offset at or after ``timestamp_ms`` per partition (the head when none is that late)."""
    found = consumer.offsets_for_times({tp: timestamp_ms for tp in tps})
    heads = None
    result: dict[int, int] = {}
    for tp in tps:
        hit = found.get(tp)
        if hit is not None:
            result[tp.partition] = hit.offset
        else:
            heads = heads or high_watermarks(consumer, tps)
            result[tp.partition] = heads[tp.partition]
    return result


def read_range(
    consumer: KafkaConsumer, tp: TopicPartition, start: int, end: int, idle_s: float = 5.0
) -> Iterator[ConsumerRecord]:
    """The records of ``tp`` in ``[start, end)`` (see `read_ranges`)."""
    return read_ranges(consumer, {tp: (start, end)}, idle_s)


def read_ranges(
    consumer: KafkaConsumer, ranges: dict[TopicPartition, tuple[int, int]], idle_s: float = 5.0
) -> Iterator[ConsumerRecord]:
    """The records of every partition's ``[start, end)``, fetched together (one fetch request serves them all, so
    reading six partitions costs about what reading one does), in offset order within each partition.

    An offset range may hold gaps: Tansu moves the high watermark before it writes the batch, so a broker killed in
    between leaves offsets that no record will ever fill (the producer writes those events again elsewhere). A fetch
    skips gaps in the middle; one at the end answers nothing. A partition's reading therefore ends at ``end`` or once
    fetches have returned nothing for it for ``idle_s`` (a live broker answers within ``fetch_max_wait_ms``), with a
    warning.
    """
    pending = {tp: (start, end) for tp, (start, end) in ranges.items() if end > start}
    if not pending:
        return
    assigned = list(pending)
    consumer.assign(assigned)
    for tp, (start, _) in pending.items():
        consumer.seek(tp, start)
    position = {tp: start for tp, (start, _) in pending.items()}
    last_record = dict.fromkeys(pending, time.monotonic())

    def finish(tp: TopicPartition) -> None:
        del pending[tp]
        consumer.pause(tp)

    try:
        while pending:
            fetched = consumer.poll(timeout_ms=500)
            now = time.monotonic()
            for tp in list(pending):
                end = pending[tp][1]
                for record in fetched.get(tp, []):
                    if record.offset >= end:
                        break
                    position[tp] = record.offset + 1
                    last_record[tp] = now
                    yield record
                if position[tp] >= end or consumer.position(tp) >= end:
                    # (the client steps over records it does not hand out, such as transaction markers)
                    finish(tp)
                elif now - last_record[tp] >= idle_s:
                    log.warning(
                        "%s[%d] offsets %d..%d hold no records after %.0f s of fetching: a gap (e.g. from a broker "
                        "crash)",
                        tp.topic,
                        tp.partition,
                        position[tp],
                        end - 1,
                        idle_s,
                    )
                    finish(tp)
    finally:
        consumer.resume(*assigned)
