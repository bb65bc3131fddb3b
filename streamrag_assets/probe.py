"""The freshness probe: every ``probe_interval_s`` it produces a marked edit to the raw topic, then asks /search for it
until found, and records the delay: the platform's ingested -> searchable latency measured from outside, end to end.
Its documents carry the "probe" flag, so the API keeps them out of user results (they are found with
``include_probes``)."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
from kafka import KafkaProducer

from streamrag_assets.ingest.events import PROBE_WIKI, event_key, try_parse
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.metrics import (
    PROBE_LAST_FOUND,
    PROBE_LAST_SEARCHABLE,
    PROBE_PROBES,
    PROBE_SEARCHABLE,
    TOPIC_HEAD_OFFSET,
)
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)
PROBE_DOMAIN = "probe.streamrag.invalid"


def probe_event(marker: str, now: datetime | None = None) -> dict:
    """A recentchange edit on the probe wiki, findable by ``marker``."""
    now = now or datetime.now(UTC)
    revision = int(now.timestamp() * 1000) % 2_000_000_000  # documents are keyed by wiki and revision
    page = f"Streamrag probe {marker}"
    url = f"https://{PROBE_DOMAIN}/wiki/{page.replace(' ', '_')}"
    return {
        "$schema": "/mediawiki/recentchange/1.0.0",
        "meta": {
            "uri": url,
            "id": str(uuid.uuid4()),
            "dt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "domain": PROBE_DOMAIN,
            "stream": "mediawiki.recentchange",
        },
        "id": revision,
        "type": "edit",
        "namespace": 0,
        "title": page,
        "title_url": url,
        "comment": f"streamrag freshness probe {marker}",
        "parsedcomment": f"streamrag freshness probe {marker}",
        "timestamp": int(now.timestamp()),
        "user": "streamrag-probe",
        "bot": True,
        "minor": True,
        "length": {"old": 100, "new": 101},
        "revision": {"old": revision - 1, "new": revision},
        "server_url": f"https://{PROBE_DOMAIN}",
        "server_name": PROBE_DOMAIN,
        "server_script_path": "/w",
        "wiki": PROBE_WIKI,
    }


class FreshnessProbe:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=0, **settings.kafka_client_config()
        )
        keys = settings.api_key_list()  # the API needs one when keys are configured
        headers = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
        self.http = httpx.Client(base_url=settings.api_url, timeout=10, headers=headers)

    def once(self, poll_s: float = 0.1, stop: threading.Event | None = None) -> float | None:
        """Produce one probe event and wait for /search to return it; the delay in seconds, or None when missing (or
        ``stop`` is set meanwhile: an event waiting on a stopped stream must not hold the probe's own stop)."""
        marker = uuid.uuid4().hex[:12]
        line = json.dumps(probe_event(marker))
        began = time.monotonic()
        headers = [("sse_id", f"probe-{marker}".encode()), ("ingested_at", str(int(time.time() * 1000)).encode())]
        self.producer.send(self.settings.topic, key=event_key(try_parse(line)), value=line.encode(), headers=headers)
        self.producer.flush(timeout=30)
        body = {"query": marker, "mode": "keyword", "top_k": 1, "include_probes": True}
        deadline = began + self.settings.probe_timeout_s
        while time.monotonic() < deadline:
            try:
                hits = self.http.post("/search", json=body).json().get("hits", [])
            except (httpx.HTTPError, ValueError):
                hits = []
            if any(marker in hit["title"] for hit in hits):
                delay = time.monotonic() - began
                PROBE_SEARCHABLE.observe(delay)
                PROBE_LAST_SEARCHABLE.set(delay)
                PROBE_LAST_FOUND.set(time.time())
                PROBE_PROBES.labels("found").inc()
                log.info("probe %s searchable after %.2f s", marker, delay)
                return delay
            if stop is None:
                time.sleep(poll_s)
            elif stop.wait(poll_s):
                return None
        PROBE_PROBES.labels("missing").inc()
        log.warning("probe %s not searchable within %.0f s", marker, self.settings.probe_timeout_s)
        return None

    def measure_heads(self) -> None:
        """Export the topic's head offsets: with the stream's processed offsets, Prometheus computes the lag even
        when the stream is down (then it exports nothing)."""
        consumer = kafka_offsets.make_consumer(self.settings.bootstrap_servers)
        try:
            tps = kafka_offsets.topic_partitions(consumer, self.settings.topic, timeout_s=5)
            for partition, head in kafka_offsets.high_watermarks(consumer, tps, timeout_s=5).items():
                TOPIC_HEAD_OFFSET.labels(str(partition)).set(head)
        finally:
            consumer.close()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.measure_heads()
                self.once(stop=stop)
            except Exception as exc:  # the broker is down, say: counted, and the next probe tries again
                PROBE_PROBES.labels("error").inc()
                log.warning("probe failed: %s", exc)
            stop.wait(max(0.0, self.settings.probe_interval_s - (time.monotonic() - started)))

    def close(self) -> None:
        self.producer.close(timeout=5)
        self.http.close()
