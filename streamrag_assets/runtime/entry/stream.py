"""The stream's process: the Spark query, its status and metrics, its heartbeat in Postgres and its reports to
Dagster, and a clean stop on SIGTERM."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum

from py4j.protocol import Py4JError
from pyspark.sql.streaming import StreamingQuery

from streamrag_assets.documents.heartbeat import HeartbeatThread
from streamrag_assets.documents.liveness import STREAM
from streamrag_assets.documents.reports import StreamReporter
from streamrag_assets.kafka.retention import BrokerRetention
from streamrag_assets.metrics import STREAM_PAUSED
from streamrag_assets.runtime.memory import release_periodically
from streamrag_assets.runtime.signals import Shutdown, note_on_signal, raise_on_signal, serve_metrics, stopping
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.checkpoint import checkpoint_lock, committed_offsets, pause_request
from streamrag_assets.streaming.pipeline import start_query
from streamrag_assets.streaming.status import StreamStatus

log = logging.getLogger(__name__)


class QueryFailed(RuntimeError):
    pass


class _Outcome(Enum):
    ENDED = "ended"  # by itself: finished (availableNow) or failed
    STOPPED = "stopped"  # by SIGTERM/SIGINT
    PAUSED = "paused"  # for a bounded run that asked (`checkpoints_for_run`)


def main(settings: Settings, available_now: bool, announce=print) -> None:
    """Run the query until it ends or SIGTERM/SIGINT stops it; the continuous query also pauses while a bounded run
    (a replay, a reprocess, a catch-up) asks for the checkpoints. Raises `QueryAlreadyRunning` when another process
    holds the checkpoint, `QueryFailed` when the query ends with an error."""
    logging.getLogger("streamrag_assets").setLevel(logging.INFO)
    serve_metrics(0 if available_now else settings.stream_metrics_port, settings.bind_host)
    release_periodically(settings.memory_trim_interval_s)
    raise_on_signal()  # until the query runs (see `_run_until_stopped`)
    reporter = heartbeat = None
    status = StreamStatus(settings)
    if not available_now and settings.dagster_report_interval_s > 0:
        reporter = StreamReporter(settings.app_database_url, settings.dagster_report_interval_s)

    def on_batch(result) -> None:
        status.on_batch(result)
        if reporter is not None:
            reporter.add(result)

    def beat() -> None:
        nonlocal heartbeat
        if heartbeat is None and not available_now and settings.index_enabled:  # it lives next to the documents
            heartbeat = HeartbeatThread(settings.app_database_url, STREAM, status.detail, interval_s=5.0)

    outcome = _Outcome.ENDED
    try:
        if not available_now:
            _wait_while_paused(settings, status, beat)
        with checkpoint_lock(settings):
            query = start_query(settings, available_now=available_now, on_batch=on_batch)
            status.query = query
            beat()
            announce(f"[streamrag] streaming {settings.topic} -> Delta tables under {settings.delta_location}")
            with _broker_retention(settings, enabled=not available_now):
                outcome = _run_until_stopped(query, None if available_now else settings, status)
            if outcome is _Outcome.STOPPED:
                return
    except Shutdown:  # stopped while the query was starting, or while paused
        return
    finally:
        for closing in (heartbeat, reporter, status):
            if closing is not None:
                closing.close()
    if outcome is _Outcome.PAUSED:
        _start_afresh()
    if query.exception() is not None:
        raise QueryFailed(f"the streaming query failed: {query.exception()}")


@contextmanager
def _broker_retention(settings: Settings, enabled: bool) -> Iterator[None]:
    """The embedded broker's retention while this query holds the checkpoints, and only then: its floor is this
    query's progress, and a bounded run (a reprocess re-reading the topic) takes the checkpoints only after the last
    sweep has ended."""
    if not (enabled and settings.embedded_kafka and settings.broker_retention_s > 0):
        yield
        return
    retention = BrokerRetention(settings, floor=lambda: committed_offsets(settings)).start()
    try:
        yield
    finally:
        retention.close()


def _wait_while_paused(settings: Settings, status: StreamStatus, beat: Callable[[], None]) -> None:
    """Before taking the checkpoints: wait while a bounded run has asked for them, beating as "paused" (so neither
    the supervisor nor /health takes the wait for a hang)."""
    request = pause_request(settings)
    if request is None:
        return
    log.info("paused for %s; the query resumes when it ends", request.who)
    status.paused_for = request.who
    STREAM_PAUSED.set(1)
    beat()
    while pause_request(settings) is not None:
        stopping.wait(1.0)
    status.paused_for = None
    STREAM_PAUSED.set(0)
    log.info("%s ended; resuming from the checkpoint", request.who)


def _start_afresh() -> None:
    """Replace this process by a fresh one (same pid: the supervisor sees it running), which waits for the bounded run
    and starts the query again. Fresh rather than a second query here: the Spark session, the index worker, the
    trigger listener and the Silver duplicate cache are made for one query per process."""
    from streamrag_assets.enrichment.diffs import stop_all

    log.info("the query stopped for a bounded run; this process starts afresh and waits for it")
    stop_all()  # the diffs the enricher holds are written beside Gold: the new process would not have them
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "streamrag_assets.cli", "stream"])


def _run_until_stopped(query: StreamingQuery, pausable: Settings | None, status: StreamStatus) -> _Outcome:
    """Wait until the query ends, SIGTERM/SIGINT stops it, or (``pausable``: the continuous query's settings) a
    bounded run asks for the checkpoints. From here on the signals only set `stopping`: an exception raised inside a
    py4j call (waiting on `awaitTermination`) leaves that thread's gateway connection waiting for the JVM's answer,
    and `query.stop()` sent on it then waits for ever (the stream ignored SIGTERM and was killed after
    `stop_timeout_s`)."""
    note_on_signal()
    try:
        while query.isActive:
            if stopping.wait(1.0):
                # A micro-batch in progress is interrupted (Spark logs its stack traces): it is not committed, and
                # runs again at the next start.
                query.stop()
                return _Outcome.STOPPED
            if pausable is not None and (request := pause_request(pausable)) is not None:
                log.info("%s asks for the checkpoints; pausing at the end of the micro-batch", request.who)
                status.paused_for = request.who
                STREAM_PAUSED.set(1)
                _stop_between_batches(query)
                return _Outcome.PAUSED
    except (Py4JError, OSError):  # py4j's connection errors are OSErrors
        if not stopping.is_set():
            raise
        # Signalled as a process group (`down`), the JVM stops its side itself; the batch it was in is not
        # committed and runs again at the next start.
        log.info("Spark stopped with the process; so did the query")
        return _Outcome.STOPPED
    return _Outcome.ENDED


def _stop_between_batches(query: StreamingQuery, wait_s: float = 60.0) -> None:
    """Stop the query when no micro-batch runs (a batch still running after ``wait_s`` is interrupted: it was not
    committed, and runs again when the query resumes)."""
    deadline = time.monotonic() + wait_s
    while query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(0.1)
    query.stop()
