"""A local SSE server that speaks like Wikimedia EventStreams, for offline runs, tests and benchmarks.

Event ``n`` has SSE id ``n``; a client reconnecting with ``Last-Event-ID: n`` continues at ``n + 1``, so a
restarted server (or client) neither skips nor repeats. ``count`` ends the sequence (the connection then idles).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from sse_starlette.sse import EventSourceResponse

from streamrag_assets.ingest.sources import EventFactory

STREAM_PATH = "/v2/stream/recentchange"


def create_app(factory: EventFactory, rate: float, count: int | None = None) -> FastAPI:
    app = FastAPI(title="streamrag offline EventStreams")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(STREAM_PATH)
    async def stream(request: Request) -> EventSourceResponse:
        last = request.headers.get("last-event-id", "")
        start = int(last) + 1 if last.strip().isdigit() else 0

        async def events() -> AsyncIterator[dict[str, str]]:
            began = time.monotonic()
            seq = start
            while count is None or seq < count:
                if rate > 0:
                    delay = began + (seq - start) / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif seq % 200 == 0:
                    await asyncio.sleep(0)  # unthrottled: still let other connections run
                yield {"id": str(seq), "event": "message", "data": factory(seq)}
                seq += 1
            while True:  # the sequence is over; idle like a quiet live stream
                await asyncio.sleep(3600)

        return EventSourceResponse(events(), ping=15)

    return app
