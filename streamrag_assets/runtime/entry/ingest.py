"""The ingest process: SSE -> Kafka, with its own local SSE server (kept alive) when the source is not the live one."""

from __future__ import annotations

import logging
import threading

from streamrag_assets.ingest.runner import run_ingest
from streamrag_assets.runtime.memory import release_periodically
from streamrag_assets.runtime.process import ManagedProcess, ServiceError
from streamrag_assets.runtime.signals import Shutdown, raise_on_signal, serve_metrics, stopping
from streamrag_assets.runtime.sse_source import source_url, sse_source_process
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)


def main(settings: Settings, source: str, url: str | None, since: str | None, count: int | None) -> None:
    """Run until SIGTERM/SIGINT. Raises `ServiceError` when a dependency cannot be reached."""
    logging.getLogger("streamrag_assets").setLevel(logging.INFO)
    serve_metrics(settings.ingest_metrics_port, settings.bind_host)
    release_periodically(settings.memory_trim_interval_s)
    raise_on_signal()
    local_server = None
    try:
        if source != "wikimedia" and url is None:
            local_server = sse_source_process(settings, source, settings.ingest_count if count is None else count)
            local_server.start()
            local_server.wait_ready(30)
            threading.Thread(target=_keep_serving, args=(local_server,), name="sse-source", daemon=True).start()
        run_ingest(settings, source, url or source_url(settings, source), since=since, stop=stopping)
    except Shutdown:
        pass
    finally:
        if local_server is not None:
            local_server.stop()


def _keep_serving(server: ManagedProcess) -> None:
    """Start ingest's local SSE server again whenever it dies (killed, crashed), backing off while it cannot start;
    the client reconnects with its Last-Event-ID, so nothing is skipped or repeated."""
    delay = 1.0
    while not stopping.wait(delay):
        if server.running():
            delay = 1.0
            continue
        code = server.proc.returncode if server.proc else None
        log.warning("the local %s exited (code %s); starting it again", server.name, code)
        try:
            server.start()
            server.wait_ready(30)
            delay = 1.0
        except ServiceError as exc:
            log.error("starting the local %s failed: %s", server.name, exc)
            delay = min(delay * 2, 30.0)
