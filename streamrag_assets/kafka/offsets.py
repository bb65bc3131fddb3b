"""Reading partition offsets from a Kafka-protocol broker.

Tansu 0.6 answers ListOffsets(LATEST) wrongly (``end_offsets()`` returns 1), so the head of each partition is
taken from the high watermark that a fetch response carries instead; this works on any Kafka as well.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, OffsetOutOfRangeError

from streamrag_assets.kafka.client_internals import ConsumerRecord
from streamrag_assets.kafka.gaps import NO_RECORDS, RETENTION, SKIPPED, GapLedger, OffsetGap, declare
from streamrag_assets.settings import get_settings

log = logging.getLogger(__name__)

# How long a look at a partition that went quiet may wait for the broker before it counts as not answering.
PROBE_TIMEOUT_S = 5.0
RETRY_PAUSE_S = 1.0  # between fetches while the broker fails them


def make_consumer(bootstrap_servers: str, **overrides: object) -> KafkaConsumer:
    """A consumer that reads by explicit position, connecting as this process's settings say (SASL/SSL included:
    the callers — Spark's workers among them — know the broker's address, not its credentials)."""
    config: dict[str, object] = {
        **get_settings().kafka_client_config(),
        "bootstrap_servers": bootstrap_servers,
        "enable_auto_commit": False,
        "request_timeout_ms": 10_000,
        "fetch_max_wait_ms": 100,
        # Every position is sought explicitly: a fetch outside the partition's offsets must raise, so that records
        # removed by retention are told from offsets not written yet (the default, 'latest', jumps to the head).
        "auto_offset_reset": "none",
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
        try:
            fetched = consumer.poll(timeout_ms=200, update_offsets=False)
        except OffsetOutOfRangeError as exc:  # ``near`` is past the head or below the beginning: ask from the start
            outside = [tp for tp in exc.args[0] if tp in tps]
            for tp, offset in consumer.beginning_offsets(outside).items():
                consumer.seek(tp, offset)
            continue
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


def topic_heads(bootstrap_servers: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """The offset each partition's next record will get, asked with a consumer of its own that gives up after
    ``timeout_s`` (connecting, the topic's metadata, the fetches)."""
    timeout_ms = int(timeout_s * 1000)
    consumer = make_consumer(bootstrap_servers, request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
    try:
        return high_watermarks(consumer, topic_partitions(consumer, topic, timeout_s=timeout_s), timeout_s=timeout_s)
    finally:
        consumer.close()


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
    consumer: KafkaConsumer,
    tp: TopicPartition,
    start: int,
    end: int,
    idle_s: float = 5.0,
    ledger: GapLedger | None = None,
) -> Iterator[ConsumerRecord]:
    """The records of ``tp`` in ``[start, end)`` (see `read_ranges`)."""
    return read_ranges(consumer, {tp: (start, end)}, idle_s, ledger)


@dataclass
class _Reading:
    """Where the reading of one partition's range stands."""

    end: int
    position: int  # the next offset not handed out yet
    quiet_since: float  # the last record, or the last look at the partition that found nothing to decide


def read_ranges(
    consumer: KafkaConsumer,
    ranges: dict[TopicPartition, tuple[int, int]],
    idle_s: float = 5.0,
    ledger: GapLedger | None = None,
) -> Iterator[ConsumerRecord]:
    """The records of every partition's ``[start, end)``, fetched together (one fetch request serves them all, so
    reading six partitions costs about what reading one does), in offset order within each partition.

    A range ends at ``end``, never earlier: offsets that yield no record are classified (see `gaps`), logged
    with their exact bounds and put in ``ledger``:

    - a fetch steps over offsets without records in the middle (the broker answers past them: transaction markers,
      or a batch Tansu counted in its high watermark but never wrote because it was killed in between);
    - records removed by retention are found from the beginning offset (the consumer does not reset by itself) and
      counted as lost; the reading goes on from the beginning;
    - a range whose end no record arrives for within ``idle_s`` is looked at with a fresh consumer: a broker that
      does not answer (or whose storage does not) is waited for, however long, since skipping records that are only
      slow to come would lose them. Only when the broker answers, holds no record there, and its high watermark
      reaches ``end`` is the rest declared a gap and the range ended.
    """
    pending = {tp: _Reading(end, start, time.monotonic()) for tp, (start, end) in ranges.items() if end > start}
    if not pending:
        return
    assigned = list(pending)
    consumer.assign(assigned)
    for tp, reading in pending.items():
        consumer.seek(tp, reading.position)

    def gap(tp: TopicPartition, start: int, end: int, reason: str, detail: str) -> None:
        declare(OffsetGap(tp.topic, tp.partition, start, end, reason, detail), ledger)

    try:
        while pending:
            fetched = _poll(consumer, pending, gap)
            now = time.monotonic()
            for tp in list(pending):
                reading = pending[tp]
                for record in fetched.get(tp, []):
                    if record.offset >= reading.end:
                        break
                    if record.offset < reading.position:  # fetched again after a seek
                        continue
                    if record.offset > reading.position:
                        _jumped(consumer, tp, reading.position, record.offset, gap)
                    reading.position, reading.quiet_since = record.offset + 1, now
                    yield record
                done = reading.position >= reading.end
                if not done and consumer.position(tp) >= reading.end:
                    # the client stepped over what it does not hand out, such as transaction markers
                    gap(tp, reading.position, reading.end, SKIPPED, "the consumer's position moved past them")
                    done = True
                if not done and now - reading.quiet_since >= idle_s:
                    done = _look_at_silence(consumer, tp, reading, idle_s, gap)
                if done:
                    del pending[tp]
                    consumer.pause(tp)
    finally:
        consumer.resume(*assigned)


def _poll(consumer: KafkaConsumer, pending: dict[TopicPartition, _Reading], gap) -> dict:
    """One fetch; an offset out of range is classified, a failing broker retried (the reading never ends early)."""
    try:
        return consumer.poll(timeout_ms=500)
    except OffsetOutOfRangeError as exc:
        for tp in exc.args[0]:
            if tp in pending:
                _out_of_range(consumer, tp, pending[tp], gap)
        return {}
    except KafkaError as exc:
        if not exc.retriable:
            raise
        log.warning("fetching %s failed (%s); retrying", sorted(tp.partition for tp in pending), exc)
        time.sleep(RETRY_PAUSE_S)
        return {}


def _jumped(consumer: KafkaConsumer, tp: TopicPartition, position: int, following: int, gap) -> None:
    """The broker answered a fetch at ``position`` with a later record: offsets it holds no record for (skipped),
    except those below the partition's beginning, which retention removed before they were read (lost). Kafka
    refuses a fetch below its beginning (`_out_of_range`); Tansu answers it with its first stored batch."""
    beginning = consumer.beginning_offsets([tp])[tp]
    if beginning > position:
        lost_until = min(beginning, following)
        gap(tp, position, lost_until, RETENTION, f"the partition begins at {beginning}")
        position = lost_until
    if following > position:
        gap(tp, position, following, SKIPPED, "the broker returned a later record")


def _out_of_range(consumer: KafkaConsumer, tp: TopicPartition, reading: _Reading, gap) -> None:
    """The broker refused the consumer's offset: below the beginning (records removed by retention: lost), or past
    the head (not written yet: wait for it)."""
    try:
        beginning = consumer.beginning_offsets([tp])[tp]
    except KafkaError as exc:
        log.warning("%s[%d]: offset out of range and no beginning offset (%s); retrying", tp.topic, tp.partition, exc)
        beginning = None
    if beginning is not None and beginning > reading.position:
        _lost_to_retention(consumer, tp, reading, beginning, gap)
        return
    if beginning is not None:
        log.warning("%s[%d]: offset %d is past the broker's head; waiting", tp.topic, tp.partition, reading.position)
    time.sleep(RETRY_PAUSE_S)
    consumer.seek(tp, reading.position)


def _lost_to_retention(consumer: KafkaConsumer, tp: TopicPartition, reading: _Reading, beginning: int, gap) -> None:
    lost_until = min(beginning, reading.end)
    gap(tp, reading.position, lost_until, RETENTION, f"the partition begins at {beginning}")
    reading.position, reading.quiet_since = lost_until, time.monotonic()
    if lost_until < reading.end:
        consumer.seek(tp, lost_until)


def _look_at_silence(consumer: KafkaConsumer, tp: TopicPartition, reading: _Reading, idle_s: float, gap) -> bool:
    """No record for ``idle_s`` in a range: ask the broker afresh what it holds there. True when the range is done
    (the rest declared a gap); False to keep reading."""
    where = f"{tp.topic}[{tp.partition}] offsets {reading.position}..{reading.end - 1}"
    view = probe_partition(consumer.config["bootstrap_servers"], tp, reading.position)
    reading.quiet_since = time.monotonic()  # whatever is decided now, the next look is idle_s away
    verdict = silence_verdict(view, reading.position, reading.end)
    if view is None or verdict == WAIT_FOR_BROKER:
        log.warning("%s: no records for %.0f s and the broker does not answer; waiting for it", where, idle_s)
        return False
    if verdict == RETENTION:
        _lost_to_retention(consumer, tp, reading, view.beginning, gap)
        return reading.position >= reading.end
    if verdict == FETCH_AGAIN:
        log.warning("%s: the broker holds record %s, not received yet; fetching again", where, view.first_record)
        consumer.seek(tp, reading.position)
        return False
    if verdict == WAIT_FOR_HEAD:
        log.warning("%s: the broker's high watermark is %s, below the range's end; waiting", where, view.highwater)
        return False
    following = f", next record at {view.first_record}" if view.first_record is not None else ""
    detail = f"a live broker returned none for {idle_s:.0f} s; high watermark {view.highwater}{following}"
    gap(tp, reading.position, reading.end, NO_RECORDS, detail)
    return True


WAIT_FOR_BROKER = "wait_for_broker"  # it (or its storage) does not answer: nothing can be decided
FETCH_AGAIN = "fetch_again"  # it holds a record of the range that the reading consumer did not get
WAIT_FOR_HEAD = "wait_for_head"  # the range reaches past its high watermark: the offsets are not written yet


def silence_verdict(view: PartitionView | None, position: int, end: int) -> str:
    """What a quiet range ``[position, end)`` is, given what a fresh look at the partition showed: WAIT_FOR_BROKER,
    RETENTION (records below the beginning offset were removed), FETCH_AGAIN, WAIT_FOR_HEAD, or NO_RECORDS (a gap:
    the broker answers, holds no record there, and its high watermark covers the range)."""
    if view is None:
        return WAIT_FOR_BROKER
    if view.beginning > position:
        return RETENTION
    if view.first_record is not None and view.first_record < end:
        return FETCH_AGAIN
    if view.highwater is None or view.highwater < end:
        return WAIT_FOR_HEAD
    return NO_RECORDS


@dataclass(frozen=True)
class PartitionView:
    """What a fresh fetch at an offset was told about a partition."""

    beginning: int
    highwater: int | None  # None: the offset is past the head (a broker that answers out of range)
    first_record: int | None  # the first record at or after the offset, if the fetch returned one


def probe_partition(
    bootstrap_servers: str, tp: TopicPartition, offset: int, timeout_s: float = PROBE_TIMEOUT_S
) -> PartitionView | None:
    """Ask the broker, with a consumer of its own, for ``tp``'s beginning offset and a fetch at ``offset``; None when
    it (or its storage) does not answer within ``timeout_s``. A new consumer, because a reused one keeps the high
    watermark of the last response it had, however old: a killed broker's last mark stays."""
    timeout_ms = int(timeout_s * 1000)
    try:
        probe = make_consumer(bootstrap_servers, request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
    except KafkaError as exc:
        if not exc.retriable:  # e.g. a wrong configuration: not the broker's silence
            raise
        log.debug("no consumer for %s (%s)", bootstrap_servers, exc)
        return None
    try:
        probe.assign([tp])
        beginning = probe.beginning_offsets([tp], timeout_ms=timeout_ms)[tp]
        probe.seek(tp, max(offset, beginning))
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            try:
                records = probe.poll(timeout_ms=200, max_records=1).get(tp, [])
            except OffsetOutOfRangeError:
                return PartitionView(beginning, None, None)
            mark = probe.highwater(tp)  # set by a fetch response only: None while the broker fails the fetch
            if records:
                return PartitionView(beginning, mark, records[0].offset)
            if mark is not None and time.monotonic() - began > 2 * probe.config["fetch_max_wait_ms"] / 1000:
                return PartitionView(beginning, mark, None)
        return None
    except KafkaError as exc:  # e.g. a timeout, or an error code while its storage is down
        log.debug("%s[%d] did not answer (%s)", tp.topic, tp.partition, exc)
        return None
    finally:
        probe.close()
