"""Gold documents -> the pgvector `documents` table, one transaction per batch, idempotent by doc_id.

Upserts whose content_hash is unchanged are neither embedded nor written again; a delete op tombstones every
document of the page (hidden from retrieval, and a replayed old edit cannot bring it back); a rename op re-titles
the page's documents. Database errors are retried with backoff (tenacity); a document that cannot be embedded goes
to `index_dead_letters` with the reason.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, create_engine, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from streamrag_assets.documents.models import DeadLetter, Document, IndexProgress
from streamrag_assets.documents.progress import Progress
from streamrag_assets.embedding.embedder import Embedder
from streamrag_assets.metrics import (
    EVENT_TIME_TO_INDEXED,
    INDEX_DB_DURATION,
    INDEX_DOCS,
    INDEX_EMBED_DURATION,
    INDEX_LAST_INDEXED,
    INGESTED_TO_INDEXED,
)

log = logging.getLogger(__name__)

# The Gold fields stored with each document (besides doc_id, the embedding and the model name).
DOCUMENT_FIELDS = (
    "text",
    "title",
    "page_url",
    "diff_url",
    "wiki",
    "lang",
    "namespace",
    "type",
    "op",
    "event_time",
    "bot",
    "quality_flags",
    "content_hash",
    "event_id",
    "partition",
    "offset",
    "ingested_at",
    "transform_version",
)


@dataclass
class IndexResult:
    embedded: int = 0
    upserted: int = 0
    unchanged: int = 0
    deleted: int = 0
    renamed: int = 0
    dead_letters: int = 0
    left_to_stream: int = 0  # a reconcile's Gold rows of batches a working stream has yet to index (`reindex`)
    embed_seconds: float = 0.0
    doc_ids: list[str] = field(default_factory=list)

    def add(self, other: IndexResult) -> None:
        """Sum ``other``'s counts and time into this one (``doc_ids`` are the caller's to keep: a reindexed window
        does not need them)."""
        for name in ("embedded", "upserted", "unchanged", "deleted", "renamed", "dead_letters"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.embed_seconds += other.embed_seconds


# SQLSTATE classes of errors about the data, not the server: data exceptions (22: a value the column refuses),
# integrity (23) and program limits (54: an index entry too large). psycopg raises the last as an OperationalError.
_DATA_SQLSTATE_CLASSES = ("22", "23", "54")


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says Postgres cannot be reached or used now (down, restarting, out of connections or disk),
    as opposed to refusing the data itself; only the former is worth waiting out."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return isinstance(exc, OperationalError) and not sqlstate.startswith(_DATA_SQLSTATE_CLASSES)


class DocumentIndex:
    def __init__(self, database_url: str, embedder: Embedder, db_attempts: int = 8) -> None:
        """``db_attempts``: tries of a batch while Postgres is unavailable (with backoff, ~35 s for 8) before the
        error is raised; the stream tries once or twice and catches up later instead of holding Spark back."""
        self.engine = create_engine(database_url, pool_pre_ping=True)
        self.embedder = embedder
        self.db_attempts = db_attempts

    def index(
        self,
        gold_rows: list[dict[str, Any]],
        attempts: dict[str, int] | None = None,
        progress: Progress | None = None,
        before_write: Callable[[], None] | None = None,
    ) -> IndexResult:
        """``apply`` plus metrics: outcome counts and the ingested/event-time -> indexed latencies. A batch that
        Postgres refuses for its data (not its availability) is applied one document at a time (`apply_each`)."""
        began = time.perf_counter()
        try:
            result = self.apply(gold_rows, attempts, progress, before_write)
        except DBAPIError as exc:
            if database_unavailable(exc):
                raise
            log.warning("Postgres refused a batch of %d documents (%s); applying them one by one", len(gold_rows), exc)
            result = self.apply_each(gold_rows, attempts, progress, before_write)
        INDEX_DB_DURATION.observe(time.perf_counter() - began - result.embed_seconds)
        INDEX_EMBED_DURATION.observe(result.embed_seconds)
        for outcome in ("embedded", "upserted", "unchanged", "deleted", "renamed"):
            INDEX_DOCS.labels(outcome).inc(getattr(result, outcome))
        INDEX_DOCS.labels("dead_letter").inc(result.dead_letters)
        if result.upserted:
            INDEX_LAST_INDEXED.set_to_current_time()
        now = datetime.now(UTC)
        indexed = set(result.doc_ids)
        for row in gold_rows:
            if row["doc_id"] in indexed:
                if row.get("ingested_at") is not None:
                    INGESTED_TO_INDEXED.observe(max(0.0, (now - row["ingested_at"]).total_seconds()))
                EVENT_TIME_TO_INDEXED.observe(max(0.0, (now - row["event_time"]).total_seconds()))
        return result

    def apply(
        self,
        gold_rows: list[dict[str, Any]],
        attempts: dict[str, int] | None = None,
        progress: Progress | None = None,
        before_write: Callable[[], None] | None = None,
    ) -> IndexResult:
        """`apply_once`, tried again with backoff while Postgres is unavailable (``db_attempts`` tries in all)."""
        for attempt in Retrying(
            retry=retry_if_exception(database_unavailable),
            wait=wait_exponential_jitter(initial=0.5, max=10),
            stop=stop_after_attempt(self.db_attempts),
            reraise=True,
        ):
            with attempt:
                return self.apply_once(gold_rows, attempts, progress, before_write)
        raise AssertionError("unreachable: Retrying re-raises the last error")

    def apply_each(
        self,
        gold_rows: list[dict[str, Any]],
        attempts: dict[str, int] | None = None,
        progress: Progress | None = None,
        before_write: Callable[[], None] | None = None,
    ) -> IndexResult:
        """Apply the rows one transaction each, in event order; a row Postgres refuses becomes a dead letter with
        the database's reason, and the others are indexed. The progress is recorded after the last."""
        if before_write is not None:
            before_write()
        total = IndexResult()
        rows = sorted(gold_rows, key=lambda r: (r["event_time"], r["partition"], r["offset"]))
        for row in rows:
            try:
                one = self.apply([row], attempts)
            except DBAPIError as exc:
                if database_unavailable(exc):
                    raise
                reason = str(exc.orig or exc).strip().splitlines()[0][:300]
                log.error("document %s refused by Postgres (%s); kept as a dead letter", row["doc_id"], reason)
                with Session(self.engine) as session, session.begin():
                    session.add(_dead_letter(row, f"database: {reason}", attempts or {}))
                total.dead_letters += 1
                continue
            total.add(one)
            total.doc_ids += one.doc_ids
        if progress is not None:
            self.set_progress(progress)
        return total

    def apply_once(
        self,
        gold_rows: list[dict[str, Any]],
        attempts: dict[str, int] | None = None,
        progress: Progress | None = None,
        before_write: Callable[[], None] | None = None,
    ) -> IndexResult:
        """Apply Gold rows (in event order) in one transaction; ``attempts`` numbers re-tried dead letters;
        ``progress`` (the stream's batch and partition marks reached) is recorded in the same transaction;
        ``before_write`` is called between embedding and the first write (the stream waits there for Gold)."""
        result = IndexResult()
        rows = sorted(gold_rows, key=lambda r: (r["event_time"], r["partition"], r["offset"]))
        with Session(self.engine) as session, session.begin():
            upserts = [r for r in rows if r["op"] != "delete"]
            known = (
                {
                    doc_id: (content_hash, model_name)
                    for doc_id, content_hash, model_name in session.execute(
                        select(Document.doc_id, Document.content_hash, Document.model_name).where(
                            Document.doc_id.in_([r["doc_id"] for r in upserts])
                        )
                    ).all()
                }
                if upserts
                else {}
            )
            # Embedded again only when the content or the model changed.
            model = self.vector_version
            fresh = [r for r in upserts if known.get(r["doc_id"]) != (r["content_hash"], model)]
            result.unchanged = len(upserts) - len(fresh)
            vectors = self._embed(session, fresh, result, attempts or {})
            if before_write is not None:
                before_write()
            pending: list[dict[str, Any]] = []  # upserts, written together until an op on a page needs them
            for row in rows:
                if row["op"] in ("delete", "rename"):
                    self._upsert(session, pending)
                    pending = []
                if row["op"] == "delete":
                    outcome = cast(
                        CursorResult,
                        session.execute(
                            update(Document)
                            .where(
                                Document.wiki == row["wiki"],
                                Document.title == row["title"],
                                Document.deleted.is_(False),
                                # What the page held when it was deleted: a page made again later under the same
                                # title keeps its documents when the delete is applied a second time (a replay).
                                Document.event_time <= row["event_time"],
                            )
                            .values(deleted=True, deleted_at=func.clock_timestamp())
                        ),
                    )
                    result.deleted += outcome.rowcount or 0
                    continue
                if row["op"] == "rename" and row.get("new_title"):
                    new_url = _retitled_url(row["page_url"], row["new_title"])
                    outcome = cast(
                        CursorResult,
                        session.execute(
                            update(Document)
                            .where(
                                Document.wiki == row["wiki"],
                                Document.title == row["title"],
                                # Likewise the page's documents up to the move: the redirect a move leaves at the old
                                # title is a later document of that title and stays there.
                                Document.event_time <= row["event_time"],
                            )
                            .values(title=row["new_title"], page_url=new_url)
                        ),
                    )
                    result.renamed += outcome.rowcount or 0
                    row = {**row, "title": row["new_title"], "page_url": new_url}
                vector = vectors.get(row["doc_id"])
                if vector is None:
                    continue
                pending.append(
                    {c: row.get(c) for c in DOCUMENT_FIELDS}
                    | {
                        "doc_id": row["doc_id"],
                        "embedding": vector,
                        "model_name": model,
                        "quality_flags": list(row.get("quality_flags") or []),
                    }
                )
                result.upserted += 1
                result.doc_ids.append(row["doc_id"])
            self._upsert(session, pending)
            if progress is not None:
                _record_progress(session, progress)
            _notify(session, result.doc_ids, other_changes=result.deleted + result.renamed)
        return result

    @property
    def vector_version(self) -> str:
        """What a vector written now is made of: the model and the embedding input's version."""
        return f"{self.embedder.model_name};input={EMBEDDING_INPUT_VERSION}"

    def versions_between(self, first: datetime, last: datetime) -> dict[str, tuple[str, str]]:
        """``doc_id -> (content_hash, vector version)`` of every document with ``first <= event_time <= last``, read
        in one pass (deleted documents included: an upsert of one is unchanged, as `apply_once` treats it)."""
        with self.engine.connect() as conn:
            rows = conn.execution_options(yield_per=10_000).execute(
                select(Document.doc_id, Document.content_hash, Document.model_name).where(
                    Document.event_time >= first, Document.event_time <= last
                )
            )
            return {doc_id: (content_hash, model) for doc_id, content_hash, model in rows}

    def replace_text(self, doc_id: str, text: str) -> bool:
        """A document's text made richer (its diff, `enrichment.diffs`) and embedded again; its content hash stays
        the Gold row's, so the row indexed again (a replay) is found unchanged. False: it is deleted or gone."""
        vector = self.embedder.embed([embedding_input(text)])[0].tolist()
        with Session(self.engine) as session, session.begin():
            outcome = cast(
                CursorResult,
                session.execute(
                    update(Document)
                    .where(Document.doc_id == doc_id, Document.deleted.is_(False))
                    .values(text=text, embedding=vector)
                ),
            )
            if outcome.rowcount:
                _notify(session, [doc_id])
            return bool(outcome.rowcount)

    def progress(self, stream: str) -> int | None:
        """The last batch key of ``stream`` whose documents are committed (None before the first)."""
        with Session(self.engine) as session:
            return session.scalar(select(IndexProgress.batch_key).where(IndexProgress.stream == stream))

    def set_progress(self, progress: Progress) -> None:
        with Session(self.engine) as session, session.begin():
            _record_progress(session, progress)

    @staticmethod
    def _upsert(session: Session, values: list[dict[str, Any]]) -> None:
        """Insert or update ``values`` in one statement (a later row for the same doc_id wins)."""
        if not values:
            return
        latest = {v["doc_id"]: v for v in values}  # one row per doc_id: ON CONFLICT cannot touch a row twice
        statement = insert(Document)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[Document.doc_id],
                set_={c: statement.excluded[c] for c in (*DOCUMENT_FIELDS, "embedding", "model_name")}
                | {"indexed_at": statement.excluded.indexed_at},
                where=(Document.content_hash != statement.excluded.content_hash)
                | (Document.model_name != statement.excluded.model_name),
            ),
            list(latest.values()),
        )

    def _embed(
        self, session: Session, rows: list[dict[str, Any]], result: IndexResult, attempts: dict[str, int]
    ) -> dict[str, list[float]]:
        if not rows:
            return {}
        began = time.perf_counter()
        try:
            vectors = self.embedder.embed([embedding_input(r["text"]) for r in rows])
            result.embedded = len(rows)
            result.embed_seconds = time.perf_counter() - began
            return {r["doc_id"]: v.tolist() for r, v in zip(rows, vectors, strict=True)}
        except Exception as batch_error:  # find the bad document(s); the rest are indexed
            log.warning("embedding a batch failed (%s); embedding one by one", batch_error)
        out: dict[str, list[float]] = {}
        for row in rows:
            try:
                out[row["doc_id"]] = self.embedder.embed([embedding_input(row["text"])])[0].tolist()
                result.embedded += 1
            except Exception as exc:
                log.error("document %s cannot be embedded (%r); kept as a dead letter", row["doc_id"], exc)
                session.add(_dead_letter(row, f"embedding: {exc!r}", attempts))
                result.dead_letters += 1
        return out


