"""The retrieval service and its live page: /search, /answer, /events/recent, /stream, /freshness, /health, /metrics
and the UI at /. This module only wires: the routes are in `routes/`, what they share in `deps.py`, the error
responses in `errors.py`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import make_asgi_app
from sqlalchemy.exc import DBAPIError, OperationalError

from streamrag_api.deps import Services
from streamrag_api.errors import DependencyDown, dependency_down, invalid_request
from streamrag_api.middleware import RequestMetrics
from streamrag_api.routes import answer, feed, health, search
from streamrag_assets.documents.migrate import upgrade

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services = Services()
    app.state.services = services
    try:  # the schema this service reads; idempotent, and serialised with the other processes that migrate
        await asyncio.to_thread(upgrade, services.settings.app_database_url)
    except (OperationalError, DBAPIError) as exc:
        log.warning("could not migrate the documents database yet (%s); requests will say so", exc)
    await asyncio.to_thread(services.embedder.warm)  # load the model before the first question
    services.feed.start()
    if services.keyword_index is not None:
        services.keyword_index.start()  # builds in the background; keyword search uses Postgres until then
    try:
        yield
    finally:
        await services.feed.stop()
        if services.keyword_index is not None:
            await asyncio.to_thread(services.keyword_index.stop)
        services.engine.dispose()


app = FastAPI(
    title="streamrag",
    version="0.1.0",
    description="Real-time retrieval over Wikimedia recent changes: hybrid search, cited answers, a live feed.",
    lifespan=lifespan,
)
app.mount("/metrics", make_asgi_app())  # a mount, not a route: routers cannot carry one
app.mount("/static", StaticFiles(directory=STATIC), name="static")
app.exception_handler(RequestValidationError)(invalid_request)
app.exception_handler(DependencyDown)(dependency_down)
app.add_middleware(RequestMetrics)
for routes in (search, answer, feed, health):
    app.include_router(routes.router)


@app.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")
