"""POST /search: the hits for a question, hybrid, vector or keyword, with filters."""

from __future__ import annotations

import time

from fastapi import APIRouter

from streamrag_api.access import check_as_of, forbidden
from streamrag_api.deps import CallerDep, ServicesDep
from streamrag_api.schemas import SearchRequest, SearchResponse
from streamrag_api.search import Timings

router = APIRouter()


@router.post("/search", response_model=SearchResponse, summary="Hybrid, vector or keyword search with filters")
async def search(body: SearchRequest, svc: ServicesDep, caller: CallerDep) -> SearchResponse:
    if body.include_probes and not caller.trusted:
        raise forbidden("include_probes")
    check_as_of(body, svc.settings)
    svc.access.check_rate(caller, "search")
    began = time.perf_counter()
    hits = await svc.retrieve(body, Timings())
    took_ms = round((time.perf_counter() - began) * 1000, 2)
    return SearchResponse(query=body.query, mode=body.mode, hits=hits, took_ms=took_ms, watermark=await svc.watermark())
