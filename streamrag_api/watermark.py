"""How current the index is, for every response: a true low watermark.

Per partition of the topic, the index's progress (`documents.progress`, recorded in its own transactions) says up to
which offset every record is indexed, and the newest ingest and event times among them; the topic's heads say how
many records are past it. A partition with none past it is current; the watermark is the oldest of the lagging
partitions' marks — every event ingested before it is searchable — or now when none lags.

Responses never wait for it: two threads keep it current while responses want it (and stop asking once none has for
`WANTED_S`) — one reads the index's marks and the searchable p95 from Postgres every `REFRESH_S`, one the topic's
heads from the broker (a broker that is down or slow must not hold up the marks) — and a response takes the newest
value as it is, so its watermark is about `REFRESH_S` older than the response at most. Only the first response of a
process waits for a read. (Read on each response's path it cost ~1 ms and a thread hand-over a request, measured in
`make bench-api`.)
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from streamrag_api.schemas import Watermark
from streamrag_assets.documents import queries
from streamrag_assets.documents.progress import Marks, marks_from_json, stream_progress_name
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

REFRESH_S = 1.0
WANTED_S = 10.0  # the threads stop reading this long after the last response wanted a watermark


def low_watermark(
    marks: Marks, heads: dict[int, int] | None, now: datetime
) -> tuple[datetime | None, datetime | None, int | None]:
    """(ingested through, event time through, events not yet indexed) from the index's marks and the topic's heads
    (None: unknown, the broker did not answer — the marks alone then, lag unknown)."""
    if heads is None:
        lagging = list(marks)
        lag = None
    else:
        behind = {p: max(0, head - (marks[p].offset if p in marks else 0)) for p, head in heads.items()}
        lagging = [p for p, records in behind.items() if records]
        lag = sum(behind.values())
    if heads is not None and not lagging:
        return now, now, 0
    ingested = [t for p in lagging if p in marks and (t := marks[p].ingested_at) is not None]
    events = [t for p in lagging if p in marks and (t := marks[p].event_time) is not None]
    # A lagging partition with no mark yet (nothing of it indexed): nothing is known to be current.
    known = all(p in marks for p in lagging)
    return (min(ingested) if known and ingested else None, min(events) if known and events else None, lag)


class WatermarkReader:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.stream = stream_progress_name(settings.topic)
        self._lock = threading.Lock()
        self._consumer = None
        self._heads: dict[int, int] | None = None  # None: not known (yet, or the broker does not answer)
        self._wanted_at = 0.0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._current: Watermark | None = None

    def latest(self) -> Watermark | None:
        """The newest watermark read, without waiting (None before the first read); asking keeps it current."""
        self._wanted_at = time.monotonic()
        if not self._threads:
            with self._lock:
                if not self._threads:
                    for name, loop in (("watermark", self._follow_marks), ("topic-heads", self._follow_heads)):
                        thread = threading.Thread(target=loop, name=name, daemon=True)
                        thread.start()
                        self._threads.append(thread)
        return self._current

    def current(self) -> Watermark:
        """The newest watermark, read now when there is none yet (a blocking call: run it off the event loop)."""
        latest = self.latest()
        if latest is not None:
            return latest
        with self._lock:
            if self._current is None:
                self._current = self._read()
            return self._current

    def _read(self) -> Watermark:
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            marks = marks_from_json(queries.index_progress_partitions(conn, self.stream))
            p95 = queries.searchable_p95_s(conn)
        ingested, event_time, lag = low_watermark(marks, self._heads, now)
        return Watermark(
            ingested_through=ingested,
            event_time_through=event_time,
            lag_events=lag,
            ingested_to_searchable_p95_s=None if p95 is None else round(float(p95), 3),
            checked_at=now,
        )

    def _wanted(self) -> bool:
        return time.monotonic() - self._wanted_at <= WANTED_S

    def _follow_marks(self) -> None:
        while not self._stop.wait(REFRESH_S):
            if not self._wanted():
                continue
            try:
                self._current = self._read()
            except Exception as exc:  # Postgres is away: responses keep the last watermark, which says when it was read
                log.warning("watermark not read (%s): responses keep the one checked at %s", exc, self._checked_at())

    def _checked_at(self) -> str:
        return "never" if self._current is None else self._current.checked_at.isoformat()

    def _follow_heads(self) -> None:
        near: dict[int, int] | None = None
        while not self._stop.wait(REFRESH_S):
            if not self._wanted():
                continue
            try:
                if self._consumer is None:
                    self._consumer = kafka_offsets.make_consumer(self.settings.bootstrap_servers)
                tps = kafka_offsets.topic_partitions(self._consumer, self.settings.topic, timeout_s=2)
                near = self._heads = kafka_offsets.high_watermarks(self._consumer, tps, timeout_s=2, near=near)
            except Exception as exc:  # the broker is down or slow: the lag is unknown, the rest still holds
                if self._heads is not None:
                    log.warning("topic heads unknown (%s): watermarks have no lag until the broker answers", exc)
                self._heads = None

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._consumer is not None:
            self._consumer.close()


def sentence(watermark: Watermark, as_of: datetime | None = None) -> str:
    """The watermark in one sentence, for the answers (or the time asked about, for an as-of answer)."""
    if as_of is not None:
        return f"This is the index as it stood at {as_of.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}."
    if watermark.ingested_through is None:
        return "How current the index is cannot be told right now."
    when = watermark.ingested_through.strftime("%Y-%m-%d %H:%M:%S UTC")
    if watermark.lag_events == 0:
        return f"This reflects every edit received up to {when}."
    waiting = "" if watermark.lag_events is None else f"; {watermark.lag_events} more are not indexed yet"
    return f"This reflects every edit received up to {when}{waiting}."
