"""The SSE client against a real local HTTP server: backoff on 503/429, stall detection, Last-Event-ID resume."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from sse_starlette.sse import EventSourceResponse

from streamrag_assets.ingest.sse_client import SourceUnavailable, SSEClient
from streamrag_tests.harness import free_port


class FlakyStream:
    """Answers 503, then 429, then streams 3 events and goes silent (a stall), then resumes by Last-Event-ID."""

    def __init__(self) -> None:
        self.requests: list[str | None] = []
        self.app = FastAPI()

        @self.app.get("/stream")
        async def stream(request: Request):
            last = request.headers.get("last-event-id")
            self.requests.append(last)
            attempt = len(self.requests)
            if attempt == 1:
                return PlainTextResponse("busy", status_code=503)
            if attempt == 2:
                return PlainTextResponse("slow down", status_code=429, headers={"Retry-After": "1"})
            start = int(last) + 1 if last else 0

            async def events():
                for seq in range(start, start + 3):
                    yield {"id": str(seq), "data": f"event {seq}"}
                await asyncio.sleep(30)  # silent: the client's read timeout must notice

            return EventSourceResponse(events())

        @self.app.get("/gone")
        async def gone():
            return PlainTextResponse("no such stream", status_code=404)


@pytest.fixture
def flaky() -> Iterator[tuple[FlakyStream, int]]:
    server_state = FlakyStream()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(server_state.app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield server_state, port
    server.should_exit = True
    thread.join(10)


def test_backoff_stall_and_resume(flaky) -> None:
    state, port = flaky
    client = SSEClient(
        f"http://127.0.0.1:{port}/stream", "streamrag-test", source="test", read_timeout_s=1.0, max_backoff_s=0.5
    )
    stop = threading.Event()
    began = time.monotonic()
    received = []
    for event in client.events(last_event_id="9", stop=stop):
        received.append(event)
        if len(received) == 6:
            stop.set()
    assert [e.id for e in received] == ["10", "11", "12", "13", "14", "15"]
    assert received[0].data == "event 10"
    # 503 and 429 were retried; after the stall the client resumed after the last id it had received.
    assert state.requests[:4] == ["9", "9", "9", "12"]
    assert time.monotonic() - began >= 1.0 + 1.0, "Retry-After and the read timeout were honoured"


def test_a_permanent_client_error_is_raised_not_retried(flaky) -> None:
    _state, port = flaky
    client = SSEClient(f"http://127.0.0.1:{port}/gone", "streamrag-test", source="test")
    with pytest.raises(SourceUnavailable, match="404"):
        next(client.events())
