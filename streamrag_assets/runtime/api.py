"""The retrieval API (uvicorn) as a supervised process."""

from __future__ import annotations

import sys

import httpx

from streamrag_assets.runtime.dagster import PROJECT_ROOT
from streamrag_assets.runtime.process import ManagedProcess, PortClaim, http_answers
from streamrag_assets.settings import Settings


def api_process(settings: Settings) -> ManagedProcess:
    def ready() -> bool:
        return httpx.get(f"{settings.api_url}/health", timeout=2).status_code in (200, 503)

    return ManagedProcess(
        name="api",
        argv=[sys.executable, "-m", "streamrag_assets.cli", "api"],
        cwd=PROJECT_ROOT,
        log_path=settings.state_dir / "logs" / "api.log",
        pid_path=settings.state_dir / "run" / "api.pid",
        ready=ready,
        # /health waits on every dependency (up to 5 s each); liveness asks only whether the server answers.
        live=lambda: http_answers(f"{settings.api_url}/metrics/", timeout=3),
        address=settings.api_url,
        ports=[PortClaim(settings.api_port, "the API", "STREAMRAG_API_PORT")],
        bind_host=settings.bind_host,
    )
