"""Client for Wikimedia EventStreams (or the local replay server): SSE over httpx, resumable, never giving up.

Reconnects after disconnects, stalls (read timeout), 5xx and 429 with exponential backoff and full jitter (the
`backoff` package's generators), resuming with ``Last-Event-ID`` from the last event received. ``since`` is sent only
when there is no id to resume from, as EventStreams gives the id precedence anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import backoff
import httpx
from httpx_sse import SSEError, connect_sse

from streamrag_assets.metrics import INGEST_RECONNECTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceEvent:
    id: str | None
    data: str


class SourceUnavailable(RuntimeError):
    """The source refused us for good (4xx other than 429): retrying will not help."""


class _Retry(Exception):
    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


@dataclass
class SSEClient:
    url: str
    user_agent: str
    source: str = "wikimedia"
    read_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_backoff_s: float = 60.0
    hint_when_unreachable: str = ""

    def __post_init__(self) -> None:
        self.last_event_id: str | None = None
        self.connected = threading.Event()

    def events(
        self, last_event_id: str | None = None, since: str | None = None, stop: threading.Event | None = None
    ) -> Iterator[SourceEvent]:
        """Yield events forever (until ``stop`` is set), reconnecting as needed."""
        stop = stop or threading.Event()
        self.last_event_id = last_event_id
        delays = self._delays()
        failures = 0
        while not stop.is_set():
            try:
                for event in self._one_connection(since):
                    if failures:
                        log.info("%s: stream resumed after %d failed attempt(s)", self.source, failures)
                        failures, delays = 0, self._delays()
                    yield event
                    if stop.is_set():
                        return
                raise _Retry("eof")
            except _Retry as retry:
                reason, wait_s = retry.reason, retry.wait_s
            except httpx.ReadTimeout:
                reason, wait_s = "stall", None
            except (httpx.TransportError, SSEError) as exc:
                reason, wait_s = "disconnect", None
                if failures == 0 and isinstance(exc, httpx.ConnectError):
                    log.error("%s: cannot reach %s (%s). %s", self.source, self.url, exc, self.hint_when_unreachable)
            self.connected.clear()
            failures += 1
            INGEST_RECONNECTS.labels(self.source, reason).inc()
            delay = wait_s if wait_s is not None else next(delays)
            log.warning(
                "%s: reconnecting in %.1f s (%s; resume after id %s)", self.source, delay, reason, self.last_event_id
            )
            stop.wait(delay)

    def _delays(self) -> Iterator[float]:
        base = backoff.expo(base=2, factor=0.5, max_value=self.max_backoff_s)
        next(base)  # the generator's first value is a priming None
        return (backoff.full_jitter(value) for value in base)

    def _one_connection(self, since: str | None) -> Iterator[SourceEvent]:
        headers = {"User-Agent": self.user_agent, "Accept": "text/event-stream"}
        params = {}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        elif since:
            params["since"] = since
        timeout = httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s)
        with (
            httpx.Client(timeout=timeout, follow_redirects=True) as client,
            connect_sse(client, "GET", self.url, headers=headers, params=params) as source,
        ):
            status = source.response.status_code
            if status == 429 or status >= 500:
                retry_after = source.response.headers.get("retry-after", "")
                raise _Retry(f"http_{status}", float(retry_after) if retry_after.isdigit() else None)
            if status >= 400:
                body = source.response.read().decode(errors="replace")[:200]
                raise SourceUnavailable(f"{self.url} answered HTTP {status}: {body}")
            self.connected.set()
            for sse in source.iter_sse():
                if not sse.data:
                    continue  # keep-alive or an event with no payload
                if sse.id:
                    self.last_event_id = sse.id
                yield SourceEvent(sse.id or None, sse.data)
