"""Kafka producer for raw events: the value is the event text exactly as received, keyed by ``wiki:title``.

acks=all with idempotence (ordered retries within a partition), batching and compression. The client's own retries
cover short outages; whatever still fails is sent again by us, except errors about the record itself (too large,
corrupt), which go to a dead-letter file with the reason — counted and logged, never silently dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.errors import KafkaError, KafkaTimeoutError

from streamrag_assets.ingest.events import event_key, event_time, try_parse
from streamrag_assets.ingest.position import AckTracker, Position
from streamrag_assets.ingest.sse_client import SourceEvent
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.kafka.admin import ensure_topic
from streamrag_assets.kafka.client_internals import force_close
from streamrag_assets.metrics import (
    INGEST_EVENTS_FAILED,
    INGEST_EVENTS_PRODUCED,
    INGEST_PRODUCE_LATENCY,
    INGEST_PRODUCER_RESETS,
    INGEST_SOURCE_DELAY,
    INGEST_UNCONFIRMED_ACKS,
)
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_MS = 30_000
STALL_S = DELIVERY_TIMEOUT_MS / 1000 + 15
FAILING_S = 10.0  # sends answered with errors and none acknowledged for this long: a fresh client is tried
VERIFY_LOOKBACK = 5_000

# The errors that are about the record itself: sending it again cannot help, so it goes to the dead-letter file.
RECORD_ERRORS = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.CorruptRecordError,
    kafka_errors.InvalidRecordError,
)


class EventProducer:
    def __init__(self, settings: Settings, source: str, dead_letter_path: Path) -> None:
        self.settings = settings
        self.source = source
        self.topic = settings.topic
        self.dead_letter_path = dead_letter_path
        ensure_topic(settings)
        self._producer = self._new_producer()
        self._last_progress = time.monotonic()
        # Bound once: a labels() lookup per event costs more than the increment.
        self._produced = INGEST_EVENTS_PRODUCED.labels(source)
        self._produce_latency = INGEST_PRODUCE_LATENCY.labels(source)
        self._source_delay = INGEST_SOURCE_DELAY.labels(source)
        self._retry: deque[tuple[int, SourceEvent]] = deque()
        self._failure_logged_at, self._failures_unlogged = -1e9, 0
        self._failed_since_progress = False  # a delivery failed since the last acknowledgement
        # Acknowledged without an offset (see `_on_ack`): (when, seq, event, partition), checked against the topic.
        self._unconfirmed: list[tuple[float, int, SourceEvent, int]] = []
        self._unconfirmed_lock = threading.Lock()
        self._dead_letter_lock = threading.Lock()
        # Events between `tracker.add` and their callbacks' registration (see `send`).
        self._handing: set[int] = set()
        self.tracker = AckTracker()

    def _new_producer(self) -> KafkaProducer:
        settings = self.settings
        return KafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.ingest_linger_ms,
            batch_size=256 * 1024,
            compression_type=None if settings.ingest_compression == "none" else settings.ingest_compression,
            max_request_size=8 * 1024 * 1024,
            # The client's own in-order retries get this long; a batch still unacknowledged then (e.g. its
            # sequence numbers were lost with a restarted broker) fails and is sent again by `resend_failed`.
            delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
            max_block_ms=60_000,
            request_timeout_ms=10_000,
            reconnect_backoff_max_ms=2_000,
            **settings.kafka_client_config(),
        )

    # --- start-up -------------------------------------------------------------------------------------------
    def resume(self, position: Position | None) -> dict[str, tuple[int, int]]:
        """Start tracking from ``position``; return the events already in the topic after it (id -> where)."""
        consumer = kafka_offsets.make_consumer(self.settings.bootstrap_servers)
        try:
            tps = kafka_offsets.topic_partitions(consumer, self.topic)
            heads = kafka_offsets.high_watermarks(consumer, tps)
            existing: dict[str, tuple[int, int]] = {}
            if position is not None:
                for tp in tps:
                    start = position.scan_from.get(tp.partition, 0)
                    if start < heads[tp.partition]:
                        existing |= _ids_in_range(consumer, tp, start, heads[tp.partition])
        finally:
            consumer.close()
        self.tracker = AckTracker(heads, position.last_event_id if position else None)
        if existing:
            log.info(
                "%d event(s) after the stored position are already in the topic; they will be skipped", len(existing)
            )
        return existing

    # --- sending --------------------------------------------------------------------------------------------
    def mark_existing(self, event: SourceEvent, partition: int, offset: int) -> None:
        self.tracker.ack(self.tracker.add(event.id), partition, offset)

    def send(self, event: SourceEvent, seq: int | None = None) -> bool:
        """Hand the event to the client; False when it could not even be queued (it is queued for a retry)."""
        parsed = try_parse(event.data)
        fresh = seq is None
        if seq is None:
            seq = self.tracker.add(event.id)
        # SIGTERM raises in the main thread wherever it is: interrupted from here on, the event may be in the client
        # with nobody to hear its acknowledgement. It then stays in `_handing`, which `flush` does not wait for; it
        # is never acknowledged in the tracker, so the saved position stops before it and a restart finds it in the
        # topic (or sends it again).
        self._handing.add(seq)
        if fresh:
            dt = event_time(parsed)
            if dt is not None:
                self._source_delay.observe(max(0.0, (datetime.now(UTC) - dt).total_seconds()))
        headers = [("ingested_at", str(int(time.time() * 1000)).encode())]
        if event.id is not None:
            headers.insert(0, ("sse_id", event.id.encode()))
        started = time.perf_counter()
        try:
            future = self._producer.send(
                self.topic, key=event_key(parsed), value=event.data.encode("utf-8"), headers=headers
            )
        except KafkaTimeoutError as exc:
            self._handing.discard(seq)
            self._on_error(seq, event, exc)
            return False
        future.add_callback(self._on_ack, seq, event, started)
        future.add_errback(lambda exc: self._on_error(seq, event, exc))
        self._handing.discard(seq)
        return True

    def _on_ack(self, seq: int, event: SourceEvent, started: float, metadata) -> None:
        self._last_progress, self._failed_since_progress = time.monotonic(), False
        if metadata.offset < 0:
            # DUPLICATE_SEQUENCE_NUMBER, which kafka-python reports as success: the broker says it stored this batch
            # before. Tansu records a producer's sequence before it writes the batch, so a broker killed in between
            # says so of a batch it never wrote. The topic decides, not the claim: see `verify_unconfirmed`.
            log.warning("broker reported event %s as already written, without an offset; checking the topic", event.id)
            with self._unconfirmed_lock:
                self._unconfirmed.append((time.monotonic(), seq, event, metadata.partition))
            return
        self._produce_latency.observe(time.perf_counter() - started)
        self._produced.inc()
        self.tracker.ack(seq, metadata.partition, metadata.offset)

    def _on_error(self, seq: int, event: SourceEvent, exc: BaseException) -> None:
        reason = type(exc).__name__
        INGEST_EVENTS_FAILED.labels(self.source, reason).inc()
        if not isinstance(exc, RECORD_ERRORS):
            # Not progress (see `replace_if_stalled`): a client whose every send fails keeps failing.
            # Broker or producer state, not the record: timeouts, a restarted broker that forgot the producer's
            # sequence numbers (kafka-python then resets the producer id and fails the in-flight batches), ...
            self._failed_since_progress = True
            self._warn_failure(event, reason)
            self._retry.append((seq, event))
            return
        self._last_progress = time.monotonic()
        log.error("event %s cannot be delivered (%s); written to %s", event.id, exc, self.dead_letter_path)
        with self._dead_letter_lock:
            self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.dead_letter_path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"sse_id": event.id, "reason": repr(exc), "value": event.data}) + "\n")
        self.tracker.ack(seq, None, None)

    def _warn_failure(self, event: SourceEvent, reason: str, every_s: float = 5.0) -> None:
        """One warning per ``every_s`` while deliveries fail (a broker down fails thousands of events a second),
        with how many failed since the last one; the counter metric has each."""
        self._failures_unlogged += 1
        now = time.monotonic()
        if now - self._failure_logged_at < every_s:
            return
        log.warning(
            "delivery of event %s failed (%s); %d failed deliveries since the last warning; retrying",
            event.id,
            reason,
            self._failures_unlogged,
        )
        self._failure_logged_at, self._failures_unlogged = now, 0

    def resend_failed(self) -> int:
        """Send again what failed; returns how many were handed to the client."""
        count = 0
        for _ in range(len(self._retry)):  # what fails again now waits for the next round
            seq, event = self._retry.popleft()
            if not self.send(event, seq=seq):
                break  # the broker is unreachable (the client waited max_block_ms): next round
            count += 1
        return count

    def verify_unconfirmed(self, min_age_s: float = 2.0) -> tuple[int, int]:
        """Look for the events acknowledged without an offset in their partitions; acknowledge those found and
        send the others again. Returns (found, re-sent).

        ``min_age_s`` lets a write that is still being completed by the broker become visible first. The search
        starts ``VERIFY_LOOKBACK`` records before the resume position's scan: an event sits after the acknowledged
        events sent before it, except those re-sent later than it, which a broker restart leaves only a few of.
        Not finding an event that is there costs a duplicate (Silver drops it); the reverse would cost the event.
        """
        now = time.monotonic()
        with self._unconfirmed_lock:
            due = [entry for entry in self._unconfirmed if now - entry[0] >= min_age_s]
            self._unconfirmed = [entry for entry in self._unconfirmed if now - entry[0] < min_age_s]
        if not due:
            return 0, 0
        found = resent = 0
        scan_from = self.tracker.snapshot().scan_from
        consumer = kafka_offsets.make_consumer(self.settings.bootstrap_servers)
        try:
            for partition in sorted({entry[3] for entry in due}):
                tp = TopicPartition(self.topic, partition)
                head = kafka_offsets.high_watermarks(consumer, [tp])[partition]
                first = kafka_offsets.beginning_offsets(consumer, [tp])[partition]
                start = max(first, scan_from.get(partition, 0) - VERIFY_LOOKBACK)
                in_topic = _ids_in_range(consumer, tp, start, head)
                for _when, seq, event, _partition in (entry for entry in due if entry[3] == partition):
                    where = in_topic.get(event.id) if event.id is not None else None
                    if where is not None:
                        self.tracker.ack(seq, *where)
                        found += 1
                    else:
                        self._retry.append((seq, event))
                        resent += 1
        except (KafkaError, TimeoutError) as exc:
            log.warning("could not check the topic for %d event(s) (%s); trying again", len(due), exc)
            with self._unconfirmed_lock:
                self._unconfirmed.extend(due)
            return found, resent
        finally:
            consumer.close()
        INGEST_UNCONFIRMED_ACKS.labels(self.source, "found").inc(found)
        INGEST_UNCONFIRMED_ACKS.labels(self.source, "resent").inc(resent)
        log.warning(
            "of %d event(s) acknowledged without an offset, %d are in the topic, %d sent again", len(due), found, resent
        )
        return found, resent

    def replace_if_stalled(self, stall_s: float = STALL_S, failing_s: float = FAILING_S) -> bool:
        """Recreate the Kafka client when events wait (in flight, or failed and queued again) but nothing was
        acknowledged for ``stall_s`` (longer than the delivery timeout, so the client had its chance to fail them
        itself), or for ``failing_s`` while the broker answers each send with an error.

        kafka-python 3.0 can leave batches in flight forever after a broker restart; discarding the client fails
        their futures, and our error handler queues them to be sent again on the new client. And an idempotent
        client whose batches failed while the broker's storage was down can be refused every send after it is back
        (Tansu answers UnknownError to that producer id, while a new client is served): failures do not count as
        progress, so that client is replaced too.
        """
        now = time.monotonic()
        if self.tracker.outstanding - len(self._unconfirmed) <= 0:
            self._last_progress = now
            return False
        if now - self._last_progress < (failing_s if self._failed_since_progress else stall_s):
            return False
        log.warning(
            "no delivery progress for %.0f s with %d event(s) in flight; replacing the Kafka client",
            now - self._last_progress,
            self.tracker.outstanding - len(self._unconfirmed),
        )
        INGEST_PRODUCER_RESETS.inc()
        stuck, self._producer = self._producer, self._new_producer()
        self._last_progress, self._failed_since_progress = now, False
        _discard(stuck)
        return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything sent is acknowledged (re-sending failures); False if time ran out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.verify_unconfirmed()
            self.resend_failed()
            try:
                self._producer.flush(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            except KafkaTimeoutError:
                continue
            if not self._retry and self.tracker.awaited(besides=self._handing) == 0:
                return True
            time.sleep(0.05)
        return False

    def close(self, wait: bool = True) -> None:
        """Close the client (``wait``: up to 10 s for what it still sends); what it holds is not lost, the saved
        position does not cover it."""
        if not wait:
            _discard(self._producer)
            return
        try:
            self._producer.close(timeout=10)
        except KafkaError as exc:
            log.warning("the Kafka client did not close cleanly (%s); discarding it", exc)
            _discard(self._producer)


def _discard(producer: KafkaProducer) -> None:
    """Close without waiting: pending batches fail (calling their errbacks) instead of being sent."""
    force_close(producer)  # kafka-python's close(0) alone first flushes, which raises when stuck
    with contextlib.suppress(KafkaError):
        producer.close(timeout=0)


def _ids_in_range(consumer, tp: TopicPartition, start: int, end: int) -> dict[str, tuple[int, int]]:
    """sse_id -> (partition, offset) for the records of ``tp`` in ``[start, end)``."""
    found: dict[str, tuple[int, int]] = {}
    for record in kafka_offsets.read_range(consumer, tp, start, end):
        sse_id = dict(record.headers or []).get("sse_id")
        if sse_id is not None:
            found[sse_id.decode()] = (tp.partition, record.offset)
    return found
