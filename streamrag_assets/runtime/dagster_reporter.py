"""The stream's process reports its micro-batches to Dagster as runless asset materializations, every
``dagster_report_interval_s``, from a thread of its own (what a report holds: `defs/shared/reporting.py`)."""

from __future__ import annotations

import logging
import os
import threading

import dagster as dg

from streamrag_assets.defs.shared.reporting import materializations
from streamrag_assets.runtime.dagster import dagster_env, prepare_dagster_home
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.batch_result import BatchResult

log = logging.getLogger(__name__)


def dagster_instance(settings: Settings) -> dg.DagsterInstance:
    """The platform's Dagster instance (stored in Postgres), from any process."""
    prepare_dagster_home(settings)
    for name, value in dagster_env(settings).items():
        os.environ.setdefault(name, value)
    return dg.DagsterInstance.get()


class DagsterReporter:
    """Collects batch results (``add`` is the query's ``on_batch``) and reports them from a background thread, so
    a slow or unreachable Dagster database never delays a micro-batch."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pending: list[BatchResult] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._instance: dg.DagsterInstance | None = None
        self._thread = threading.Thread(target=self._run, name="dagster-reporter", daemon=True)
        self._thread.start()

    def add(self, result: BatchResult) -> None:
        with self._lock:
            self._pending.append(result)

    def flush(self) -> int:
        """Report what is pending now; returns how many events were written."""
        with self._lock:
            batch, self._pending = self._pending, []
        events = materializations(batch, "continuous query")
        if not events:
            return 0
        try:
            if self._instance is None:
                self._instance = dagster_instance(self.settings)
            for event in events:
                self._instance.report_runless_asset_event(event)
        except Exception as exc:  # Dagster down: keep the results for the next attempt, never fail the stream
            log.warning("could not report %d batch(es) to Dagster (%s); will retry", len(batch), exc)
            with self._lock:
                self._pending = batch + self._pending
            self._instance = None
            return 0
        return len(events)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.dagster_report_interval_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