def _dead_letter(row: dict[str, Any], reason: str, attempts: dict[str, int]) -> DeadLetter:
    """A document kept aside with why; its payload is JSON, where a NUL is an escape Postgres can store."""
    return DeadLetter(
        doc_id=str(row["doc_id"]).replace("\x00", ""),
        payload=json.dumps(row, default=str),
        reason=reason.replace("\x00", ""),
        attempts=attempts.get(row["doc_id"], 1),
    )


# The parts of a Gold document's text (`streaming.refine.render_text`) that a sentence embedding cannot use — the
# change's size and its time, which the document's own fields and the search filters carry — are left out of what the
# index embeds: they were 40% of a replayed edit's tokens (56.6 -> 33.8 on average), and embedding is most of the
# stream's CPU. On the replayed edits the page a query names is found as well or better without them
# (benchmarks/RESULTS.md, issue 25). The version is stored with each vector (`model_name`).
EMBEDDING_INPUT_VERSION = "2"
_NOT_EMBEDDED = re.compile(
    r"(?: \([+-][\d,]+ bytes, now [\d,]+ bytes\))? at \d{4}-\d\d-\d\d \d\d:\d\d UTC(?=\.(?: Comment: |$))"
)


def embedding_input(text: str) -> str:
    """What the index embeds for a document's text (see `EMBEDDING_INPUT_VERSION`)."""
    return _NOT_EMBEDDED.sub("", text, count=1)


