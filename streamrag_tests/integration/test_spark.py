"""Spark starts with the venv's interpreter and reads the broker through our Python data source."""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

pytestmark = pytest.mark.integration


def test_spark_reads_topic_through_python_data_source(stack) -> None:
    from streamrag_assets.streaming.spark import get_spark

    bootstrap = stack.settings.bootstrap_servers
    topic = f"spark-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(500):
        producer.send(topic, key=f"k{i % 11}".encode(), value=f"v{i}".encode(), headers=[("sse_id", b"x")])
    producer.flush()
    producer.close()

    spark = get_spark(stack.settings)
    workers = spark.sparkContext.parallelize([0, 1], 2).map(lambda _: __import__("sys").executable).collect()
    assert set(workers) == {sys.executable}

    rows = spark.read.format("streamrag_kafka").option("bootstrap_servers", bootstrap).option("topic", topic).load()
    assert rows.count() == 500
    assert rows.select("partition", "offset").distinct().count() == 500
    values = {r.value.decode() for r in rows.select("value").collect()}
    assert values == {f"v{i}" for i in range(500)}
    assert rows.first().headers == {"sse_id": "x"}

    # The Python workers that read the topic (forked by the JVM's daemons and kept for reuse) never loaded pandas:
    # pyarrow would import it into each (~31 MiB) though nothing there calls it.
    import psutil

    jvm_process = psutil.Process(spark.sparkContext._gateway.proc.pid)  # type: ignore[union-attr]
    workers = [p for p in jvm_process.children(recursive=True) if "python" in p.name()]
    assert workers, "the JVM has Python workers"
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            libraries = {m.path for m in worker.memory_maps()}
            assert not any("/pandas/" in path for path in libraries), (worker.cmdline(), "has pandas loaded")


def test_the_driver_refines_a_micro_batch_exactly_as_spark_does(stack) -> None:
    """The continuous query refines its small micro-batches on the driver; bounded runs refine in Spark. The same
    topic records must come out the same either way: verdicts, quarantine reasons, Silver fields, Gold documents."""
    from streamrag_assets.ingest.sources import synthetic_event
    from streamrag_assets.streaming.spark import get_spark
    from streamrag_assets.streaming.transforms import (
        REFINED_ARROW,
        bronze_rows,
        kafka_columns,
        refine_arrow,
        refine_dataframe,
        with_batch_columns,
    )
    from streamrag_tests.hostile import storage_poison

    bootstrap = stack.settings.bootstrap_servers
    topic = f"refine-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for seq in range(300):
        event = synthetic_event(seq, seed=5, malformed_fraction=0.15, canary_fraction=0.05)
        producer.send(topic, value=event.encode(), headers=[("sse_id", str(seq).encode())])
    # Hostile records, each of which once failed a whole batch in one path or the other: values past the storage
    # types, bytes that are not UTF-8, an ingest header that is not a time, a record time past year 9999.
    hostile = [value.encode() for value in storage_poison()] + [b'{"meta": "\xff\xfe"}']
    for value in hostile:
        producer.send(topic, value=value, headers=[("ingested_at", b"soon")])
    producer.send(topic, value=synthetic_event(300, seed=5).encode(), timestamp_ms=2**62)
    producer.flush()
    producer.close()

    spark = get_spark(stack.settings)
    records = spark.read.format("streamrag_kafka").option("bootstrap_servers", bootstrap).option("topic", topic).load()
    by_spark = refine_dataframe(bronze_rows(records, 7)).toArrow().cast(REFINED_ARROW)
    on_driver = refine_arrow(with_batch_columns(kafka_columns(records).toArrow(), 7, datetime.now(UTC)))

    def comparable(table):  # written_at is each read's own clock
        return table.drop_columns(["written_at"]).sort_by([("partition", "ascending"), ("offset", "ascending")])

    assert len(on_driver) == 300 + len(hostile) + 1
    assert on_driver.schema == REFINED_ARROW
    assert comparable(on_driver).equals(comparable(by_spark))
    verdicts = on_driver["reject_reason"].null_count, sum(on_driver["canary"].to_pylist())
    assert verdicts[0] < 300 and verdicts[1] > 0, "the sample holds rejected and canary events"
    rows = comparable(on_driver).to_pylist()
    refused = [row for row in rows if "storage-poison" in row["value"] or row["value"].startswith('{"meta": "')]
    assert len(refused) == len(hostile) and all(row["reject_reason"] for row in refused)
    assert all(row["ingested_at"] is not None for row in refused), "an unreadable header falls back to the record time"
    beyond_calendar = [row for row in rows if row["kafka_timestamp"] is None]
    assert len(beyond_calendar) == 1 and beyond_calendar[0]["reject_reason"] is None, "read as null; the event goes on"


