"""The stream's process: the Spark query, its status and metrics, its heartbeat in Postgres and its reports to
Dagster, and a clean stop on SIGTERM."""

from __future__ import annotations

import logging

from py4j.protocol import Py4JError
from pyspark.sql.streaming import StreamingQuery

from streamrag_assets.documents.heartbeat import STREAM, HeartbeatThread
from streamrag_assets.runtime.signals import Shutdown, note_on_signal, raise_on_signal, serve_metrics, stopping
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.checkpoint import checkpoint_lock
from streamrag_assets.streaming.pipeline import start_query
from streamrag_assets.streaming.status import StreamStatus

log = logging.getLogger(__name__)


class QueryFailed(RuntimeError):
    pass


def main(settings: Settings, available_now: bool, announce=print) -> None:
    """Run the query until it ends or SIGTERM/SIGINT stops it. Raises `QueryAlreadyRunning` when another process
    holds the checkpoint, `QueryFailed` when the query ends with an error."""
    logging.getLogger("streamrag_assets").setLevel(logging.INFO)
    serve_metrics(0 if available_now else settings.stream_metrics_port, settings.bind_host)
    raise_on_signal()  # until the query runs (see `_run_until_stopped`)
    reporter = heartbeat = None
    status = StreamStatus(settings)
    if not available_now and settings.dagster_report_interval_s > 0:
        # Imported here: reporting loads Dagster's instance machinery, which an availableNow run does not need.
        from streamrag_assets.runtime.dagster_reporter import DagsterReporter

        reporter = DagsterReporter(settings)

    def on_batch(result) -> None:
        status.on_batch(result)
        if reporter is not None:
            reporter.add(result)

    try:
        with checkpoint_lock(settings):
            query = start_query(settings, available_now=available_now, on_batch=on_batch)
            status.query = query
            if not available_now and settings.index_enabled:  # the heartbeat lives next to the documents
                heartbeat = HeartbeatThread(settings.app_database_url, STREAM, status.detail, interval_s=5.0)
            announce(f"[streamrag] streaming {settings.topic} -> Delta tables under {settings.state_dir / 'delta'}")
            if _run_until_stopped(query):
                return
    except Shutdown:  # stopped while the query was starting
        return
    finally:
        for closing in (heartbeat, reporter, status):
            if closing is not None:
                closing.close()
    if query.exception() is not None:
        raise QueryFailed(f"the streaming query failed: {query.exception()}")


def _run_until_stopped(query: StreamingQuery) -> bool:
    """Wait until the query ends (False), or SIGTERM/SIGINT stops it (True). From here on the signals only set
    `stopping`: an exception raised inside a py4j call (waiting on `awaitTermination`) leaves that thread's gateway
    connection waiting for the JVM's answer, and `query.stop()` sent on it then waits for ever (the stream ignored
    SIGTERM and was killed after `stop_timeout_s`)."""
    note_on_signal()
    try:
        while query.isActive:
            if stopping.wait(1.0):
                # A micro-batch in progress is interrupted (Spark logs its stack traces): it is not committed, and
                # runs again at the next start.
                query.stop()
                return True
    except (Py4JError, OSError):  # py4j's connection errors are OSErrors
        if not stopping.is_set():
            raise
        # Signalled as a process group (`down`), the JVM stops its side itself; the batch it was in is not
        # committed and runs again at the next start.
        log.info("Spark stopped with the process; so did the query")
        return True
    return False
