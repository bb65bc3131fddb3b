"""The retrieval API's process: uvicorn serving `streamrag_api.main:app`."""

from __future__ import annotations

import os

import uvicorn

from streamrag_assets.runtime.process import ServiceError
from streamrag_assets.settings import Settings


def main(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    problem = settings.model_copy(update={"bind_host": host or settings.bind_host}).api_auth_problem()
    if problem:
        raise ServiceError(problem)
    # Below the stream on the CPU (every thread the API starts inherits it): a search waits a little when the cores
    # are full, an edit does not — at 10M documents, while 8 clients of hybrid /search ran, inserts went 50 -> 72
    # documents/s with the API 10 steps below (where the CPU held them; benchmarks/RESULTS.md). Idle cores: no change.
    os.nice(settings.api_nice)
    uvicorn.run(
        "streamrag_api.main:app",
        host=host or settings.bind_host,
        port=port or settings.api_port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,  # /stream clients must not hold a shutdown open
    )