def test_the_jvm_has_the_listener_bridge_the_trigger_listener_uses(stack) -> None:
    """streaming/spark_internals.py registers the trigger listener through Spark's Python listener wrapper and
    interface (the unit test checks pyspark's side): both classes exist, and a listener registers and unregisters."""
    from streamrag_assets.streaming.listener import TriggerPhases
    from streamrag_assets.streaming.spark import get_spark
    from streamrag_assets.streaming.spark_internals import LISTENER_INTERFACE, jvm, raw_listener

    spark = get_spark(stack.settings)
    for name in ("org.apache.spark.sql.streaming.PythonStreamingQueryListenerWrapper", LISTENER_INTERFACE):
        jvm(spark).java.lang.Class.forName(name)  # raises if Spark no longer has it
    listener = raw_listener(TriggerPhases(slow_s=5.0))
    spark.streams.addListener(listener)
    spark.streams.removeListener(listener)


def test_the_python_planner_workers_a_started_query_no_longer_needs_can_be_stopped(stack) -> None:
    """Spark keeps a daemon process per kind of Python worker for the JVM's life; the three that find, create and plan
    a Python data source are stopped (what the stream does after its first micro-batch), and a later query that
    needs them gets them again."""
    import psutil

    from streamrag_assets.streaming.spark import PYTHON_DAEMON_MODULE, get_spark
    from streamrag_assets.streaming.spark_internals import PLANNER_MODULES, stop_planner_workers

    spark = get_spark(stack.settings)
    jvm_process = psutil.Process(spark.sparkContext._gateway.proc.pid)  # type: ignore[union-attr]

    def daemons() -> set[str]:
        """The worker kinds of the JVM's Python daemons (``python -m <daemon module> <worker module>``: pyspark's for
        the planners, ours for the tasks' workers)."""
        kinds = set()
        for child in jvm_process.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                args = child.cmdline()
                if "pyspark.daemon" in args or PYTHON_DAEMON_MODULE in args:
                    kinds.add(args[-1])
        return kinds

    def read() -> int:
        topic = f"planners-{uuid.uuid4().hex[:8]}"
        producer = KafkaProducer(bootstrap_servers=stack.settings.bootstrap_servers, acks="all")
        for i in range(20):
            producer.send(topic, value=f"v{i}".encode())
        producer.flush()
        producer.close()
        source = spark.read.format("streamrag_kafka").option("topic", topic)
        return source.option("bootstrap_servers", stack.settings.bootstrap_servers).load().count()

    assert read() == 20
    assert daemons() >= PLANNER_MODULES, "a Python data source's query starts the three planner daemons"
    assert stop_planner_workers(spark) == 3
    gone = time.monotonic() + 10  # stopping a daemon destroys its process; its exit is not waited for
    while PLANNER_MODULES & daemons() and time.monotonic() < gone:
        time.sleep(0.2)
    assert not PLANNER_MODULES & daemons(), "their daemon processes are gone"
    assert "pyspark.worker" in daemons(), "the worker the queries' tasks run in stays"
    assert read() == 20, "a later query gets planner workers again"
    assert {"pyspark.sql.worker.create_data_source", "pyspark.sql.worker.plan_data_source_read"} <= daemons()
