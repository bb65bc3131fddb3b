"""The retrieval service and its live page: /search, /answer, /events/recent, /stream, /freshness, /health, /metrics
and the UI at /. Input is checked against typed schemas (422 with a readable message); a dependency that is down
gives 503 naming it; nothing a client sends produces a 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated

import anyio
import anyio.to_thread
import httpx
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import make_asgi_app
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sse_starlette.sse import EventSourceResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamrag_api import answer as answering
from streamrag_api.keyword import KeywordIndex
from streamrag_api.live import LiveFeed
from streamrag_api.schemas import (
    AnswerRequest,
    AnswerResponse,
    Document,
    Freshness,
    Hit,
    RecentEvents,
    SearchRequest,
    SearchResponse,
)
from streamrag_api.search import (
    DOCUMENT_COLUMNS,
    NOT_A_PROBE,
    Searcher,
    Timings,
    document_from_row,
    search_engine,
)
from streamrag_assets.documents.heartbeat import STREAM, latest
from streamrag_assets.documents.migrate import upgrade
from streamrag_assets.index.embedder import get_embedder
from streamrag_assets.metrics import API_ERRORS, API_REQUEST_DURATION
from streamrag_assets.runtime.process import port_is_open
from streamrag_assets.settings import get_settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
FRESHNESS_EVERY_S = 5.0


class DependencyDown(RuntimeError):
    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency} is unavailable: {reason}")
        self.dependency = dependency


class Services:
    """What the routes share: one connection pool, the embedding model, the live feed."""

    def __init__(self) -> None:
        self.settings = get_settings()
        # No pre-ping (a round trip per request): `_database` retries once on a connection found dead instead.
        self.engine = search_engine(self.settings.app_database_url, pool_size=10, max_overflow=10, pool_timeout=5)
        self.embedder = get_embedder(self.settings, threads=1)  # many small requests at once: a core each
        self.keyword_index = (
            KeywordIndex(self.engine, self.settings.keyword_refresh_s) if self.settings.keyword_index else None
        )
        self.searcher = Searcher(
            self.engine, self.embedder, self.settings.keyword_rank_window, keyword_index=self.keyword_index
        )
        self.retrieval_slots = anyio.CapacityLimiter(
            self.settings.search_concurrency or (os.cpu_count() or 1) + 1
        )  # made inside the event loop (lifespan)
        url = make_url(self.settings.app_database_url).set(drivername="postgresql")
        self.feed = LiveFeed(url.render_as_string(hide_password=False), self.engine)


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
app.mount("/metrics", make_asgi_app())
app.mount("/static", StaticFiles(directory=STATIC), name="static")


def services(request: Request) -> Services:
    return request.app.state.services


# --- errors and metrics ---------------------------------------------------------------------------------------------
@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {error.get('msg')}")
    return JSONResponse({"message": "; ".join(problems), "detail": jsonable_encoder(exc.errors())}, status_code=422)


@app.exception_handler(DependencyDown)
async def dependency_down(request: Request, exc: DependencyDown) -> JSONResponse:
    return JSONResponse(
        {"message": str(exc), "dependency": exc.dependency},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class RequestMetrics:
    """Duration by route and error counts for every request (a plain ASGI middleware: Starlette's
    BaseHTTPMiddleware runs each request through extra tasks and streams, measurable at this request rate)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # unless the app starts a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/metrics" if scope["path"].startswith("/metrics") else "unmatched")
            if path != "/stream":  # a stream lasts as long as its client
                API_REQUEST_DURATION.labels(path, scope["method"], f"{status // 100}xx").observe(
                    time.perf_counter() - began
                )
            if status >= 400:
                API_ERRORS.labels(path, str(status)).inc()


app.add_middleware(RequestMetrics)


RETRY_AFTER_S = 5  # what a 503 tells clients to wait: about one health probe of the supervisor


def _database(call, *args, **kwargs):
    """Run a database call; a connection failure becomes DependencyDown("postgres"). A pooled connection that
    turns out dead (Postgres restarted since) invalidates the pool, and the call is tried once more on a new one.
    A pool with no connection free within its timeout is an overload, also a 503 (with Retry-After), not a 500."""
    try:
        return call(*args, **kwargs)
    except PoolTimeout:
        raise DependencyDown("postgres", "every connection of the pool is busy; try again shortly") from None
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            _raise_if_down(exc)
            raise
    try:
        return call(*args, **kwargs)
    except PoolTimeout:
        raise DependencyDown("postgres", "every connection of the pool is busy; try again shortly") from None
    except DBAPIError as exc:
        _raise_if_down(exc)
        raise


