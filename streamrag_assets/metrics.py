"""Every Prometheus metric of the platform, named in one place (prefix ``streamrag_``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Latency buckets from 5 ms to 2 min: produce acks are milliseconds, source delay can be minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)

# --- ingest (SSE -> Kafka) ----------------------------------------------------------------------------------------
INGEST_EVENTS_RECEIVED = Counter("streamrag_ingest_events_received", "Events read from the SSE source.", ["source"])
INGEST_EVENTS_PRODUCED = Counter("streamrag_ingest_events_produced", "Events acknowledged by the broker.", ["source"])
INGEST_EVENTS_FAILED = Counter(
    "streamrag_ingest_events_failed",
    "Produce attempts that failed (each is retried or dead-lettered).",
    ["source", "reason"],
)
INGEST_EVENTS_SKIPPED_DUPLICATE = Counter(
    "streamrag_ingest_events_skipped_duplicate",
    "Events the source re-sent after a restart that were already in the topic.",
    ["source"],
)
INGEST_RECONNECTS = Counter("streamrag_ingest_reconnects", "SSE reconnects by cause.", ["source", "reason"])
INGEST_SOURCE_DELAY = Histogram(
    "streamrag_ingest_source_delay_seconds",
    "now - meta.dt when an event is received.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
INGEST_PRODUCE_LATENCY = Histogram(
    "streamrag_ingest_produce_latency_seconds",
    "Time from send to broker acknowledgement.",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
