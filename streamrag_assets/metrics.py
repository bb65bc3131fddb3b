"""Every Prometheus metric of the platform, named in one place (prefix ``streamrag_``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency buckets from 5 ms to 2 min: produce acks are milliseconds, source delay can be minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 15, 30, 60, 120)

# --- ingest (SSE -> Kafka) ----------------------------------------------------------------------------------------
INGEST_EVENTS_RECEIVED = Counter("streamrag_ingest_events_received", "Events read from the SSE source.", ["source"])
INGEST_EVENTS_PRODUCED = Counter("streamrag_ingest_events_produced", "Events acknowledged by the broker.", ["source"])
INGEST_PRODUCER_RESETS = Counter(
    "streamrag_ingest_producer_resets",
    "Times the Kafka client was replaced because deliveries stopped progressing.",
)
INGEST_EVENTS_FAILED = Counter(
    "streamrag_ingest_events_failed",
    "Produce attempts that failed (each is retried or dead-lettered).",
    ["source", "reason"],
)
INGEST_UNCONFIRMED_ACKS = Counter(
    "streamrag_ingest_unconfirmed_acks",
    "Events the broker acknowledged without an offset (duplicate sequence), by what the topic showed: found, resent.",
    ["source", "outcome"],
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

# --- streaming medallion (Kafka -> Bronze/Silver/Gold) --------------------------------------------------------------
STREAM_ROWS = Counter("streamrag_stream_rows", "Rows written per table.", ["table"])
STREAM_DROPPED = Counter(
    "streamrag_stream_dropped", "Rows not carried into Silver, by why (duplicate, canary).", ["reason"]
)
STREAM_QUARANTINED = Counter("streamrag_stream_quarantined", "Rows sent to quarantine, by reason.", ["reason"])
STREAM_BATCH_DURATION = Histogram(
    "streamrag_stream_batch_duration_seconds", "Micro-batch time per stage.", ["stage"], buckets=LATENCY_BUCKETS
)
STREAM_TRIGGER_PHASE = Histogram(
    "streamrag_stream_trigger_phase_seconds",
    "Spark's own time per micro-batch trigger, by phase of its progress report (latestOffset, addBatch, ...).",
    ["phase"],
    buckets=LATENCY_BUCKETS,
)
STREAM_PAUSED = Gauge(
    "streamrag_stream_paused",
    "1 while the continuous query is paused for a bounded run (rebuild, reprocess, catch-up).",
)
STREAM_CONSUMER_LAG = Gauge(
    "streamrag_stream_consumer_lag", "Records in the topic not yet processed, per partition.", ["partition"]
)
STREAM_PROCESSED_OFFSET = Gauge(
    "streamrag_stream_processed_offset", "Next offset to process, per partition.", ["partition"]
)
STREAM_IDLE_TRIGGERS = Counter(
    "streamrag_stream_idle_triggers", "Triggers of the continuous query that found no new events in the topic."
)
BROKER_BATCHES_REMOVED = Counter(
    "streamrag_broker_removed_batches",
    "Record batches the embedded broker's retention removed (Bronze held every record of each).",
)
STREAM_LAST_BATCH = Gauge("streamrag_stream_last_batch_timestamp_seconds", "When the last micro-batch finished.")
STREAM_ERRORS = Counter("streamrag_stream_errors", "Failed micro-batches by stage and kind.", ["stage", "kind"])


class OffsetGapCounters(Collector):
    """Gaps in the topic's offsets, counted from the gap ledger (kafka/gaps.py): the topic is read in
    Spark's Python workers, whose own counters no one scrapes. The ledger is durable, so these never restart at 0."""

    def __init__(self, totals: Callable[[], Mapping[str, tuple[int, int]]], lost_reasons: tuple[str, ...]) -> None:
        self.totals = totals  # reason -> (gaps, offsets)
        self.lost_reasons = lost_reasons

    def collect(self) -> Iterator[Metric]:
        try:
            totals = self.totals()
        except OSError as exc:  # the scrape must still answer; the check reads the same ledger and fails loudly
            logging.getLogger(__name__).warning("the offset gap ledger could not be read: %s", exc)
            return
        holes = CounterMetricFamily(
            "streamrag_stream_offset_holes",
            "Ranges of topic offsets that yielded no records, by reason (skipped: the broker answered past them; "
            "no_records: none below the high watermark of a live broker; retention: removed before being read).",
            labels=["reason"],
        )
        lost = CounterMetricFamily(
            "streamrag_stream_lost_records",
            "Topic records that never reached Bronze, by reason (retention: the broker removed them first).",
            labels=["reason"],
        )
        for reason, (gaps, offsets) in sorted(totals.items()):
            holes.add_metric([reason], gaps)
            if reason in self.lost_reasons:
                lost.add_metric([reason], offsets)
        yield holes
        yield lost


_offset_gap_counters: OffsetGapCounters | None = None


def expose_offset_gaps(totals: Callable[[], Mapping[str, tuple[int, int]]], lost_reasons: tuple[str, ...]) -> None:
    """Serve the gap counters from this process's /metrics (once per process)."""
    global _offset_gap_counters
    if _offset_gap_counters is None:
        _offset_gap_counters = OffsetGapCounters(totals, lost_reasons)
        REGISTRY.register(_offset_gap_counters)


