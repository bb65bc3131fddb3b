"""The long-running Spark streaming query as supervised by `streamrag up`."""

from __future__ import annotations

import psycopg

from streamrag_assets.documents.liveness import STREAM, seconds_since_beat
from streamrag_assets.runtime.process import (
    LOOPBACK_HOST,
    ManagedProcess,
    cli_service,
    http_answers,
    local_http,
    metrics_claim,
    postgres_dsn,
)
from streamrag_assets.settings import Settings


def heartbeat_age_s(settings: Settings) -> float | None:
    """Seconds since the stream's last heartbeat in the app database; None when that cannot be read (no database, no
    beat yet): a database outage is not the stream's fault, and must not get it killed."""
    try:
        return seconds_since_beat(postgres_dsn(settings.app_database_url), STREAM)
    except psycopg.Error:
        return None


def stream_process(settings: Settings) -> ManagedProcess:
    def ready() -> bool:
        if not settings.stream_metrics_port:
            return True
        url = f"http://{LOOPBACK_HOST}:{settings.stream_metrics_port}/metrics"
        return local_http().get(url, timeout=1).status_code == 200

    def live() -> bool:
        # The driver's metrics thread answers while the process runs; the heartbeat thread proves the query's side
        # (it beats every 5 s once the query started, whatever a micro-batch is doing).
        if settings.stream_metrics_port and not http_answers(
            f"http://{LOOPBACK_HOST}:{settings.stream_metrics_port}/metrics"
        ):
            return False
        if settings.index_enabled:
            age = heartbeat_age_s(settings)
            return age is None or age <= settings.stream_heartbeat_max_age_s
        return True

    return cli_service(
        settings,
        "stream",
        "stream",
        ready=ready,
        live=live,
        # Ready means the metrics port answers; the query (and its heartbeat) can take a minute more to start.
        liveness_grace_s=settings.startup_timeout_s,
        address=f"{settings.topic} -> {settings.delta_location}",
        secrets=frozenset({"database_url", "kafka_sasl_password", "s3_secret_key"}),
        ports=metrics_claim(settings.stream_metrics_port, "stream metrics", "STREAMRAG_STREAM_METRICS_PORT"),
        stop_timeout_s=30.0,
        # The driver stops the query (the micro-batch in progress finishes) before the JVM goes; signalled too,
        # the JVM would shut Spark down under the running batch.
        stop_group=False,
    )
