"""The private parts of pyspark and kafka-python the adapters (streaming/spark_internals.py, kafka/client_internals.py)
rely on are still there in the installed versions. No JVM and no broker: an upgrade that moves one fails here."""

from __future__ import annotations

import inspect

from kafka import KafkaProducer
from kafka.producer.sender import Sender
from pyspark import SparkContext
from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.streaming.listener import JStreamingQueryListener
from pyspark.sql.streaming.query import StreamingQueryManager

from streamrag_assets.kafka.client_internals import ConsumerRecord, force_close
from streamrag_assets.streaming.listener import TriggerPhases
from streamrag_assets.streaming.spark_internals import LISTENER_INTERFACE, raw_listener


def test_pyspark_registers_a_listener_through_its_jlistener_property() -> None:
    assert isinstance(inspect.getattr_static(StreamingQueryListener, "_jlistener"), property)
    assert "listener._jlistener" in inspect.getsource(StreamingQueryManager.addListener)
    # pyspark's own listener is wrapped the same way `raw_listener` wraps its handler.
    default = inspect.getsource(inspect.getattr_static(StreamingQueryListener, "_jlistener").fget)
    assert "SparkContext._jvm.PythonStreamingQueryListenerWrapper(" in default
    assert isinstance(inspect.getattr_static(raw_listener(object()), "_jlistener"), property)


def test_pyspark_keeps_its_jvm_view_on_the_spark_context() -> None:
    assert "_jvm" in vars(SparkContext)


def test_the_trigger_listener_implements_the_interface_pyspark_implements() -> None:
    assert JStreamingQueryListener.Java.implements == [LISTENER_INTERFACE]
    callbacks = {name for name in vars(JStreamingQueryListener) if name.startswith("on")}
    assert callbacks == {name for name in vars(TriggerPhases) if name.startswith("on")}


def test_a_kafka_producer_has_a_sender_that_can_be_forced_closed() -> None:
    producer = KafkaProducer(bootstrap_servers="127.0.0.1:9", api_version=(2, 8), max_block_ms=1000)
    try:
        assert isinstance(producer._sender, Sender)
        assert callable(producer._sender.force_close)
        force_close(producer)
        producer._sender.join(timeout=5)
        assert not producer._sender.is_alive()
    finally:
        producer.close(timeout=0)


def test_kafka_consumer_records_have_the_fields_the_project_reads() -> None:
    assert {"topic", "partition", "offset", "timestamp", "key", "value", "headers"} <= set(ConsumerRecord._fields)