# --- index (Gold -> pgvector) ---------------------------------------------------------------------------------------
INDEX_DOCS = Counter(
    "streamrag_index_docs",
    "Documents by outcome (embedded, upserted, unchanged, deleted, renamed, dead_letter).",
    ["outcome"],
)
INDEX_EMBED_DURATION = Histogram(
    "streamrag_index_embed_duration_seconds", "Embedding time per batch.", buckets=LATENCY_BUCKETS
)
INDEX_DB_DURATION = Histogram(
    "streamrag_index_db_duration_seconds", "Database write time per batch.", buckets=LATENCY_BUCKETS
)
INGESTED_TO_INDEXED = Histogram(
    "streamrag_ingested_to_indexed_seconds",
    "From the producer's ingested_at to the document committed in pgvector.",
    buckets=LATENCY_BUCKETS,
)
INDEX_LAST_INDEXED = Gauge(
    "streamrag_index_last_indexed_timestamp_seconds", "When a document was last written to pgvector."
)
ENRICH_DIFFS = Counter(
    "streamrag_enrich_diffs",
    "Edit documents offered for diff enrichment (STREAMRAG_ENRICH_DIFFS), by outcome: enriched, empty (nothing "
    "added or removed), failed (the compare API or the index), skipped (the queue was full), gone (deleted meanwhile).",
    ["outcome"],
)
INDEX_PAUSED = Gauge(
    "streamrag_index_paused",
    "1 while the stream's indexing waits for Postgres (Bronze/Silver/Gold go on; the index catches up after).",
)
EVENT_TIME_TO_INDEXED = Histogram(
    "streamrag_event_time_to_indexed_seconds",
    "From the edit's meta.dt to the document committed in pgvector.",
    buckets=LATENCY_BUCKETS,
)


# --- API ------------------------------------------------------------------------------------------------------------
# Finer at the low end: search targets are tens of milliseconds.
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
API_REQUEST_DURATION = Histogram(
    "streamrag_api_request_duration_seconds",
    "HTTP request duration by route template, method and status class.",
    ["route", "method", "status"],
    buckets=API_BUCKETS,
)
API_ERRORS = Counter("streamrag_api_errors", "HTTP 4xx and 5xx responses by route and status.", ["route", "status"])
API_SEARCH_DURATION = Histogram(
    "streamrag_api_search_duration_seconds",
    "Retrieval time of a search (database and keyword index), by mode.",
    ["mode"],
    buckets=API_BUCKETS,
)
API_EMBED_DURATION = Histogram("streamrag_api_embed_duration_seconds", "Embedding a query.", buckets=API_BUCKETS)
API_LLM_DURATION = Histogram(
    "streamrag_api_llm_duration_seconds",
    "Answer generation by answerer (extractive, llm) and outcome (ok, fallback).",
    ["answerer", "outcome"],
    buckets=API_BUCKETS,
)
KEYWORD_INDEX_DOCUMENTS = Gauge(
    "streamrag_keyword_index_documents", "Live documents in the API's keyword (BM25) index."
)
KEYWORD_INDEX_CHANGES = Counter(
    "streamrag_keyword_index_changes", "Changes the keyword index read from Postgres, by kind.", ["kind"]
)
KEYWORD_INDEX_REFRESH = Histogram(
    "streamrag_keyword_index_refresh_seconds",
    "Reading and applying what committed in Postgres since the keyword index's last snapshot.",
    buckets=API_BUCKETS,
)
KEYWORD_INDEX_CAUGHT_UP = Gauge(
    "streamrag_keyword_index_caught_up_timestamp_seconds", "When the keyword index last caught up with Postgres."
)

# --- freshness probe ----------------------------------------------------------------------------------------------
PROBE_SEARCHABLE = Histogram(
    "streamrag_probe_searchable_seconds",
    "From producing a probe event to finding it with /search.",
    buckets=LATENCY_BUCKETS,
)
PROBE_LAST_SEARCHABLE = Gauge(
    "streamrag_probe_last_searchable_seconds", "The last probe event's produce -> searchable delay."
)
PROBE_LAST_FOUND = Gauge(
    "streamrag_probe_last_found_timestamp_seconds", "When a probe event was last found by /search."
)
PROBE_PROBES = Counter("streamrag_probe_probes", "Probes by outcome (found, missing, error).", ["outcome"])
TOPIC_HEAD_OFFSET = Gauge(
    "streamrag_topic_head_offset",
    "Next offset of each partition of the raw topic, measured by the probe process independently of the stream.",
    ["partition"],
)

# --- supervisor (`streamrag up`) ------------------------------------------------------------------------------------
SERVICE_RESTARTS = Counter(
    "streamrag_service_restarts",
    "Restarts of a supervised service, by why (exited, hung, not_ready, start_failed).",
    ["service", "reason"],
)
SERVICE_UP = Gauge(
    "streamrag_service_up", "1 while a supervised service runs and answers its probe, else 0.", ["service"]
)
SERVICE_CRASHING = Gauge(
    "streamrag_service_crashing",
    "1 while a service fails again and again (restarted with backoff, not yet up long enough to count as healed).",
    ["service"],
)
