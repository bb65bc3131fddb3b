"""No silent gaps from the topic to Bronze, on the real broker: offsets without records are classified and kept in
the gap ledger; a broker that is down, or a range past the head, is waited for and nothing is skipped; the asset
check tells explained holes in Bronze's offsets from unexplained ones.

Tansu 0.6 does not implement DeleteRecords (it drops the connection) and removes nothing by retention itself: the
embedded broker's retention is the stream's (`kafka.retention`), tested here against the real broker and object
store, with what a reader then finds below the new beginning."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from streamrag_assets.defs.medallion.checks import bronze_offsets_result
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.kafka.gaps import NO_RECORDS, RETENTION, SKIPPED, GapLedger, OffsetGap
from streamrag_assets.kafka.retention import BrokerRetention
from streamrag_assets.metrics import BROKER_BATCHES_REMOVED
from streamrag_assets.operations.reprocess import OffsetsRemoved, resolve_start
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.transforms import ARROW_SCHEMAS

pytestmark = pytest.mark.integration


def _new_topic(bootstrap: str, prefix: str) -> str:
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    return topic


def _transactions(bootstrap: str, topic: str, count: int, size: int) -> None:
    """``count`` committed transactions of ``size`` records each: each commit marker takes an offset of its own."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"txn-{topic}")
    producer.init_transactions()
    for t in range(count):
        producer.begin_transaction()
        for i in range(size):
            producer.send(topic, value=f"{t}:{i}".encode())
        producer.commit_transaction()
    producer.close()


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    for value in values:
        producer.send(topic, value=value)
    producer.flush()
    producer.close()


def test_offsets_the_broker_answers_past_are_recorded_as_skipped(stack, tmp_path: Path) -> None:
    """Commit markers in the middle of a range (a later record comes) and at its end (the consumer's position moves
    past it) are gaps of no record: the read delivers every record, ends at once, and the ledger holds both."""
    bootstrap = stack.settings.bootstrap_servers
    topic = _new_topic(bootstrap, "skipped")
    _transactions(bootstrap, topic, count=2, size=5)
    tp = TopicPartition(topic, 0)
    ledger = GapLedger(tmp_path)
    consumer = kafka_offsets.make_consumer(bootstrap)
    try:
        head = kafka_offsets.high_watermarks(consumer, [tp])[0]
        assert head == 12, "5 records + a marker, twice"
        started = time.monotonic()
        records = list(kafka_offsets.read_range(consumer, tp, 0, head, idle_s=30, ledger=ledger))
    finally:
        consumer.close()
    assert time.monotonic() - started < 10, "no idle wait: the broker answered past both markers"
    assert [r.offset for r in records] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert [(g.start, g.end, g.reason) for g in ledger.gaps(topic)] == [(5, 6, SKIPPED), (11, 12, SKIPPED)]
    assert ledger.totals()[SKIPPED] == (2, 2)


def test_retention_removes_only_batches_bronze_holds_and_readers_count_what_they_missed(stack, tmp_path: Path) -> None:
    """Twenty batches of one record; Bronze holds offsets below 12. Nothing goes while the batches are younger than
    the retention; once older, exactly the batches below 12 go (never one holding an offset Bronze lacks). The broker
    then begins at 12, keeps its head (a new record takes offset 20, none is reused), and a read from offset 5 gets
    every record from 12 on and declares 5..11 lost to retention, not skipped; a reprocess from 5 is refused."""
    bootstrap = stack.settings.bootstrap_servers
    topic = _new_topic(bootstrap, "retention")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    for i in range(20):  # one stored object per record
        producer.send(topic, value=f"r{i}".encode()).get(timeout=10)
    tp = TopicPartition(topic, 0)
    retention = BrokerRetention(
        stack.settings.model_copy(update={"topic": topic, "broker_retention_s": 600}), floor=lambda: {0: 12}
    )
    removed_before = BROKER_BATCHES_REMOVED._value.get()
    assert retention.sweep() == 0, "younger than the retention: kept"
    assert retention.sweep(now=time.time() + 900) == 12
    assert retention.sweep(now=time.time() + 900) == 0, "what Bronze lacks stays, however old"
    assert BROKER_BATCHES_REMOVED._value.get() - removed_before == 12
    producer.send(topic, value=b"r20").get(timeout=10)
    producer.close()
    ledger = GapLedger(tmp_path)
    consumer = kafka_offsets.make_consumer(bootstrap)
    try:
        assert kafka_offsets.beginning_offsets(consumer, [tp]) == {0: 12}
        assert kafka_offsets.high_watermarks(consumer, [tp])[0] == 21, "the head is kept: no offset is reused"
        records = list(kafka_offsets.read_range(consumer, tp, 5, 21, idle_s=30, ledger=ledger))
    finally:
        consumer.close()
    assert [r.value for r in records] == [f"r{i}".encode() for i in range(12, 21)]
    assert [(g.start, g.end, g.reason) for g in ledger.gaps(topic)] == [(5, 12, RETENTION)]
    # A reprocess deletes the rows from its start offsets first: one below the beginning would lose them for good.
    on_topic = stack.settings.model_copy(update={"topic": topic})
    with pytest.raises(OffsetsRemoved, match="partition 0 begins at 12.*replay rebuild"):
        resolve_start(on_topic, {0: 5}, None)
    assert resolve_start(on_topic, {0: 12}, None) == {0: 12}
    assert resolve_start(on_topic, None, None) == {0: 12}


