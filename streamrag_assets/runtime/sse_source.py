"""The local recording/synthetic SSE server as a supervised process (started by `streamrag ingest`)."""

from __future__ import annotations

import sys
from pathlib import Path

from streamrag_assets.runtime.process import LOOPBACK_HOST, ManagedProcess, PortClaim, local_http
from streamrag_assets.settings import Settings


def sse_source_process(
    settings: Settings, source: str, count: int | None = None, file: Path | None = None
) -> ManagedProcess:
    """The SSE server for ``source`` (recording or synthetic), or serving the lines of an NDJSON ``file``."""
    port = settings.source_port
    argv = [
        sys.executable,
        "-m",
        "streamrag_assets.cli",
        "sse-server",
        "--source",
        source,
        "--port",
        str(port),
        "--rate",
        str(settings.ingest_rate),
        "--seed",
        str(settings.ingest_seed),
        "--malformed-fraction",
        str(settings.ingest_malformed_fraction),
    ]
    if count is not None:
        argv += ["--count", str(count)]
    if file is not None:
        argv += ["--file", str(file)]

    def ready() -> bool:
        return local_http().get(f"http://{LOOPBACK_HOST}:{port}/health", timeout=1).status_code == 200

    return ManagedProcess(
        name=f"{source}-source",
        argv=argv,
        env=settings.to_env(secrets=()),  # it serves events: no secret
        log_path=settings.state_dir / "logs" / f"{source}-source.log",
        pid_path=settings.state_dir / "run" / f"{source}-source.pid",
        ready=ready,
        address=f"http://{LOOPBACK_HOST}:{port}",
        ports=[PortClaim(port, f"the {source} SSE server", "STREAMRAG_SOURCE_PORT")],
    )


def source_url(settings: Settings, source: str) -> str:
    if source == "wikimedia":
        return settings.wikimedia_url
    from streamrag_assets.ingest.sse_server import STREAM_PATH

    return f"http://{LOOPBACK_HOST}:{settings.source_port}{STREAM_PATH}"
