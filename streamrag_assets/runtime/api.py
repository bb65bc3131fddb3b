"""The retrieval API (uvicorn) as a supervised process."""

from __future__ import annotations

from streamrag_assets.runtime.dagster import PROJECT_ROOT
from streamrag_assets.runtime.process import ManagedProcess, PortClaim, cli_service, http_answers, local_http
from streamrag_assets.settings import Settings


def api_process(settings: Settings) -> ManagedProcess:
    def ready() -> bool:
        return local_http().get(f"{settings.api_url}/health", timeout=2).status_code in (200, 503)

    return cli_service(
        settings,
        "api",
        "api",
        cwd=PROJECT_ROOT,
        ready=ready,
        # /health waits on every dependency (up to 5 s each); liveness asks only whether the server answers.
        live=lambda: http_answers(f"{settings.api_url}/metrics/", timeout=3),
        address=settings.api_url,
        # The API reads with its own URL; the owner's only when no reader URL is given for an external Postgres.
        # It reads the topic's heads for the watermark.
        secrets=frozenset({"api_database_url", "llm_api_key", "api_keys", "kafka_sasl_password"})
        | (frozenset() if settings.api_database_url else frozenset({"database_url"})),
        ports=[PortClaim(settings.api_port, "the API", "STREAMRAG_API_PORT")],
    )
