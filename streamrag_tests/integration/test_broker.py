"""The embedded broker keeps every message and every committed offset across a SIGKILL; the object store under it keeps
its own change log only as long as its retention."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

from streamrag_assets.isotime import parse_iso_time
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.kafka import spark_source
from streamrag_assets.runtime.seaweedfs import (
    CHANGE_LOG_DIR,
    filer_entries,
    purge_change_log,
    seaweedfs_ports,
    vacuum,
)
from streamrag_tests.harness import wait_until

pytestmark = pytest.mark.integration

MESSAGES = 10_000


def _consume(consumer: KafkaConsumer, want: int, timeout_s: float = 60) -> list:
    records = []
    deadline = time.monotonic() + timeout_s
    while len(records) < want and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500, max_records=want - len(records)).values():
            records.extend(batch)
    return records


def _new_topic(bootstrap: str, prefix: str, partitions: int) -> str:
    """A topic of its own for one test."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    return topic


def _group_consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Tansu: the 45 s default makes a group join take ~23 s.
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )


def test_group_resumes_exactly_at_its_commits_after_broker_sigkill(stack) -> None:
    bootstrap = stack.settings.bootstrap_servers
    topic, group = _new_topic(bootstrap, "foundation", partitions=6), f"group-{uuid.uuid4().hex[:8]}"

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, retries=5)
    futures = [producer.send(topic, key=f"page-{i % 97}".encode(), value=str(i).encode()) for i in range(MESSAGES)]
    producer.flush()
    acked = [f.get(timeout=30) for f in futures]
    producer.close()
    assert len(acked) == MESSAGES
    assert {m.partition for m in acked} == set(range(6)), "keys spread over all six partitions"

    consumer = _group_consumer(bootstrap, topic, group)
    first = _consume(consumer, MESSAGES // 2)
    assert len(first) == MESSAGES // 2
    committed: dict[TopicPartition, OffsetAndMetadata] = {}
    for record in first:
        committed[TopicPartition(topic, record.partition)] = OffsetAndMetadata(record.offset + 1, "", -1)
    consumer.commit(committed)
    consumer.close(autocommit=False)

    stack.kafka.kill()  # SIGKILL: no chance to flush anything
    stack.start(stack.kafka)

    resumed = _group_consumer(bootstrap, topic, group)
    rest = _consume(resumed, MESSAGES - len(first), timeout_s=90)
    # Nothing more arrives after the rest: no message is delivered twice.
    extra = _consume(resumed, 1, timeout_s=3)
    resumed.close()

    values = [int(r.value) for r in first + rest + extra]
    assert len(values) == MESSAGES, f"expected {MESSAGES} deliveries, got {len(values)}"
    assert sorted(values) == list(range(MESSAGES)), "every message exactly once"
    # Each partition resumed exactly where the group committed.
    for tp, meta in committed.items():
        first_after = (
            min(r.offset for r in rest if r.partition == tp.partition)
            if any(r.partition == tp.partition for r in rest)
            else None
        )
        if first_after is not None:
            assert first_after == meta.offset


def test_a_range_ending_in_offsets_without_records_is_read_to_its_end(stack) -> None:
    """Offsets below the high watermark may hold no record: a transaction's commit marker here (which consumers
    never see), or a batch a crashed Tansu counted but never wrote. Readers must deliver every record and stop,
    not stall until a timeout fails the micro-batch over and over."""
    bootstrap = stack.settings.bootstrap_servers
    topic = _new_topic(bootstrap, "gaps", partitions=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"txn-{topic}")
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(5):
        producer.send(topic, value=str(i).encode())
    producer.commit_transaction()
    producer.close()

    tp = TopicPartition(topic, 0)
    consumer = kafka_offsets.make_consumer(bootstrap)
    try:
        head = kafka_offsets.high_watermarks(consumer, [tp])[0]
        assert head > 5, f"the commit marker takes an offset (head {head})"
        started = time.monotonic()
        rows = list(spark_source.read_ranges(consumer, [spark_source.KafkaRange(bootstrap, topic, 0, 0, head)]))
    finally:
        consumer.close()
    assert [row[5] for row in rows] == [str(i).encode() for i in range(5)]
    assert time.monotonic() - started < spark_source.GAP_IDLE_S + 10


def test_heads_read_by_a_long_lived_consumer_include_the_record_just_acknowledged(stack) -> None:
    """The stream's source and its lag gauge ask one long-lived consumer for the heads every micro-batch. A reused
    consumer keeps the high watermark of the last fetch response it processed, which was seconds old here: every
    event then waited seconds before a micro-batch picked it up."""
    bootstrap = stack.settings.bootstrap_servers
    topic = _new_topic(bootstrap, "heads", partitions=3)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    consumer = kafka_offsets.make_consumer(bootstrap)
    try:
        tps = kafka_offsets.topic_partitions(consumer, topic)
        heads = None
        for i in range(40):
            sent = producer.send(topic, key=f"k{i}".encode(), value=b"v").get(timeout=10)
            heads = kafka_offsets.high_watermarks(consumer, tps, near=heads if i % 2 else None)
            assert heads[sent.partition] > sent.offset, (i, sent, heads)
    finally:
        consumer.close()
        producer.close()


def test_a_micro_batch_carries_the_records_its_heads_fetch_returned(stack) -> None:
    """The stream's source finds the heads by fetching; the records those fetches returned travel to the read task
    with the batch's ranges instead of being fetched a second time (on Tansu with S3 storage, a fetch lists every
    object of the partition). They are exactly what the broker holds for each range: every offset, in order."""
    from dataclasses import replace

    from pyspark.sql.streaming.datasource import ReadAllAvailable

    bootstrap = stack.settings.bootstrap_servers
    topic = _new_topic(bootstrap, "held", partitions=3)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    reader = spark_source.KafkaStreamReader(
        spark_source._KafkaOptions({"bootstrap_servers": bootstrap, "topic": topic})
    )
    consumer = kafka_offsets.make_consumer(bootstrap)
    try:
        start = reader.initialOffset()
        for round_ in range(3):  # the first batch from the beginning, then from the last heads
            for i in range(30):
                producer.send(topic, key=f"k{i}".encode(), value=f"{round_}:{i}".encode())
            producer.flush()
            end = reader.latestOffset(start, ReadAllAvailable())
            assert sum(end.values()) - sum(start.values()) == 30
            splits = reader.partitions(start, end)
            ranges = [r for split in splits for r in split.ranges]
            assert ranges and all(r.rows is not None for r in ranges), "every range of a small batch is carried"
            carried = [row for split in splits for row in spark_source.read_split(split)]
            fetched = list(spark_source.read_ranges(consumer, [replace(r, rows=None) for r in ranges]))
            assert sorted(carried, key=lambda r: (r[1], r[2])) == sorted(fetched, key=lambda r: (r[1], r[2]))
            assert sorted(row[5] for row in carried) == sorted(f"{round_}:{i}".encode() for i in range(30))
            start = end
        # a range whose records the heads' fetches did not all return is fetched by its task
        assert spark_source.prefetched({5: ("row",)}, 5, 7) is None
    finally:
        reader.stop()
        consumer.close()
        producer.close()


def test_the_object_stores_change_log_is_kept_for_its_retention_and_no_longer(stack) -> None:
    """SeaweedFS' filer journals every object the broker writes or removes, a file a minute, and never removes one
    (~1 GB a day at 50 events/s): the purge `up` runs removes the files older than the retention and keeps the rest,
    and the vacuum after it gives their space on disk back."""
    ports = seaweedfs_ports(stack.settings)
    filer, master = f"http://127.0.0.1:{ports['filer']}", f"http://127.0.0.1:{ports['master']}"

    def volumes_bytes() -> int:
        return sum(path.stat().st_size for path in (stack.settings.state_dir / "s3").glob("*.dat"))

    def journal() -> dict[str, tuple[float, int]]:
        return {
            entry["FullPath"]: (parse_iso_time(entry["Mtime"]).timestamp(), int(entry["FileSize"]))
            for day in filer_entries(filer, CHANGE_LOG_DIR)
            for entry in filer_entries(filer, day["FullPath"])
        }

    def two_minutes_journaled() -> bool:  # objects written each time, so that each minute has something to journal
        probe = f"{filer}/buckets/{stack.settings.s3_bucket}/journal-probe/{uuid.uuid4()}"
        httpx.put(probe, content=b"x").raise_for_status()
        return len(journal()) >= 2

    wait_until(two_minutes_journaled, "two files of the filer's change log", 150)
    files = journal()
    newest = max(written for written, _ in files.values())
    older = {path: size for path, (written, size) in files.items() if written < newest}
    now = time.time()
    assert purge_change_log(filer, keep_s=now - newest, now=now) == (len(older), sum(older.values()))
    left = journal()
    assert not set(older) & set(left), "every file older than the retention is gone"
    assert {path for path, (written, _) in files.items() if written >= newest} <= set(left), "the newer are kept"
    assert purge_change_log(filer, keep_s=3600) == (0, 0)
    before = volumes_bytes()

    def vacuumed() -> bool:  # the filer hands the removed files' chunks to the volumes for deletion a moment later
        vacuum(master, garbage_threshold=0.0001)  # `up` asks with SeaweedFS' 30%; these few files are less of a volume
        return volumes_bytes() <= before - sum(older.values())

    wait_until(
        vacuumed,
        "the removed files' space back",
        60,
        lambda: f"{volumes_bytes()} bytes of volumes, {before} before, {sum(older.values())} removed",
    )
