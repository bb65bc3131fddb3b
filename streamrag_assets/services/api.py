"""The retrieval API (uvicorn) as a supervised process."""

from __future__ import annotations

import sys

import httpx

from streamrag_assets.services.dagster import PROJECT_ROOT
from streamrag_assets.services.process import ManagedProcess, ensure_port_free
from streamrag_assets.settings import Settings


def api_process(settings: Settings) -> ManagedProcess:
    def prepare() -> None:
        ensure_port_free(settings.bind_host, settings.api_port, "the API", "STREAMRAG_API_PORT")

    def ready() -> bool:
        return httpx.get(f"{settings.api_url}/health", timeout=2).status_code in (200, 503)

    return ManagedProcess(
        name="api",
        argv=[
            sys.executable,
            "-m",
            "uvicorn",
            "streamrag_api.main:app",
            "--host",
            settings.bind_host,
            "--port",
            str(settings.api_port),
            "--no-access-log",
        ],
        cwd=PROJECT_ROOT,
        log_path=settings.state_dir / "logs" / "api.log",
        pid_path=settings.state_dir / "run" / "api.pid",
        ready=ready,
        prepare=prepare,
        address=settings.api_url,
    )
