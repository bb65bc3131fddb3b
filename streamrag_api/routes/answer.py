"""POST /answer: an answer from the retrieved documents, citing the ones it used."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder

from streamrag_api import answer as answering
from streamrag_api.access import check_as_of, forbidden
from streamrag_api.deps import CallerDep, ServicesDep
from streamrag_api.schemas import AnswerRequest, AnswerResponse
from streamrag_api.search import Timings
from streamrag_api.watermark import sentence

router = APIRouter()


@router.post("/answer", response_model=AnswerResponse, summary="An answer with numbered citations of the sources used")
async def answer(body: AnswerRequest, svc: ServicesDep, caller: CallerDep) -> AnswerResponse:
    for asked, what in ((body.include_probes, "include_probes"), (body.debug, "debug")):
        if asked and not caller.trusted:
            raise forbidden(what)
    check_as_of(body, svc.settings)
    svc.access.check_rate(caller, "answer")
    timings = Timings()
    began = time.perf_counter()
    hits = await svc.retrieve(body, timings, similarity=True)
    if svc.settings.llm_base_url:  # waiting on the network: a thread of its own, not a retrieval slot
        result = await run_in_threadpool(answering.answer, svc.settings, body.query, hits)
    else:  # the extractive answerer takes ~0.1 ms
        result = answering.answer(svc.settings, body.query, hits)
    debug = None
    if body.debug:
        debug = {
            "timings_ms": {
                "embed": timings.embed_ms,
                "search": timings.search_ms,
                "llm": result.llm_ms,
                "total": round((time.perf_counter() - began) * 1000, 2),
            },
            "model": svc.embedder.model_name,
            "llm_model": svc.settings.llm_model if svc.settings.llm_base_url else None,
            "min_similarity": svc.settings.answer_min_similarity,
            "retrieved": [
                {"doc_id": hit.doc_id, "similarity": hit.similarity, "score": hit.score, "lineage": hit.lineage}
                for hit in hits
            ],
        }
    watermark = await svc.watermark()
    return AnswerResponse(
        query=body.query,
        answer=f"{result.text} {sentence(watermark, body.as_of)}",
        citations=result.citations,
        answerer=result.answerer,
        fallback=result.fallback,
        debug=jsonable_encoder(debug) if debug else None,
        watermark=watermark,
    )
