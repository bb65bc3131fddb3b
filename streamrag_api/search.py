"""Retrieval over the pgvector `documents` table: vector (HNSW cosine), keyword (Postgres full text) and hybrid
(both lists fused by reciprocal rank), with filters and an optional recency boost. Tombstoned documents (deleted
pages) are never returned."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine

from streamrag_api.schemas import Filters, Hit, Lineage, SearchRequest
from streamrag_assets.index.embedder import Embedder
from streamrag_assets.index.models import EMBEDDING_DIM
from streamrag_assets.metrics import API_EMBED_DURATION, API_SEARCH_DURATION

RRF_K = 60  # the usual constant of reciprocal rank fusion
RECENCY_HALF_LIFE_H = 24.0
# Words too common to say anything about relevance; left out of keyword queries so that an OR of the question's
# words does not match (and rank) most of the table.
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "you",
        "your",
        "about",
        "after",
        "before",
        "into",
        "over",
        "under",
        "than",
        "then",
        "there",
        "these",
        "those",
        "they",
        "them",
        "he",
        "she",
        "his",
        "her",
        "we",
        "our",
        "us",
        "can",
        "could",
        "would",
        "should",
        "may",
        "might",
        "any",
        "all",
        "some",
        "no",
        "not",
    ]
)
DOCUMENT_COLUMNS = (
    "doc_id, title, text, wiki, lang, namespace, type, bot, page_url, diff_url, event_time, ingested_at, "
    'indexed_at, event_id, "partition", "offset", transform_version'
)


def query_terms(query: str, limit: int = 32) -> list[str]:
    """The question's distinctive words, lower-cased, as full-text terms (letters and digits only)."""
    terms: list[str] = []
    for word in re.findall(r"\w+", query.lower()):
        if word not in STOP_WORDS and word not in terms:
            terms.append(word)
    return terms[:limit]


def document_from_row(row: Any) -> dict[str, Any]:
    data = dict(row._mapping)
    data["lineage"] = Lineage(
        event_id=data.pop("event_id"),
        partition=data.pop("partition"),
        offset=data.pop("offset"),
        transform_version=data.pop("transform_version"),
    )
    return data


@dataclass
class Timings:
    embed_ms: float = 0.0
    search_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


# The canary probe's documents are real documents, hidden from users (see `PROBE_WIKI`).
NOT_A_PROBE = "NOT ('probe' = ANY(quality_flags))"


def _where(filters: Filters, include_probes: bool = False) -> tuple[str, dict[str, Any]]:
    clauses, params = ["NOT deleted"], {}
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


