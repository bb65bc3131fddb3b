"""What the routes share, made once per process (in the app's lifespan) and injected as `ServicesDep`."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from sqlalchemy.engine import make_url

from streamrag_api.access import Access, Caller
from streamrag_api.errors import call_database
from streamrag_api.keyword import KeywordIndex
from streamrag_api.live import LiveFeed
from streamrag_api.schemas import Hit, SearchRequest, Watermark
from streamrag_api.search import Searcher, Timings, search_engine
from streamrag_api.watermark import WatermarkReader
from streamrag_assets.embedding.embedder import get_embedder
from streamrag_assets.settings import get_settings

T = TypeVar("T")

# The pool's 20 connections: retrieval (cores + 1), these reads, /health's and /stream's checks (the event loop's
# default executor, ~6 threads), the keyword index' follower. A burst of requests waits for a slot in order instead
# of timing out of the pool (which would be a 503).
POOL_SIZE, POOL_OVERFLOW = 10, 10
READ_SLOTS = 8


class Services:
    """One connection pool, the embedding model, the searcher and its keyword index, the live feed."""

    def __init__(self) -> None:
        self.settings = get_settings()
        self.access = Access(self.settings)
        # The API's own read-only role. No pre-ping (a round trip per request): `call_database` retries once on a
        # connection found dead instead.
        self.engine = search_engine(
            self.settings.reader_database_url,
            ef_search=self.settings.search_ef_search,
            pool_size=POOL_SIZE,
            max_overflow=POOL_OVERFLOW,
            pool_timeout=5,
        )
        self.embedder = get_embedder(self.settings, threads=1)  # many small requests at once: a core each
        self.keyword_index = (
            KeywordIndex(self.engine, self.settings.keyword_refresh_s, self.settings.keyword_index_path)
            if self.settings.keyword_index
            else None
        )
        self.searcher = Searcher(
            self.engine, self.embedder, self.settings.keyword_rank_window, keyword_index=self.keyword_index
        )
        self.retrieval_slots = anyio.CapacityLimiter(
            self.settings.search_concurrency or (os.cpu_count() or 1) + 1
        )  # made inside the event loop (lifespan)
        self.read_slots = anyio.CapacityLimiter(READ_SLOTS)
        self.watermarks = WatermarkReader(self.settings, self.engine)
        url = make_url(self.settings.reader_database_url).set(drivername="postgresql")
        wake = self.keyword_index.wake if self.keyword_index is not None else None
        self.feed = LiveFeed(url.render_as_string(hide_password=False), self.engine, on_commit=wake)

    # Retrieval is CPU work (embedding the question, ranking): it runs in worker threads, at most
    # `search_concurrency` at once, others waiting their turn in order; more at once on two cores only makes every
    # one slower and the tail longer (measured). The routes are coroutines: a plain `def` route would cost FastAPI a
    # second thread hand-over per request to validate its result.
    async def retrieve(self, body: SearchRequest, timings: Timings, similarity: bool = False) -> list[Hit]:
        return await anyio.to_thread.run_sync(
            partial(call_database, self.searcher.search, body, timings, similarity=similarity),
            limiter=self.retrieval_slots,
        )

    async def watermark(self) -> Watermark:
        """The newest watermark at once; only a process's first response waits for a read (in a worker thread)."""
        latest = self.watermarks.latest()
        return latest if latest is not None else await self.read(self.watermarks.current)

    async def read(self, call: Callable[..., T], *args: Any) -> T:
        """A database read of a route other than retrieval, in a worker thread, at most `READ_SLOTS` at once."""
        return await anyio.to_thread.run_sync(partial(call_database, call, *args), limiter=self.read_slots)


async def get_services(request: Request) -> Services:
    # A coroutine: FastAPI would run a plain function in a worker thread, a hand-over per request.
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_caller(request: Request) -> Caller:
    """The caller of a route that needs an API key when keys are configured (401 otherwise)."""
    return request.app.state.services.access.caller(request)


async def get_optional_caller(request: Request) -> Caller:
    return request.app.state.services.access.optional_caller(request)


CallerDep = Annotated[Caller, Depends(get_caller)]
OptionalCallerDep = Annotated[Caller, Depends(get_optional_caller)]
