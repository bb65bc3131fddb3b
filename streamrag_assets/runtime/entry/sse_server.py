"""The local SSE server's process: recorded, synthetic or file events served like Wikimedia EventStreams."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import uvicorn

from streamrag_assets.ingest.sources import event_factory, file_events
from streamrag_assets.ingest.sse_server import create_app
from streamrag_assets.settings import Settings


def main(
    settings: Settings,
    source: str,
    port: int | None = None,
    rate: float | None = None,
    count: int | None = None,
    seed: int | None = None,
    malformed_fraction: float | None = None,
    file: Path | None = None,
) -> None:
    factory: Callable[[int], str]
    if file is not None:
        lines = file_events(file)
        factory, count = lines.__getitem__, len(lines) if count is None else min(count, len(lines))
    else:
        factory = event_factory(
            source,
            seed=settings.ingest_seed if seed is None else seed,
            malformed_fraction=settings.ingest_malformed_fraction if malformed_fraction is None else malformed_fraction,
        )
    server_app = create_app(factory, rate=settings.ingest_rate if rate is None else rate, count=count)
    uvicorn.run(
        server_app,
        host=settings.bind_host,
        port=port or settings.source_port,
        log_level="warning",
        access_log=False,
        # An SSE response never ends by itself: without a bound, SIGTERM would wait for clients forever.
        timeout_graceful_shutdown=2,
    )
