"""The retrieval service and its live page: /search, /answer, /events/recent, /stream, /freshness, /health, /metrics
and the UI at /. This module only wires: the routes are in `routes/`, what they share in `deps.py`, the error
responses in `errors.py`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import make_asgi_app, start_http_server
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from streamrag_api.access import BodyLimit, is_loopback
from streamrag_api.deps import Services
from streamrag_api.errors import DependencyDown, dependency_down, http_error, invalid_request
from streamrag_api.middleware import RequestMetrics
from streamrag_api.routes import answer, feed, health, search
from streamrag_assets.runtime.memory import release_periodically
from streamrag_assets.settings import get_settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services = Services()
    app.state.services = services
    metrics_server = None
    if services.settings.api_metrics_port:  # for a scraper on an internal network; the API's own port needs a key
        metrics_server, _ = start_http_server(services.settings.api_metrics_port, addr=services.settings.bind_host)
    # The schema is the stream's (and `streamrag migrate`'s) to make: this service's role only reads.
    await asyncio.to_thread(services.embedder.warm)  # load the model before the first question
    services.feed.start()
    if services.keyword_index is not None:
        services.keyword_index.start()  # builds in the background; keyword search uses Postgres until then
    release_periodically(services.settings.memory_trim_interval_s)
    try:
        yield
    finally:
        await services.feed.stop()
        if services.keyword_index is not None:
            await asyncio.to_thread(services.keyword_index.stop)
        services.watermarks.close()
        services.engine.dispose()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()


app = FastAPI(
    title="streamrag",
    version="0.1.0",
    description="Real-time retrieval over Wikimedia recent changes: hybrid search, cited answers, a live feed.",
    lifespan=lifespan,
)
_metrics = make_asgi_app()


async def metrics(scope: Scope, receive: Receive, send: Send) -> None:
    """Prometheus' /metrics: to a loopback caller (the Prometheus `up` runs) or one with an API key."""
    if scope["type"] == "http" and not is_loopback(scope["client"][0] if scope.get("client") else None):
        try:
            app.state.services.access.caller(Request(scope))
        except HTTPException as exc:
            await http_error(Request(scope), exc)(scope, receive, send)
            return
    await _metrics(scope, receive, send)


app.mount("/metrics", metrics)  # a mount, not a route: routers cannot carry one
app.mount("/static", StaticFiles(directory=STATIC), name="static")
app.exception_handler(RequestValidationError)(invalid_request)
app.exception_handler(DependencyDown)(dependency_down)
app.exception_handler(StarletteHTTPException)(http_error)
app.add_middleware(BodyLimit, max_bytes=get_settings().api_max_body_bytes)
app.add_middleware(RequestMetrics)  # outermost: counts what the others refuse too
for routes in (search, answer, feed, health):
    app.include_router(routes.router)


@app.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")
