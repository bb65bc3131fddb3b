"""The long-running Spark streaming query as supervised by `streamrag up`."""

from __future__ import annotations

import sys

import httpx

from streamrag_assets.services.process import LOOPBACK_HOST, ManagedProcess, PortClaim
from streamrag_assets.settings import Settings


def stream_process(settings: Settings) -> ManagedProcess:
    def ready() -> bool:
        if not settings.stream_metrics_port:
            return True
        url = f"http://{LOOPBACK_HOST}:{settings.stream_metrics_port}/metrics"
        return httpx.get(url, timeout=1).status_code == 200

    return ManagedProcess(
        name="stream",
        argv=[sys.executable, "-m", "streamrag_assets.cli", "stream"],
        log_path=settings.state_dir / "logs" / "stream.log",
        pid_path=settings.state_dir / "run" / "stream.pid",
        ready=ready,
        address=f"{settings.topic} -> {settings.state_dir / 'delta'}",
        ports=[PortClaim(settings.stream_metrics_port, "stream metrics", "STREAMRAG_STREAM_METRICS_PORT")]
        if settings.stream_metrics_port
        else [],
        bind_host=settings.bind_host,
        stop_timeout_s=30.0,
        # The driver stops the query (the micro-batch in progress finishes) before the JVM goes; signalled too,
        # the JVM would shut Spark down under the running batch.
        stop_group=False,
    )
