"""The retrieval API's process: uvicorn serving `streamrag_api.main:app`."""

from __future__ import annotations

import uvicorn

from streamrag_assets.runtime.process import ServiceError
from streamrag_assets.settings import Settings


def main(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    problem = settings.model_copy(update={"bind_host": host or settings.bind_host}).api_auth_problem()
    if problem:
        raise ServiceError(problem)
    uvicorn.run(
        "streamrag_api.main:app",
        host=host or settings.bind_host,
        port=port or settings.api_port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,  # /stream clients must not hold a shutdown open
    )