def _raise_if_down(exc: DBAPIError) -> None:
    if isinstance(exc, OperationalError) or exc.connection_invalidated:
        raise DependencyDown("postgres", type(exc.orig).__name__ if exc.orig else str(exc)) from None


# --- retrieval ------------------------------------------------------------------------------------------------------
# Retrieval is CPU work (embedding the question, ranking): it runs in worker threads, at most
# `search_concurrency` at once, others waiting their turn in order; more at once on two cores only makes every one
# slower and the tail longer (measured). The routes are coroutines: a plain `def` route would cost FastAPI a second
# thread hand-over per request to validate its result.
async def _retrieve(svc: Services, body: SearchRequest, timings: Timings, similarity: bool = False) -> list[Hit]:
    return await anyio.to_thread.run_sync(
        partial(_database, svc.searcher.search, body, timings, similarity=similarity), limiter=svc.retrieval_slots
    )


@app.post("/search", response_model=SearchResponse, summary="Hybrid, vector or keyword search with filters")
async def search(body: SearchRequest, request: Request) -> SearchResponse:
    began = time.perf_counter()
    hits = await _retrieve(services(request), body, Timings())
    return SearchResponse(
        query=body.query, mode=body.mode, hits=hits, took_ms=round((time.perf_counter() - began) * 1000, 2)
    )


@app.post("/answer", response_model=AnswerResponse, summary="An answer with numbered citations of the sources used")
async def answer(body: AnswerRequest, request: Request) -> AnswerResponse:
    svc = services(request)
    timings = Timings()
    began = time.perf_counter()
    hits = await _retrieve(svc, body, timings, similarity=True)
    if svc.settings.llm_base_url:  # waiting on the network: a thread of its own, not a retrieval slot
        result = await run_in_threadpool(answering.answer, svc.settings, body.query, hits)
    else:  # the extractive answerer takes ~0.1 ms
        result = answering.answer(svc.settings, body.query, hits)
    debug = None
    if body.debug:
        debug = {
            "timings_ms": {
                "embed": timings.embed_ms,
                "search": timings.search_ms,
                "llm": result.llm_ms,
                "total": round((time.perf_counter() - began) * 1000, 2),
            },
            "model": svc.embedder.model_name,
            "llm_model": svc.settings.llm_model if svc.settings.llm_base_url else None,
            "min_similarity": svc.settings.answer_min_similarity,
            "retrieved": [
                {"doc_id": hit.doc_id, "similarity": hit.similarity, "score": hit.score, "lineage": hit.lineage}
                for hit in hits
            ],
        }
    return AnswerResponse(
        query=body.query,
        answer=result.text,
        citations=result.citations,
        answerer=result.answerer,
        fallback=result.fallback,
        debug=jsonable_encoder(debug) if debug else None,
    )


# --- freshness ------------------------------------------------------------------------------------------------------
def _recent(svc: Services, limit: int) -> list[Document]:
    with svc.engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE NOT deleted AND {NOT_A_PROBE} "
                "ORDER BY indexed_at DESC LIMIT :n"
            ),
            {"n": limit},
        ).all()
    return [Document(**document_from_row(row)) for row in rows]


@app.get("/events/recent", response_model=RecentEvents, summary="The latest cleaned events, newest indexed first")
def recent_events(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> RecentEvents:
    return RecentEvents(events=_database(_recent, services(request), limit))


def _freshness(svc: Services) -> Freshness:
    with svc.engine.connect() as conn:
        documents, last = conn.execute(text("SELECT count(*), max(indexed_at) FROM documents WHERE NOT deleted")).one()
        p50, p95 = conn.execute(
            text(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM indexed_at - ingested_at)), "
                "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM indexed_at - ingested_at)) "
                "FROM documents WHERE indexed_at > now() - interval '5 minutes' AND ingested_at IS NOT NULL"
            )
        ).one()
    beat = latest(svc.engine, STREAM)
    return Freshness(
        documents=documents,
        last_indexed_at=last,
        lag=beat[1].get("lag") if beat else None,
        stream_heartbeat_at=beat[0] if beat else None,
        ingested_to_searchable_p50_s=None if p50 is None else round(float(p50), 3),
        ingested_to_searchable_p95_s=None if p95 is None else round(float(p95), 3),
    )


