"""Every read of the `documents` table and its removal log: the column lists are written here once, and the API, the
keyword index and the asset checks call these functions instead of writing SQL of their own."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Row, TextClause, text
from sqlalchemy.engine import Connection

# What a reader is given of a document: what it says, what it can be filtered by, and its lineage.
DOCUMENT_COLUMNS = (
    "doc_id, title, text, wiki, lang, namespace, type, bot, page_url, diff_url, event_time, ingested_at, "
    'indexed_at, event_id, "partition", "offset", transform_version'
)
# The freshness probe's documents are real documents, hidden from users (see `PROBE_WIKI`).
IS_A_PROBE = "'probe' = ANY(quality_flags)"
NOT_A_PROBE = f"NOT ({IS_A_PROBE})"
# What the keyword index holds of a document.
KEYWORD_INDEX_COLUMNS = f"doc_id, title, text, wiki, lang, namespace, type, bot, event_time, {IS_A_PROBE} AS probe"
# TRUNCATE fires no DELETE trigger: migration 0004 logs it in `document_removals` as this id, "every document".
EVERY_DOCUMENT = "*"
_SINCE = (
    "{xid} >= pg_snapshot_xmin(CAST(:previous AS pg_snapshot)) "
    "AND NOT pg_visible_in_snapshot({xid}, CAST(:previous AS pg_snapshot))"
)


@functools.lru_cache(maxsize=256)
def _statement(sql: str) -> TextClause:
    """One SQL text construct per distinct statement (the filters in use vary the WHERE clause)."""
    return text(sql)


# --- search ---------------------------------------------------------------------------------------------------------
class DocumentFilters(Protocol):
    """What a search may be narrowed by (the API's `Filters` body is one)."""

    @property
    def wiki(self) -> Sequence[str] | None: ...
    @property
    def lang(self) -> Sequence[str] | None: ...
    @property
    def namespace(self) -> Sequence[int] | None: ...
    @property
    def type(self) -> Sequence[str] | None: ...
    @property
    def since(self) -> datetime | None: ...
    @property
    def until(self) -> datetime | None: ...
    @property
    def exclude_bots(self) -> bool: ...


# A document as the index held it at :as_of: written by then (`first_indexed_at`, migration 0011; before that
# migration, its `indexed_at`) and not tombstoned by then (`deleted_at`; tombstones older than the migration count as
# deleted when written).
AS_OF = (
    "COALESCE(first_indexed_at, indexed_at) <= :as_of AND (NOT deleted OR COALESCE(deleted_at, indexed_at) > :as_of)"
)


def filter_clause(
    filters: DocumentFilters, include_probes: bool = False, as_of: datetime | None = None
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause of a search (live documents passing the filters; with ``as_of``, the documents as the
    index held them then, pages deleted since included) and its parameters."""
    clauses: list[str] = ["NOT deleted"] if as_of is None else [AS_OF]
    params: dict[str, Any] = {} if as_of is None else {"as_of": as_of}
    if not include_probes:
        clauses.append(NOT_A_PROBE)
    for name in ("wiki", "lang", "namespace", "type"):
        values = getattr(filters, name)
        if values:
            clauses.append(f"{name} = ANY(:f_{name})")
            params[f"f_{name}"] = list(values)
    if filters.since is not None:
        clauses.append("event_time >= :f_since")
        params["f_since"] = filters.since
    if filters.until is not None:
        clauses.append("event_time < :f_until")
        params["f_until"] = filters.until
    if filters.exclude_bots:
        clauses.append("NOT bot")
    return " AND ".join(clauses), params


def nearest_candidates(conn: Connection, vector: Any, where: str, params: dict, limit: int) -> Sequence[Row]:
    """(doc_id, event_time, cosine) of the ``limit`` documents nearest to ``vector`` passing ``where``; nearly in
    order (an iterative HNSW scan in relaxed order may return them slightly shuffled)."""
    statement = _statement(
        f"SELECT doc_id, event_time, 1 - (embedding <=> :q) AS score FROM documents "
        f"WHERE {where} ORDER BY embedding <=> :q LIMIT :limit"
    )
    return conn.execute(statement, {**params, "q": vector, "limit": limit}).all()


def full_text_candidates(
    conn: Connection, terms: list[str], where: str, params: dict, limit: int, window: int
) -> Sequence[Row]:
    """(doc_id, event_time, rank) by Postgres' full text: documents holding all the terms, ranked by cover density;
    when none holds them all, those holding any.

    Only the newest ``window`` matches are ranked: a common word matches a large share of the table, and ranking
    every match (``ts_rank_cd`` reads each one's text vector) cost ~70 ms of Postgres per query at 100k documents.
    Newest first is the order this platform's readers want among equally good matches, and a query whose matches
    fit the window is ranked exactly as before."""
    statement = _statement(
        "SELECT doc_id, event_time, ts_rank_cd(search, query) AS rank "
        "FROM (SELECT doc_id, event_time, search FROM documents "
        f"      WHERE search @@ to_tsquery('simple', :tsquery) AND {where} "
        "      ORDER BY event_time DESC LIMIT :window) AS recent, "
        "     to_tsquery('simple', :tsquery) AS query "
        "ORDER BY rank DESC, event_time DESC LIMIT :limit"
    )
    if not terms:
        return []
    rows: Sequence[Row] = []
    for operator in (" & ", " | ") if len(terms) > 1 else (" & ",):
        values = {**params, "tsquery": operator.join(terms), "limit": limit, "window": window}
        rows = conn.execute(statement, values).all()
        if rows:
            break
    return rows


def search_documents(
    conn: Connection, vector: Any, where: str, params: dict, ids: list[str] | None = None, nearest: int | None = None
) -> Iterable[Row]:
    """Whole documents (`DOCUMENT_COLUMNS` and ``similarity``, their cosine to ``vector`` when there is one) passing
    ``where``: those in ``ids``, or the ``nearest`` to ``vector``, best first."""
    if ids is not None and not ids:
        return []
    similarity = "1 - (embedding <=> :q)" if vector is not None else "NULL::float8"
    which = "doc_id = ANY(:ids)" if ids is not None else "true"
    order = "ORDER BY embedding <=> :q LIMIT :nearest" if nearest is not None else ""
    statement = _statement(
        f"SELECT {DOCUMENT_COLUMNS}, {similarity} AS similarity FROM documents WHERE {which} AND {where} {order}"
    )
    return conn.execute(statement, {**params, "ids": ids, "q": vector, "nearest": nearest})


# --- the live feed and freshness ------------------------------------------------------------------------------------
def recent_documents(conn: Connection, limit: int) -> Sequence[Row]:
    """The ``limit`` live documents indexed last, newest first (`DOCUMENT_COLUMNS`; no probes)."""
    return conn.execute(
        _statement(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE NOT deleted AND {NOT_A_PROBE} "
            "ORDER BY indexed_at DESC LIMIT :n"
        ),
        {"n": limit},
    ).all()


def live_documents(conn: Connection, doc_ids: list[str]) -> Sequence[Row]:
    """Those of ``doc_ids`` still live, in the order they were indexed (`DOCUMENT_COLUMNS`; no probes)."""
    return conn.execute(
        _statement(
            f"SELECT {DOCUMENT_COLUMNS} FROM documents WHERE doc_id = ANY(:ids) AND NOT deleted AND {NOT_A_PROBE} "
            "ORDER BY indexed_at, event_time"
        ),
        {"ids": doc_ids},
    ).all()


class IndexFreshness(NamedTuple):
    documents: int
    last_indexed_at: datetime | None
    # Seconds from ingestion to searchable, over what was indexed in the last 5 minutes (None when nothing was).
    ingested_to_searchable_p50_s: float | None
    ingested_to_searchable_p95_s: float | None


def index_freshness(conn: Connection) -> IndexFreshness:
    documents, last = conn.execute(text("SELECT count(*), max(indexed_at) FROM documents WHERE NOT deleted")).one()
    p50, p95 = conn.execute(
        text(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM indexed_at - ingested_at)), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM indexed_at - ingested_at)) "
            "FROM documents WHERE indexed_at > now() - interval '5 minutes' AND ingested_at IS NOT NULL"
        )
    ).one()
    return IndexFreshness(documents, last, p50, p95)


def index_progress_partitions(conn: Connection, stream: str) -> dict[str, Any] | None:
    """The partition marks the index recorded for ``stream`` (`documents.progress`); None before any."""
    return conn.execute(
        text("SELECT partitions FROM index_progress WHERE stream = :stream"), {"stream": stream}
    ).scalar_one_or_none()


SEARCHABLE_SAMPLE = 1000  # documents the searchable p95 is taken over, at most: its cost stays flat with the rate


def searchable_p95_s(conn: Connection) -> float | None:
    """p95 of ingested -> indexed over the newest `SEARCHABLE_SAMPLE` documents indexed in the last five minutes
    (None: none were)."""
    return conn.execute(
        text(
            "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds) FROM ("
            "  SELECT extract(epoch FROM indexed_at - ingested_at) AS seconds FROM documents"
            "  WHERE indexed_at > now() - interval '5 minutes' AND ingested_at IS NOT NULL"
            "  ORDER BY indexed_at DESC LIMIT :sample) AS newest"
        ),
        {"sample": SEARCHABLE_SAMPLE},
    ).scalar_one()


# --- followers of the table (the keyword index) ---------------------------------------------------------------------
def current_snapshot(conn: Connection) -> str:
    """The snapshot the connection's transaction reads, to follow the table from (see `removed_since`)."""
    return conn.execute(text("SELECT pg_current_snapshot()::text")).scalar_one()


def database_identity(conn: Connection) -> str:
    """This database's id (migration 0009): state kept about it elsewhere is for it and no other."""
    return str(conn.execute(text("SELECT id FROM database_identity")).scalar_one())


def estimated_documents(conn: Connection) -> int:
    """The table's rows as Postgres last estimated them (VACUUM, ANALYZE; 0 before the first): no scan."""
    return max(
        0, int(conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'documents'::regclass")).scalar_one())
    )


def keyword_index_documents(conn: Connection) -> Iterable[Row]:
    """Every live document as the keyword index holds it (`KEYWORD_INDEX_COLUMNS`), streamed 5,000 rows at a time."""
    return conn.execution_options(yield_per=5000).execute(
        text(f"SELECT {KEYWORD_INDEX_COLUMNS} FROM documents WHERE NOT deleted")
    )


def removed_since(conn: Connection, snapshot: str) -> Iterable[str]:
    """The ids of the documents deleted for good since ``snapshot`` (`EVERY_DOCUMENT` for a TRUNCATE)."""
    return conn.execute(
        text(f"SELECT doc_id FROM document_removals WHERE {_SINCE.format(xid='removed_xid')}"), {"previous": snapshot}
    ).scalars()


def written_since(conn: Connection, snapshot: str) -> Iterable[Row]:
    """The documents written since ``snapshot`` (`KEYWORD_INDEX_COLUMNS` and ``deleted``), tombstones included."""
    return conn.execute(
        text(f"SELECT {KEYWORD_INDEX_COLUMNS}, deleted FROM documents WHERE {_SINCE.format(xid='written_xid')}"),
        {"previous": snapshot},
    )


# --- checks ---------------------------------------------------------------------------------------------------------
def stored_doc_ids(conn: Connection) -> set[str]:
    """Every document id in the table, tombstones included."""
    return {row[0] for row in conn.execute(text("SELECT doc_id FROM documents"))}


def document_count(conn: Connection) -> int:
    """Rows in the table, tombstones included."""
    return int(conn.execute(text("SELECT count(*) FROM documents")).scalar_one())
