"""Retrieval over the pgvector `documents` table: vector (HNSW cosine), keyword (Postgres full text) and hybrid
(both lists fused by reciprocal rank), with filters and an optional recency boost. Tombstoned documents (deleted
pages) are never returned. The statements are `streamrag_assets.documents.queries`; the ranking is here."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
from pgvector.psycopg import register_vector
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from streamrag_api.keyword import STOP_WORDS, KeywordIndex
from streamrag_api.schemas import Hit, Lineage, SearchRequest
from streamrag_assets.documents import queries
from streamrag_assets.embedding.embedder import Embedder
from streamrag_assets.metrics import API_EMBED_DURATION, API_SEARCH_DURATION

RRF_K = 60  # the usual constant of reciprocal rank fusion
RECENCY_HALF_LIFE_H = 24.0


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


class Candidate(NamedTuple):
    """A document one retriever ranks: its id, its time (for the recency boost) and that retriever's score."""

    doc_id: str
    event_time: datetime
    score: float


@dataclass
class Timings:
    embed_ms: float = 0.0
    search_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


# Filtered HNSW scans keep going until enough rows pass the filter (pgvector >= 0.8); set once per connection
# (a placeholder until pgvector loads, which adopts it) instead of two SET statements per search. A candidate list
# of 200 by default (`search_ef_search`), not 100: a question lies far from every edit, its nearest documents are
# near ties, and 100 found ~0.75 of the exact ten against ~0.86 at 200 (200k documents) (benchmarks/RESULTS.md).
DEFAULT_EF_SEARCH = 200


def search_connect_options(ef_search: int = DEFAULT_EF_SEARCH) -> str:
    """The pgvector settings of a search connection, as libpq `options`."""
    return f"-c hnsw.ef_search={int(ef_search)} -c hnsw.iterative_scan=relaxed_order"


SEARCH_CONNECT_OPTIONS = search_connect_options()


def search_engine(url: str, ef_search: int = DEFAULT_EF_SEARCH, **pool: Any) -> Engine:
    """The engine searches run on: autocommit (a read needs no BEGIN/ROLLBACK round trips), the HNSW settings, and
    query vectors sent as numpy arrays in pgvector's binary format (its text form costs ~0.2 ms a vector to make)."""
    options = search_connect_options(ef_search)
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"options": options}, **pool)
    event.listen(engine, "connect", lambda connection, _: register_vector(connection))
    return engine