@app.get("/freshness", response_model=Freshness, summary="How fresh the index is: lag, last indexed, latency")
def freshness(request: Request) -> Freshness:
    return _database(_freshness, services(request))


@app.get("/stream", summary="Server-sent events: each document as it is indexed, and freshness every 5 s")
async def stream(request: Request) -> EventSourceResponse:
    svc = services(request)
    queue = svc.feed.subscribe()

    async def events():
        next_freshness = 0.0
        try:
            while True:
                if time.monotonic() >= next_freshness:
                    next_freshness = time.monotonic() + FRESHNESS_EVERY_S
                    try:
                        current = await asyncio.to_thread(_freshness, svc)
                        yield {"event": "freshness", "data": current.model_dump_json()}
                    except (OperationalError, DBAPIError):
                        yield {"event": "freshness", "data": json.dumps({"error": "postgres is unavailable"})}
                try:
                    yield await asyncio.wait_for(queue.get(), timeout=max(0.1, next_freshness - time.monotonic()))
                except TimeoutError:
                    continue
        finally:
            svc.feed.unsubscribe(queue)

    return EventSourceResponse(events(), ping=15)


# --- health ---------------------------------------------------------------------------------------------------------
def _check_postgres(svc: Services) -> tuple[bool, str]:
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True, "ok"
    except (OperationalError, DBAPIError) as exc:
        return False, type(exc.orig).__name__ if exc.orig else "unreachable"


def _check_broker(svc: Services) -> tuple[bool, str]:
    for server in svc.settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if port_is_open(host, int(port), timeout=1):
            return True, f"{host}:{port} accepts connections"
    return False, "no bootstrap server accepts connections"


def _check_stream(svc: Services) -> tuple[bool, str]:
    try:
        beat = latest(svc.engine, STREAM)
    except (OperationalError, DBAPIError):
        return False, "heartbeat unreadable (postgres down)"
    if beat is None:
        return False, "no heartbeat yet (is `streamrag stream` running?)"
    at, detail = beat
    age = (datetime.now(UTC) - at).total_seconds()
    if age > svc.settings.stream_heartbeat_max_age_s:
        return False, f"last heartbeat {age:.0f} s ago"
    if not detail.get("active", False):
        return False, "the streaming query is not active"
    # Alive is not enough: events waiting while no micro-batch finishes is a stream that is stuck.
    progress_at = detail.get("last_batch_at") or detail.get("started_at")
    if detail.get("lag") and progress_at:
        quiet = (datetime.now(UTC) - datetime.fromisoformat(progress_at)).total_seconds()
        if quiet > svc.settings.stream_stall_s:
            return False, f"stalled: {detail['lag']} events wait and no micro-batch finished for {quiet:.0f} s"
    return True, f"heartbeat {age:.1f} s ago, lag {detail.get('lag')}"


def _check_dagster(svc: Services) -> tuple[bool, str]:
    try:
        response = httpx.get(f"{svc.settings.dagster_url}/server_info", timeout=2)
        return response.status_code == 200, f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        return False, type(exc).__name__


CHECKS = {"postgres": _check_postgres, "broker": _check_broker, "stream": _check_stream, "dagster": _check_dagster}


@app.get("/health", summary="The service and each dependency; 200 only when all are up")
async def health(request: Request) -> JSONResponse:
    svc = services(request)

    async def timed(check) -> dict:
        began = time.perf_counter()
        try:
            ok, detail = await asyncio.wait_for(asyncio.to_thread(check, svc), timeout=5)
        except TimeoutError:
            ok, detail = False, "no answer within 5 s"
        return {
            "status": "up" if ok else "down",
            "detail": detail,
            "latency_ms": round((time.perf_counter() - began) * 1000, 1),
        }

    results = await asyncio.gather(*(timed(check) for check in CHECKS.values()))
    dependencies = dict(zip(CHECKS, results, strict=True))
    healthy = all(d["status"] == "up" for d in dependencies.values())
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", "service": "up", "dependencies": dependencies},
        status_code=200 if healthy else 503,
    )


# --- UI -------------------------------------------------------------------------------------------------------------
@app.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html")
