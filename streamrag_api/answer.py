"""Answers with numbered citations, from the retrieved documents only.

The default answerer is extractive: no network, deterministic, and it cites only the documents whose sentences it
quotes. An OpenAI-compatible endpoint (settings ``llm_base_url``, ``llm_model``, key from ``STREAMRAG_LLM_API_KEY``)
writes the answer instead when configured; if it fails or times out, the extractive answer is given and the reason is
reported. When nothing retrieved is close enough to the question, the answer is "I don't know", with no citations.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import httpx

from streamrag_api.schemas import Citation, Hit
from streamrag_api.search import query_terms
from streamrag_assets.metrics import API_LLM_DURATION
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

DONT_KNOW = "I don't know: nothing indexed is close enough to the question."
MAX_QUOTED = 3
SENTENCES_PER_SOURCE = 2
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_MARKER = re.compile(r"\[(\d{1,2})\]")


@dataclass
class Answer:
    text: str
    citations: list[Citation]
    answerer: str
    fallback: str | None = None
    llm_ms: float = 0.0


def relevant(hits: list[Hit], min_similarity: float, margin: float) -> list[Hit]:
    """The hits close enough to the question to answer from: at least ``min_similarity`` (query/document cosine)
    and within ``margin`` of the best one. Documents share a template ("X edited Y on wiki ..."), which lifts every
    similarity a little; the margin keeps the answer to the documents that stand out."""
    scored = [hit for hit in hits if hit.similarity is not None and hit.similarity >= min_similarity]
    if not scored:
        return []
    best = max(hit.similarity or 0.0 for hit in scored)
    return [hit for hit in scored if (hit.similarity or 0.0) >= best - margin]


def _citation(n: int, hit: Hit) -> Citation:
    return Citation(
        n=n,
        doc_id=hit.doc_id,
        title=hit.title,
        page_url=hit.page_url,
        diff_url=hit.diff_url,
        event_time=hit.event_time,
        indexed_at=hit.indexed_at,
        lineage=hit.lineage,
        similarity=None if hit.similarity is None else round(hit.similarity, 3),
    )


def extractive(query: str, sources: list[Hit]) -> Answer:
    """Quote, from each of the best sources, the sentences that share words with the question (at most
    ``SENTENCES_PER_SOURCE``, in their order; the first sentence when none does), each quote cited."""
    if not sources:
        return Answer(DONT_KNOW, [], "extractive")
    terms = set(query_terms(query))
    parts, citations = [], []
    for n, hit in enumerate(sources[:MAX_QUOTED], start=1):
        sentences = [s.strip() for s in _SENTENCE_END.split(hit.text) if s.strip()] or [hit.title]
        overlap = [len(terms & set(query_terms(s, limit=200))) for s in sentences]
        best = sorted(range(len(sentences)), key=lambda i: -overlap[i])[:SENTENCES_PER_SOURCE]
        chosen = [sentences[i] for i in sorted(best) if overlap[i] > 0] or sentences[:1]
        parts.append(f"{' '.join(chosen)} [{n}]")
        citations.append(_citation(n, hit))
    return Answer(" ".join(parts), citations, "extractive")


class LLMFailed(RuntimeError):
    pass


def _prompt(query: str, sources: list[Hit]) -> list[dict[str, str]]:
    numbered = "\n".join(
        f"[{n}] {hit.title} ({hit.wiki}, {hit.event_time:%Y-%m-%d %H:%M} UTC): {hit.text}"
        for n, hit in enumerate(sources, start=1)
    )
    return [
        {
            "role": "system",
            "content": "You answer questions about recent Wikimedia edits using only the numbered sources. Cite "
            "every claim with its source number in square brackets, like [1]. If the sources do not answer the "
            "question, reply exactly: I don't know.",
        },
        {"role": "user", "content": f"Sources:\n{numbered}\n\nQuestion: {query}"},
    ]


def llm(settings: Settings, query: str, sources: list[Hit]) -> Answer:
    """Ask the OpenAI-compatible endpoint; citations are the valid [n] markers it used (others are removed)."""
    headers = {}
    if settings.llm_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.llm_api_key.get_secret_value()}"
    assert settings.llm_base_url is not None, "llm() is called only with an endpoint configured"
    url = settings.llm_base_url.rstrip("/") + "/chat/completions"
    body = {"model": settings.llm_model, "messages": _prompt(query, sources), "temperature": 0}
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=settings.llm_timeout_s)
        response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"]
    except httpx.TimeoutException:
        raise LLMFailed(f"no answer within {settings.llm_timeout_s:g} s") from None
    except httpx.HTTPStatusError as exc:
        raise LLMFailed(f"HTTP {exc.response.status_code}") from None
    except httpx.HTTPError as exc:  # its text names the URL: the type alone goes to clients
        raise LLMFailed(type(exc).__name__) from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMFailed("the response is not an OpenAI chat completion") from None
    if not isinstance(content, str) or not content.strip():
        raise LLMFailed("empty answer")
    cited = [int(n) for n in _MARKER.findall(content) if 1 <= int(n) <= len(sources)]
    text = _MARKER.sub(lambda m: m.group(0) if 1 <= int(m.group(1)) <= len(sources) else "", content).strip()
    used = sorted(set(cited))
    return Answer(text, [_citation(n, sources[n - 1]) for n in used], "llm")


def answer(settings: Settings, query: str, hits: list[Hit]) -> Answer:
    sources = relevant(hits, settings.answer_min_similarity, settings.answer_similarity_margin)
    began = time.perf_counter()
    if not sources:
        result = Answer(DONT_KNOW, [], "llm" if settings.llm_base_url else "extractive")
    elif settings.llm_base_url:
        try:
            result = llm(settings, query, sources)
            API_LLM_DURATION.labels("llm", "ok").observe(time.perf_counter() - began)
        except LLMFailed as exc:
            API_LLM_DURATION.labels("llm", "fallback").observe(time.perf_counter() - began)
            log.warning("the LLM at %s failed (%s); answering extractively", settings.llm_base_url, exc)
            result = extractive(query, sources)
            result.fallback = f"the LLM failed ({exc}); extractive answer given"
    else:
        result = extractive(query, sources)
        API_LLM_DURATION.labels("extractive", "ok").observe(time.perf_counter() - began)
    result.llm_ms = round((time.perf_counter() - began) * 1000, 2)
    return result
