"""The ingest process (SSE -> Kafka) as supervised by `streamrag up`."""

from __future__ import annotations

from streamrag_assets.runtime.process import (
    LOOPBACK_HOST,
    ManagedProcess,
    PortClaim,
    cli_service,
    local_http,
    metrics_answer,
)
from streamrag_assets.settings import Settings


def ingest_process(settings: Settings) -> ManagedProcess:
    ports = []
    if settings.ingest_metrics_port:
        ports.append(PortClaim(settings.ingest_metrics_port, "ingest metrics", "STREAMRAG_INGEST_METRICS_PORT"))
    if settings.ingest_source != "wikimedia":
        ports.append(
            PortClaim(settings.source_port, f"the {settings.ingest_source} SSE server", "STREAMRAG_SOURCE_PORT")
        )

    def ready() -> bool:
        if not settings.ingest_metrics_port:
            return True  # no port to ask; the supervisor already checks that the process is alive
        url = f"http://{LOOPBACK_HOST}:{settings.ingest_metrics_port}/metrics"
        return "streamrag_ingest_events_received" in local_http().get(url, timeout=1).text

    return cli_service(
        settings,
        "ingest",
        "ingest",
        ready=ready,
        live=metrics_answer(settings.ingest_metrics_port),
        address=f"{settings.ingest_source} -> {settings.topic}",
        secrets=frozenset({"kafka_sasl_password"}),
        ports=ports,
    )
