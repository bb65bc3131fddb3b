"""The pgvector `documents` table (and dead letters) as SQLAlchemy models; migrations create them."""

from __future__ import annotations

from datetime import datetime

from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import BigInteger, Boolean, Computed, DateTime, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

EMBEDDING_DIM = 384


class XID8(UserDefinedType):
    """Postgres' 64-bit transaction id (what `pg_current_xact_id()` returns and snapshots are made of)."""

    cache_ok = True

    def get_col_spec(self, **kw) -> str:
        return "xid8"


class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "documents"

    doc_id: Mapped[str] = mapped_column(String, primary_key=True)
    # 16-bit floats (migration 0008): half the bytes of `vector`, the same neighbours.
    embedding: Mapped[list[float]] = mapped_column(HALFVEC(EMBEDDING_DIM))
    text: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    page_url: Mapped[str | None] = mapped_column(Text)
    diff_url: Mapped[str | None] = mapped_column(Text)
    wiki: Mapped[str] = mapped_column(String)
    lang: Mapped[str] = mapped_column(String)
    namespace: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String)
    op: Mapped[str] = mapped_column(String)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    bot: Mapped[bool] = mapped_column(Boolean)
    quality_flags: Mapped[list[str]] = mapped_column(ARRAY(String), default=list)
    content_hash: Mapped[str] = mapped_column(String)
    # lineage
    event_id: Mapped[str] = mapped_column(String)
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    ingested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    transform_version: Mapped[str] = mapped_column(String)
    model_name: Mapped[str] = mapped_column(String)
    # When the row was written, not when its transaction began (migration 0006).
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.clock_timestamp())
    # A deleted page's documents are tombstoned (hidden from retrieval), so a late upsert cannot resurrect them.
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # As-of search (migration 0011): when the row was first written (NULL for older rows: their `indexed_at`) and
    # when it was tombstoned.
    first_indexed_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    search: Mapped[str] = mapped_column(
        TSVECTOR, Computed("to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(text, ''))", persisted=True)
    )
    # The transaction that last wrote the row (default on insert, a trigger on update; NULL for rows older than
    # migration 0004): followers of the table read what committed since their last snapshot by it.
    written_xid: Mapped[str | None] = mapped_column(XID8, server_default=func.pg_current_xact_id())

    # Rows stay whole in the table's pages up to a page's size (migration 0005 sets toast_tuple_target): over
    # Postgres' 2 kB default the vector would be kept in the TOAST table and read back from there for each hit.
    __table_args__ = (
        Index(
            "documents_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "halfvec_cosine_ops"},
            postgresql_with={"m": 24, "ef_construction": 96},
        ),
        Index("documents_search_gin", "search", postgresql_using="gin"),
        Index("documents_wiki_title", "wiki", "title"),
        Index("documents_event_time", "event_time"),
        Index("documents_filters", "lang", "namespace", "type", "bot"),
        Index("documents_indexed_at", "indexed_at"),
        Index("documents_written_xid", "written_xid"),
    )


class DocumentRemoval(Base):
    """A document row deleted for good (retention), logged by a trigger for the followers of `documents`."""

    __tablename__ = "document_removals"

    doc_id: Mapped[str] = mapped_column(String, primary_key=True)  # not a key in the table; the ORM needs one
    removed_xid: Mapped[str] = mapped_column(XID8, server_default=func.pg_current_xact_id())
    removed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("document_removals_removed_xid", "removed_xid"),)


class DeadLetter(Base):
    __tablename__ = "index_dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    doc_id: Mapped[str] = mapped_column(String)
    payload: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Heartbeat(Base):
    """A long-running component's last sign of life (the stream beats every few seconds while its query runs)."""

    __tablename__ = "pipeline_heartbeats"

    component: Mapped[str] = mapped_column(String, primary_key=True)
    beat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    detail: Mapped[dict] = mapped_column(JSONB, default=dict)


class IndexProgress(Base):
    """The last micro-batch of a stream whose Gold documents are committed here (written in that batch's index
    transaction), so a stream restarted after a crash indexes the batches Spark committed but the index had not."""

    __tablename__ = "index_progress"

    stream: Mapped[str] = mapped_column(String, primary_key=True)
    batch_key: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Per partition of the topic, how far the batches up to `batch_key` reached (migration 0010;
    # `documents.progress.Progress.marks_json`): with the topic's heads, the API's low watermark.
    partitions: Mapped[dict] = mapped_column(JSONB, server_default="{}")


class StreamReport(Base):
    """The continuous query's writes since its last report, as runless asset materializations to be (``events``:
    `streaming.reports`). The stream writes a row every ``dagster_report_interval_s``; a sensor in the Dagster code
    location reports them and removes them (`defs/medallion/sensors.py`): the stream's process never loads Dagster."""

    __tablename__ = "stream_reports"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    reported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    events: Mapped[list] = mapped_column(JSONB)


class DatabaseIdentity(Base):
    """One row, made with the schema (migration 0009): which database this is, for state kept about it elsewhere."""

    __tablename__ = "database_identity"

    id: Mapped[str] = mapped_column(UUID(as_uuid=False), primary_key=True, server_default=func.gen_random_uuid())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    only_one: Mapped[bool] = mapped_column(Boolean, server_default="true", unique=True)
