"""A local SSE server that speaks like Wikimedia EventStreams, for offline runs, tests and benchmarks.

Event ``n`` has SSE id ``n``; a client reconnecting with ``Last-Event-ID: n`` continues at ``n + 1``, so a
restarted server (or client) neither skips nor repeats. ``count`` ends the sequence (the connection then idles).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from streamrag_assets.ingest.sources import EventFactory

STREAM_PATH = "/v2/stream/recentchange"


def create_app(factory: EventFactory, rate: float, count: int | None = None, backlog: int = 0) -> FastAPI:
    """The SSE endpoint at ``rate`` events/s (0: as fast as the client reads), ``count`` events in all (None: no
    end); a first connection gets ``backlog`` events at once before the paced ones (what a consumer that was down
    finds waiting)."""
    app = FastAPI(title="streamrag offline EventStreams")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(STREAM_PATH)
    async def stream(request: Request) -> StreamingResponse:
        last = request.headers.get("last-event-id", "")
        start = int(last) + 1 if last.strip().isdigit() else 0
        return StreamingResponse(
            _frames(factory, start, rate, count, backlog if start == 0 else 0),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def sse_frame(seq: int, data: str) -> str:
    # One event in the text/event-stream format; our payloads are single-line JSON (or junk without newlines).
    return f"id: {seq}\nevent: message\ndata: {data}\n\n"


async def _frames(
    factory: EventFactory, start: int, rate: float, count: int | None, backlog: int = 0
) -> AsyncIterator[bytes]:
    """Every event that is due goes out in one chunk: cheap at high rates, one event per chunk at low ones."""
    began = time.monotonic()
    seq = start
    last_write = began
    start += backlog  # due at once; the pace counts from the event after them
    while count is None or seq < count:
        now = time.monotonic()
        due = (count if count is not None else seq + 500) if rate <= 0 else start + int((now - began) * rate) + 1
        if count is not None:
            due = min(due, count)
        due = min(due, seq + 500)
        if due <= seq:
            if now - last_write > 15:
                yield b": keep-alive\n\n"
                last_write = now
            await asyncio.sleep(max(0.0, (seq - start) / rate - (now - began)) if rate > 0 else 0)
            continue
        yield "".join(sse_frame(n, factory(n)) for n in range(seq, due)).encode()
        last_write = now
        seq = due
        await asyncio.sleep(0)
    while True:  # the sequence is over; idle like a quiet live stream, with keep-alive comments
        await asyncio.sleep(15)
        yield b": keep-alive\n\n"
