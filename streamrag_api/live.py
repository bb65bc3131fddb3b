"""The live feed behind GET /stream: the index NOTIFYs the ids of the documents each transaction committed; one
LISTEN connection per API process reads them, wakes whoever follows the table (the keyword index), loads the
documents and hands them to every connected client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy.engine import Engine

from streamrag_api.schemas import Document
from streamrag_api.search import document_from_row
from streamrag_assets.documents.queries import live_documents
from streamrag_assets.documents.store import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

QUEUE_SIZE = 500  # per client; a client that falls this far behind loses the oldest documents, not the service


def load_documents(engine: Engine, doc_ids: list[str]) -> list[Document]:
    with engine.connect() as conn:
        rows = live_documents(conn, doc_ids)
    return [Document(**document_from_row(row)) for row in rows]


class LiveFeed:
    def __init__(self, conninfo: str, engine: Engine, on_commit: Callable[[], None] | None = None) -> None:
        self.conninfo = conninfo
        self.engine = engine
        self.on_commit = on_commit  # called (in the event loop, so it must not block) for every notification
        self.clients: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="live-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.clients.discard(queue)

    def publish(self, item: dict[str, Any]) -> None:
        for queue in list(self.clients):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(item)

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    log.info("live feed listening on %s", NOTIFY_CHANNEL)
                    async for notice in conn.notifies():
                        if self.on_commit is not None:
                            self.on_commit()
                        doc_ids = json.loads(notice.payload)
                        if not self.clients:
                            continue
                        documents = await asyncio.to_thread(load_documents, self.engine, doc_ids)
                        for document in documents:
                            self.publish({"event": "document", "data": document.model_dump_json()})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres restarted or unreachable: the feed resumes when it is back
                log.warning("live feed interrupted (%s); reconnecting in 2 s", exc)
                await asyncio.sleep(2)
