"""GET /health: the service and each of its dependencies (Prometheus' /metrics is mounted by the app itself)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from streamrag_api.deps import OptionalCallerDep, ServicesDep
from streamrag_api.health import check_dependencies

router = APIRouter()


@router.get("/health", summary="The service and each dependency; 200 only when all are up")
async def health(svc: ServicesDep, caller: OptionalCallerDep) -> JSONResponse:
    dependencies = await check_dependencies(svc)
    healthy = all(d["status"] == "up" for d in dependencies.values())
    if not caller.trusted:  # details name internal addresses: the statuses only
        dependencies = {name: {"status": d["status"]} for name, d in dependencies.items()}
    return JSONResponse(
        {"status": "ok" if healthy else "degraded", "service": "up", "dependencies": dependencies},
        status_code=200 if healthy else 503,
    )
