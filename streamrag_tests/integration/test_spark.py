"""Spark starts with the venv's interpreter and reads the broker through our Python data source."""

from __future__ import annotations

import sys
import uuid

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
