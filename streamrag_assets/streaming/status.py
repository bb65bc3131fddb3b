"""What the continuous query reports in its heartbeat: alive, batches done, the last one, and how far behind the
topic it is (head offsets minus the offsets its checkpoint committed; also the per-partition lag gauge, measured here
every heartbeat rather than inside each micro-batch, where the broker round trips would delay the documents)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.metrics import STREAM_CONSUMER_LAG
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.batch_result import BatchResult
from streamrag_assets.streaming.checkpoint import committed_offsets


class StreamStatus:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.query = None
        self._lock = threading.Lock()
        self._batches = 0
        self._last: BatchResult | None = None
        self._last_at: datetime | None = None
        self._consumer = None
        self._heads: dict[int, int] | None = None
        self._started_at = datetime.now(UTC)
        self.paused_for: str | None = None  # the bounded run the query paused for (see `checkpoints_for_run`)

    def on_batch(self, result: BatchResult) -> None:
        with self._lock:
            self._batches += 1
            self._last, self._last_at = result, datetime.now(UTC)

    def lag(self) -> int | None:
        try:
            if self._consumer is None:
                self._consumer = kafka_offsets.make_consumer(self.settings.bootstrap_servers)
            tps = kafka_offsets.topic_partitions(self._consumer, self.settings.topic, timeout_s=2)
            heads = self._heads = kafka_offsets.high_watermarks(self._consumer, tps, timeout_s=2, near=self._heads)
        except Exception:  # the broker is down or slow: lag unknown, the heartbeat still goes out
            return None
        done = committed_offsets(self.settings)
        behind = {partition: max(0, head - done.get(partition, 0)) for partition, head in heads.items()}
        for partition, records in behind.items():
            STREAM_CONSUMER_LAG.labels(str(partition)).set(records)
        return sum(behind.values())

    def detail(self) -> dict[str, Any]:
        with self._lock:
            last, last_at, batches = self._last, self._last_at, self._batches
        return {
            "active": bool(self.query is not None and self.query.isActive),
            "topic": self.settings.topic,
            "batches": batches,
            "started_at": self._started_at.isoformat(),
            "last_batch_at": last_at.isoformat() if last_at else None,
            "last_batch_seconds": round(last.seconds, 3) if last else None,
            "lag": self.lag(),
            "paused_for": self.paused_for,
        }

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