NOTIFY_CHANNEL = "streamrag_documents"
_NOTIFY_CHUNK = 150  # doc ids per notification (Postgres caps a payload at 8000 bytes)


def _record_progress(session: Session, progress: Progress) -> None:
    """The progress only moves on; a partition's mark replaces the one recorded (progress is recorded in batch
    order, so a later mark is never behind), partitions not in this one keep theirs."""
    statement = insert(IndexProgress).values(
        stream=progress.stream, batch_key=progress.batch_key, partitions=progress.marks_json()
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[IndexProgress.stream],
            set_={
                "batch_key": func.greatest(IndexProgress.batch_key, statement.excluded.batch_key),
                "partitions": IndexProgress.partitions.op("||")(statement.excluded.partitions),
                "updated_at": func.now(),
            },
        )
    )


def _notify(session: Session, doc_ids: list[str], other_changes: int = 0) -> None:
    """Tell listeners (the API's /stream and keyword index) which documents this transaction indexed; delivered on
    commit. A transaction that only deleted or renamed documents sends an empty list (the keyword index reads it)."""
    if not doc_ids and other_changes:
        session.execute(select(func.pg_notify(NOTIFY_CHANNEL, "[]")))
    for start in range(0, len(doc_ids), _NOTIFY_CHUNK):
        payload = json.dumps(doc_ids[start : start + _NOTIFY_CHUNK])
        session.execute(select(func.pg_notify(NOTIFY_CHANNEL, payload)))


def _retitled_url(page_url: str | None, new_title: str) -> str | None:
    if not page_url or "/wiki/" not in page_url:
        return page_url
    return page_url.split("/wiki/", 1)[0] + "/wiki/" + new_title.replace(" ", "_")