class Searcher:
    def __init__(self, engine: Engine, embedder: Embedder, keyword_window: int = 1000) -> None:
        self.engine = engine
        self.embedder = embedder
        self.keyword_window = keyword_window

    def embed(self, query: str, timings: Timings) -> list[float]:
        began = time.perf_counter()
        vector = self.embedder.embed([query])[0].tolist()
        elapsed = time.perf_counter() - began
        API_EMBED_DURATION.observe(elapsed)
        timings.embed_ms = round(elapsed * 1000, 2)
        return vector

    def search(self, request: SearchRequest, timings: Timings | None = None, similarity: bool = False) -> list[Hit]:
        """The best ``top_k`` hits; ``similarity`` computes the query/document cosine in keyword mode too."""
        timings = timings or Timings()
        vector = self.embed(request.query, timings) if request.mode != "keyword" or similarity else None
        terms = query_terms(request.query) if request.mode != "vector" else []
        where, params = _where(request.filters, request.include_probes)
        pool = request.top_k if request.mode != "hybrid" else max(40, 4 * request.top_k)
        began = time.perf_counter()
        with self.engine.connect() as conn:
            # Filtered HNSW scans keep going until enough rows pass the filter (pgvector >= 0.8).
            conn.execute(text("SET LOCAL hnsw.ef_search = 100"))
            conn.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
            by_vector = self._vector(conn, vector, where, params, pool) if request.mode != "keyword" else []
            by_keyword = self._keyword(conn, terms, where, params, pool) if terms else []
            if request.mode == "vector":
                scored = [(row["similarity"], row) for row in by_vector]
            elif request.mode == "keyword":
                scored = [(row["rank"], row) for row in by_keyword]
            else:
                scored = _fuse(by_vector, by_keyword)
            if request.recency_boost:
                now = datetime.now(UTC)
                scored = [
                    (score * _recency(row["event_time"], now, request.recency_boost), row) for score, row in scored
                ]
            scored.sort(key=lambda pair: pair[0], reverse=True)
            scored = scored[: request.top_k]
            if vector is not None:
                self._similarities(conn, vector, [row for _, row in scored])
            conn.rollback()
        elapsed = time.perf_counter() - began
        API_SEARCH_DURATION.labels(request.mode).observe(elapsed)
        timings.search_ms = round(elapsed * 1000, 2)
        return [
            Hit(
                **{k: v for k, v in row.items() if k not in ("rank", "similarity")},
                score=score,
                similarity=row.get("similarity"),
            )
            for score, row in scored
        ]

    def _vector(self, conn, vector, where: str, params: dict, limit: int) -> list[dict[str, Any]]:
        statement = text(
            f"SELECT {DOCUMENT_COLUMNS}, 1 - (embedding <=> :q) AS similarity FROM documents "
            f"WHERE {where} ORDER BY embedding <=> :q LIMIT :limit"
        ).bindparams(bindparam("q", type_=Vector(EMBEDDING_DIM)))
        rows = conn.execute(statement, {**params, "q": vector, "limit": limit}).all()
        found = [document_from_row(row) | {"similarity": float(row.similarity)} for row in rows]
        found.sort(key=lambda row: row["similarity"], reverse=True)  # relaxed_order may return them slightly shuffled
        return found

    def _keyword(self, conn, terms: list[str], where: str, params: dict, limit: int) -> list[dict[str, Any]]:
        """Documents holding all the terms, ranked by cover density; when none holds them all, those holding any.

        Only the newest ``keyword_window`` matches are ranked: a common word matches a large share of the table,
        and ranking every match (``ts_rank_cd`` reads each one's text vector) cost ~70 ms of Postgres per query at
        100k documents. Newest first is the order this platform's readers want among equally good matches, and
        a query whose matches fit the window is ranked exactly as before."""
        statement = text(
            f"SELECT {DOCUMENT_COLUMNS}, ts_rank_cd(search, query) AS rank "
            f"FROM (SELECT {DOCUMENT_COLUMNS}, search FROM documents "
            f"      WHERE search @@ to_tsquery('simple', :tsquery) AND {where} "
            f"      ORDER BY event_time DESC LIMIT :window) AS recent, "
            f"     to_tsquery('simple', :tsquery) AS query "
            f"ORDER BY rank DESC, event_time DESC LIMIT :limit"
        )
        rows: list = []
        for operator in (" & ", " | ") if len(terms) > 1 else (" & ",):
            values = {**params, "tsquery": operator.join(terms), "limit": limit, "window": self.keyword_window}
            rows = conn.execute(statement, values).all()
            if rows:
                break
        return [document_from_row(row) | {"rank": float(row.rank), "similarity": None} for row in rows]

    @staticmethod
    def _similarities(conn, vector, rows: list[dict[str, Any]]) -> None:
        """Fill in the query/document cosine of ``rows`` that lack it (keyword hits), in one small query."""
        missing = [row["doc_id"] for row in rows if row.get("similarity") is None]
        if not missing:
            return
        statement = text(
            "SELECT doc_id, 1 - (embedding <=> :q) AS similarity FROM documents WHERE doc_id = ANY(:ids)"
        ).bindparams(bindparam("q", type_=Vector(EMBEDDING_DIM)))
        found = dict(conn.execute(statement, {"q": vector, "ids": missing}).all())
        for row in rows:
            if row.get("similarity") is None and row["doc_id"] in found:
                row["similarity"] = float(found[row["doc_id"]])


def _fuse(by_vector: list[dict], by_keyword: list[dict]) -> list[tuple[float, dict]]:
    """Reciprocal rank fusion: each list contributes 1 / (k + rank) for each document it holds."""
    scores: dict[str, float] = {}
    rows: dict[str, dict] = {}
    for ranked in (by_vector, by_keyword):
        for rank, row in enumerate(ranked, start=1):
            scores[row["doc_id"]] = scores.get(row["doc_id"], 0.0) + 1.0 / (RRF_K + rank)
            rows.setdefault(row["doc_id"], row)
    return [(score, rows[doc_id]) for doc_id, score in scores.items()]


def _recency(event_time: datetime, now: datetime, boost: float) -> float:
    age_h = max(0.0, (now - event_time).total_seconds() / 3600)
    return 1.0 + boost * math.pow(2.0, -age_h / RECENCY_HALF_LIFE_H)
