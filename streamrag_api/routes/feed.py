"""What the index holds now: GET /events/recent, GET /freshness, and GET /stream (each document as it is indexed,
and freshness every few seconds, as server-sent events)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sse_starlette.sse import EventSourceResponse

from streamrag_api.deps import ServicesDep, get_caller
from streamrag_api.errors import DependencyDown
from streamrag_api.schemas import Document, Freshness, RecentEvents
from streamrag_api.search import document_from_row
from streamrag_assets.documents.heartbeat import latest
from streamrag_assets.documents.liveness import STREAM
from streamrag_assets.documents.queries import index_freshness, recent_documents

FRESHNESS_EVERY_S = 5.0

router = APIRouter(dependencies=[Depends(get_caller)])  # a key for each, when keys are configured


def read_recent(engine: Engine, limit: int) -> list[Document]:
    with engine.connect() as conn:
        rows = recent_documents(conn, limit)
    return [Document(**document_from_row(row)) for row in rows]


def read_freshness(engine: Engine) -> Freshness:
    with engine.connect() as conn:
        index = index_freshness(conn)
    beat = latest(engine, STREAM)
    p50, p95 = index.ingested_to_searchable_p50_s, index.ingested_to_searchable_p95_s
    return Freshness(
        documents=index.documents,
        last_indexed_at=index.last_indexed_at,
        lag=beat[1].get("lag") if beat else None,
        stream_heartbeat_at=beat[0] if beat else None,
        ingested_to_searchable_p50_s=None if p50 is None else round(float(p50), 3),
        ingested_to_searchable_p95_s=None if p95 is None else round(float(p95), 3),
    )


@router.get("/events/recent", response_model=RecentEvents, summary="The latest cleaned events, newest indexed first")
async def recent_events(svc: ServicesDep, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> RecentEvents:
    return RecentEvents(events=await svc.read(read_recent, svc.engine, limit), watermark=await svc.watermark())


@router.get("/freshness", response_model=Freshness, summary="How fresh the index is: lag, last indexed, latency")
async def freshness(svc: ServicesDep) -> Freshness:
    current = await svc.read(read_freshness, svc.engine)
    current.watermark = await svc.watermark()
    return current


@router.get("/stream", summary="Server-sent events: each document as it is indexed, and freshness every 5 s")
async def stream(svc: ServicesDep) -> EventSourceResponse:
    if len(svc.feed.clients) >= svc.settings.api_max_stream_clients:
        raise DependencyDown("the live feed", f"it serves {svc.settings.api_max_stream_clients} subscribers already")
    queue = svc.feed.subscribe()

    async def events():
        next_freshness = 0.0
        try:
            while True:
                if time.monotonic() >= next_freshness:
                    next_freshness = time.monotonic() + FRESHNESS_EVERY_S
                    try:
                        current = await asyncio.to_thread(read_freshness, svc.engine)
                        current.watermark = await svc.watermark()
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
