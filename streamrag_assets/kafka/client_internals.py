"""The kafka-python internals this project relies on, in one place. kafka-python does not promise them across
releases, so each is checked against the installed kafka-python by streamrag_tests/unit/test_library_internals.py:
an upgrade that moves one fails there, not in a stuck producer."""

from __future__ import annotations

from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord  # the records a consumer hands out; the package does not export it

__all__ = ["ConsumerRecord", "force_close"]


def force_close(producer: KafkaProducer) -> None:
    """Fail the producer's pending batches now (calling their errbacks) instead of sending them. kafka-python's
    ``close(0)`` first flushes, which raises when the client is stuck; its sender thread (``_sender``) can stop
    without flushing."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
