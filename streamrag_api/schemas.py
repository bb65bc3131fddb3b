"""Request and response bodies of the API: what OpenAPI shows and what input is checked against."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_QUERY_CHARS = 1000
ChangeType = Literal["edit", "new", "log"]
Mode = Literal["vector", "keyword", "hybrid"]


def _text(value: str) -> str:
    """Text Postgres can hold: no NUL characters, no unpaired surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it holds an unpaired surrogate)") from None
    return value


AS_OF_CLOCK_SKEW = timedelta(minutes=5)


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wiki: list[str] | None = Field(None, max_length=50, description="Wiki database names, e.g. enwiki, commonswiki.")
    lang: list[str] | None = Field(None, max_length=50, description="Language codes, e.g. en, de.")
    namespace: list[Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]] | None = Field(
        None, max_length=50, description="MediaWiki namespace numbers (0 = articles)."
    )
    type: list[ChangeType] | None = Field(None, description="Kinds of change.")
    since: datetime | None = Field(None, description="Event time from (inclusive); UTC when no zone is given.")
    until: datetime | None = Field(None, description="Event time before (exclusive).")
    exclude_bots: bool = Field(False, description="Leave out edits made by bots.")

    @field_validator("since", "until")
    @classmethod
    def _zone(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @field_validator("wiki", "lang")
    @classmethod
    def _names(cls, values: list[str] | None) -> list[str] | None:
        if values is not None and any(not v.strip() or len(v) > 64 for v in values):
            raise ValueError("names must be non-empty and at most 64 characters")
        return [_text(v) for v in values] if values is not None else None

    @model_validator(mode="after")
    def _range(self) -> Filters:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")
    top_k: int = Field(10, ge=1, le=50, description="How many hits (1-50).")
    mode: Mode = Field("hybrid", description="vector (pgvector), keyword (BM25) or hybrid (both, fused by RRF).")
    filters: Filters = Field(default_factory=Filters)
    recency_boost: float = Field(
        0.0, ge=0, le=10, description="Favour recent edits: score x (1 + boost x 2^(-age / 24 h)). 0 = off."
    )
    include_probes: bool = Field(False, description="Also return the freshness probe's documents (for the probe).")
    as_of: datetime | None = Field(
        None,
        description="Search the index as it stood then: the documents written by that time, pages deleted since "
        "included, later ones left out (UTC when no zone is given; within the retention window).",
    )

    @field_validator("as_of")
    @classmethod
    def _as_of_zone(cls, value: datetime | None) -> datetime | None:
        value = _utc(value)
        if value is not None and value > datetime.now(UTC) + AS_OF_CLOCK_SKEW:  # a client's clock a little ahead
            raise ValueError("as_of is in the future: leave it out to search the index as it is now")
        return value

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must contain something other than whitespace")
        return _text(value.strip())


class Lineage(BaseModel):
    event_id: str
    partition: int
    offset: int
    transform_version: str | None = None


class Document(BaseModel):
    doc_id: str
    title: str
    text: str
    wiki: str
    lang: str
    namespace: int
    type: str
    bot: bool
    page_url: str | None
    diff_url: str | None
    event_time: datetime
    ingested_at: datetime | None
    indexed_at: datetime
    lineage: Lineage


class Hit(Document):
    score: float = Field(
        ..., description="Higher is better; cosine similarity (vector), text relevance (keyword), RRF (hybrid)."
    )
    similarity: float | None = Field(None, description="Cosine similarity of the query and the document, when known.")


class Watermark(BaseModel):
    """How current the index is (a low watermark from its progress per partition and the topic's heads)."""

    ingested_through: datetime | None = Field(
        ..., description="Every event received (ingested) before this is searchable; now when nothing waits."
    )
    event_time_through: datetime | None = Field(
        ..., description="The same for the time of the edits (within a partition edits arrive in about that order)."
    )
    lag_events: int | None = Field(..., description="Events in the topic not indexed yet (None: broker unreachable).")
    ingested_to_searchable_p95_s: float | None = Field(..., description="Over the last 5 minutes' documents.")
    checked_at: datetime


class SearchResponse(BaseModel):
    query: str
    mode: Mode
    hits: list[Hit]
    took_ms: float
    watermark: Watermark | None = None


class AnswerRequest(SearchRequest):
    top_k: int = Field(5, ge=1, le=20, description="How many documents to read (1-20).")
    debug: bool = Field(False, description="Include timings, model and the sources' lineage.")


class Citation(BaseModel):
    n: int = Field(..., description="The [n] marker in the answer.")
    doc_id: str
    title: str
    page_url: str | None
    diff_url: str | None
    event_time: datetime
    indexed_at: datetime
    lineage: Lineage
    similarity: float | None = Field(None, description="Why it was chosen: its cosine similarity to the question.")


class AnswerResponse(BaseModel):
    query: str
    answer: str
    citations: list[Citation] = Field(..., description="Exactly the sources the answer cites, numbered as cited.")
    answerer: Literal["extractive", "llm"]
    fallback: str | None = Field(None, description="Why the LLM was not used, when it was configured but failed.")
    debug: dict | None = None
    watermark: Watermark | None = None


class RecentEvents(BaseModel):
    events: list[Document]
    watermark: Watermark | None = None


class Freshness(BaseModel):
    documents: int
    last_indexed_at: datetime | None
    lag: int | None = Field(None, description="Records in the topic the streaming job has not processed yet.")
    stream_heartbeat_at: datetime | None
    ingested_to_searchable_p50_s: float | None = Field(None, description="Over the last 5 minutes' documents.")
    ingested_to_searchable_p95_s: float | None = None
    watermark: Watermark | None = None