def test_a_read_waits_for_a_killed_broker_and_for_offsets_not_written_yet(stack, tmp_path: Path) -> None:
    """The reader asks for offsets past the head, then the broker is killed while it waits. Neither is a gap: the
    read resumes after the restart and ends with every record once they are written, and declares nothing."""
    bootstrap = stack.settings.bootstrap_servers
    topic = _new_topic(bootstrap, "waits")
    _produce(bootstrap, topic, [f"a{i}".encode() for i in range(50)])
    tp = TopicPartition(topic, 0)
    ledger = GapLedger(tmp_path)
    consumer = kafka_offsets.make_consumer(bootstrap)
    records: list = []
    failure: list[BaseException] = []

    def read() -> None:
        try:
            records.extend(kafka_offsets.read_range(consumer, tp, 0, 60, idle_s=1.0, ledger=ledger))
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    try:
        reader.start()
        deadline = time.monotonic() + 20
        while len(records) < 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.5)  # past idle_s: the reader has looked and found the range past the head
        assert reader.is_alive() and not ledger.gaps(topic), "offsets past the head are waited for"
        stack.kafka.kill()
        time.sleep(4)  # the reader looks again and finds no broker
        assert reader.is_alive() and not ledger.gaps(topic), "a killed broker is waited for"
        stack.start(stack.kafka)
        _produce(bootstrap, topic, [f"b{i}".encode() for i in range(10)])
        reader.join(timeout=60)
    finally:
        if not stack.kafka.running():  # the other tests share this broker
            stack.start(stack.kafka)
        consumer.close()
    assert not reader.is_alive(), "the read ends once the range is written"
    assert not failure, failure
    assert [r.value for r in records] == [f"a{i}".encode() for i in range(50)] + [f"b{i}".encode() for i in range(10)]
    assert not ledger.gaps(topic), "nothing declared"


def test_a_quiet_range_is_a_gap_only_when_the_broker_answers_past_it() -> None:
    """The verdict on a quiet range needs a fresh look at a live broker (see the unit tests for every branch)."""
    view = kafka_offsets.PartitionView(beginning=0, highwater=110, first_record=None)
    assert kafka_offsets.silence_verdict(view, 100, 110) == NO_RECORDS
    assert kafka_offsets.silence_verdict(None, 100, 110) == kafka_offsets.WAIT_FOR_BROKER


def _bronze(topic: str, offsets: list[int]) -> pa.Table:
    now = datetime.now(UTC)
    rows = [
        {"topic": topic, "partition": 0, "offset": o, "kafka_timestamp": now, "value": "{}", "batch_id": 0}
        for o in offsets
    ]
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMAS["bronze"])


def test_the_check_passes_explained_holes_and_fails_unexplained_ones(tmp_path: Path) -> None:
    """Bronze written by the project's own writer, with holes in its offsets: a hole the ledger explains passes,
    one it does not fails, listed with its exact offsets."""
    topic = "checked"
    tables = DeltaTables(tmp_path / "delta")
    tables.write_once("bronze", _bronze(topic, [0, 1, 2, 3, 4, 6, 7]), "test", 0)
    tables.write_once("bronze", _bronze(topic, [8, 9, 12, 13]), "test", 1)
    tables.write_once("bronze", _bronze("another-topic", [100]), "test", 2)
    bronze = tables.read("bronze", columns=["topic", "partition", "offset"])
    ledger = GapLedger(tmp_path / "offset_gaps")
    ledger.record(OffsetGap(topic, 0, 5, 6, SKIPPED))

    failed = bronze_offsets_result(bronze, topic, {0: 0}, ledger)
    assert not failed.passed
    assert failed.metadata["unexplained_sample"].value == ["0: 10..11"]
    assert failed.metadata["unexplained_offsets"].value == 2

    assert ledger.record(OffsetGap(topic, 0, 10, 12, NO_RECORDS))
    assert not ledger.record(OffsetGap(topic, 0, 10, 12, NO_RECORDS)), "a gap declared again is kept once"
    passed = bronze_offsets_result(bronze, topic, {0: 0}, ledger)
    assert passed.passed, passed.metadata
    assert passed.metadata["explained_offsets_by_reason"].value == {SKIPPED: 1, NO_RECORDS: 2}

    # Offsets below Bronze's first one, from the partition's beginning on, are a hole too.
    late = bronze_offsets_result(bronze.filter(pc.greater(bronze["offset"], 1)), topic, {0: 0}, ledger)
    assert not late.passed and late.metadata["unexplained_sample"].value == ["0: 0..1"]