class Searcher:
    """Two round trips at most per search: the candidates (ids and scores, both lists in one statement) and the
    winners' rows. The engine should be in autocommit with the pgvector settings of `SEARCH_CONNECT_OPTIONS`
    (see `search_engine`), so that a search is no more statements than that."""

    def __init__(
        self,
        engine: Engine,
        embedder: Embedder,
        keyword_window: int = 1000,
        keyword_index: KeywordIndex | None = None,
    ) -> None:
        self.engine = engine
        self.embedder = embedder
        self.keyword_window = keyword_window
        self.keyword_index = keyword_index

    def embed(self, query: str, timings: Timings) -> np.ndarray:
        began = time.perf_counter()
        vector = self.embedder.embed([query])[0]
        elapsed = time.perf_counter() - began
        API_EMBED_DURATION.observe(elapsed)
        timings.embed_ms = round(elapsed * 1000, 2)
        return vector

    def search(self, request: SearchRequest, timings: Timings | None = None, similarity: bool = False) -> list[Hit]:
        """The best ``top_k`` hits; ``similarity`` computes the query/document cosine in keyword mode too."""
        timings = timings or Timings()
        vector = self.embed(request.query, timings) if request.mode != "keyword" or similarity else None
        where, params = queries.filter_clause(request.filters, request.include_probes, request.as_of)
        pool = request.top_k if request.mode != "hybrid" else max(40, 4 * request.top_k)
        began = time.perf_counter()
        index = self.keyword_index if self.keyword_index is not None and self.keyword_index.ready else None
        if request.as_of is not None:  # the keyword index holds the present only: Postgres' full text, as of then
            index = None
        by_keyword: list[Candidate] = []
        if request.mode != "vector" and index is not None:
            hits = index.search(request.query, request.filters, pool, request.include_probes)
            by_keyword = [Candidate(*hit) for hit in hits]
        with self.engine.connect() as conn:
            documents: dict[str, dict[str, Any]] = {}
            if request.mode == "vector":  # one statement: the nearest documents, whole
                documents = self._documents(conn, vector, where, params, nearest=pool)
                scored = [
                    (d["similarity"], Candidate(d["doc_id"], d["event_time"], d["similarity"]))
                    for d in documents.values()
                ]
            else:
                by_vector = self._nearest(conn, vector, where, params, pool) if request.mode == "hybrid" else []
                if index is None:  # no keyword index (yet): Postgres' full text
                    by_keyword = self._keyword(conn, query_terms(request.query), where, params, pool)
                if request.mode == "hybrid":
                    scored = _fuse(by_vector, by_keyword)
                else:
                    scored = [(c.score, c) for c in by_keyword]
            if request.recency_boost:
                now = datetime.now(UTC)
                scored = [(score * _recency(c.event_time, now, request.recency_boost), c) for score, c in scored]
            scored.sort(key=lambda pair: pair[0], reverse=True)
            if request.mode == "vector":
                scored = scored[: request.top_k]
            else:  # the winners, whole: a keyword hit deleted or filtered out since the index saw it gives way
                scored = self._winners(conn, vector, where, params, scored, request.top_k, documents)
        elapsed = time.perf_counter() - began
        API_SEARCH_DURATION.labels(request.mode).observe(elapsed)
        timings.search_ms = round(elapsed * 1000, 2)
        return [Hit(**documents[c.doc_id], score=score) for score, c in scored]

    @staticmethod
    def _winners(
        conn,
        vector,
        where: str,
        params: dict,
        scored: list[tuple[float, Candidate]],
        top_k: int,
        documents: dict[str, dict[str, Any]],
    ) -> list[tuple[float, Candidate]]:
        """The best ``top_k`` of ``scored`` (best first) that are still there, their rows read into ``documents``:
        one statement, and one more for each round of candidates that went missing meanwhile (rare)."""
        winners: list[tuple[float, Candidate]] = []
        start = 0
        while len(winners) < top_k and start < len(scored):
            batch = scored[start : start + top_k - len(winners)]
            start += len(batch)
            documents.update(Searcher._documents(conn, vector, where, params, ids=[c.doc_id for _, c in batch]))
            winners += [(score, c) for score, c in batch if c.doc_id in documents]
        return winners

    @staticmethod
    def _nearest(conn, vector, where: str, params: dict, limit: int) -> list[Candidate]:
        found = [Candidate(*row) for row in queries.nearest_candidates(conn, vector, where, params, limit)]
        found.sort(key=lambda c: c.score, reverse=True)  # relaxed_order may return them slightly shuffled
        return found

    def _keyword(self, conn, terms: list[str], where: str, params: dict, limit: int) -> list[Candidate]:
        """Postgres' full text, while the keyword index is not there yet (see `full_text_candidates`)."""
        rows = queries.full_text_candidates(conn, terms, where, params, limit, self.keyword_window)
        return [Candidate(doc_id, event_time, float(rank)) for doc_id, event_time, rank in rows]

    @staticmethod
    def _documents(
        conn, vector, where: str, params: dict, ids: list[str] | None = None, nearest: int | None = None
    ) -> dict[str, dict[str, Any]]:
        """Whole documents passing the filters, with their cosine to the query when there is one: those in ``ids``,
        or the ``nearest`` to the query, best first."""
        out = {}
        for row in queries.search_documents(conn, vector, where, params, ids=ids, nearest=nearest):
            document = document_from_row(row)
            if document["similarity"] is not None:
                document["similarity"] = float(document["similarity"])
            out[document["doc_id"]] = document
        return out


def _fuse(by_vector: list[Candidate], by_keyword: list[Candidate]) -> list[tuple[float, Candidate]]:
    """Reciprocal rank fusion: each list contributes 1 / (k + rank) for each document it holds."""
    scores: dict[str, float] = {}
    candidates: dict[str, Candidate] = {}
    for ranked in (by_vector, by_keyword):
        for rank, candidate in enumerate(ranked, start=1):
            scores[candidate.doc_id] = scores.get(candidate.doc_id, 0.0) + 1.0 / (RRF_K + rank)
            candidates.setdefault(candidate.doc_id, candidate)
    return [(score, candidates[doc_id]) for doc_id, score in scores.items()]


def _recency(event_time: datetime, now: datetime, boost: float) -> float:
    age_h = max(0.0, (now - event_time).total_seconds() / 3600)
    return 1.0 + boost * math.pow(2.0, -age_h / RECENCY_HALF_LIFE_H)
