"""Indexing the continuous query's Gold documents beside Spark, and pausing it (not the query) while Postgres is
unavailable."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from streamrag_assets.documents.store import database_unavailable
from streamrag_assets.metrics import INDEX_PAUSED
from streamrag_assets.streaming.batch_result import BatchResult

log = logging.getLogger(__name__)

RECOVERY_PROBE_S = 5.0  # while Postgres is unavailable, how often the index tries to catch up


class WriteGate:
    """Opened once a micro-batch's Delta writes are committed; ``wait`` raises if they failed."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._failed = False

    def open(self) -> None:
        self._event.set()

    def fail(self) -> None:
        self._failed = True
        self._event.set()

    def wait(self) -> None:
        self._event.wait()
        if self._failed:
            raise RuntimeError("the micro-batch's Delta writes failed")


class IndexWorker:
    """Indexes each micro-batch's Gold documents on a thread of its own, in batch order, while Spark already reads
    and refines the next batch: a document waits for one Spark pass instead of two, and embedding overlaps the
    broker and Delta round trips. At most one batch waits behind the one being indexed; beyond that ``submit``
    blocks, which holds Spark back (and lets its next batch grow) rather than queueing without bound.

    Spark commits a batch before its documents are indexed, so each index transaction records its batch key
    (`IndexProgress`); a stream restarted after a crash first indexes the committed Gold batches beyond it
    (`MedallionBatch.catch_up`).

    One layer down at a time: when Postgres is unavailable the worker pauses indexing instead of failing the query.
    Batches go on into Bronze, Silver and Gold; the worker notes the last one whose tables are written and every
    ``RECOVERY_PROBE_S`` calls ``recover`` with it, which indexes the Gold batches beyond the index's durable
    progress; once that succeeds, indexing goes on batch by batch. Any other failure stops the worker and fails the
    next micro-batch: the query stops, and the restarted stream resumes from the recorded progress.
    """

    def __init__(
        self,
        index_batch: Callable[[BatchResult, list[dict], WriteGate], None],
        finish: Callable[[BatchResult], None],
        recover: Callable[[int], object],
        behind: int | None = None,
    ):
        self._index_batch = index_batch
        self._finish = finish
        self._recover = recover
        self._behind = behind  # the last batch key written to Gold but not indexed; None when in step
        self._next_probe = 0.0
        INDEX_PAUSED.set(0 if behind is None else 1)
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="index-worker", daemon=True)
        self._thread.start()

    @property
    def paused(self) -> bool:
        return self._behind is not None

    def submit(self, result: BatchResult, rows: list[dict], written: WriteGate) -> None:
        while True:
            if self._failure is not None:
                raise RuntimeError(f"indexing a previous micro-batch failed: {self._failure}") from self._failure
            try:
                self._queue.put((result, rows, written), timeout=1.0)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._take(*item)
                if self._behind is not None and time.monotonic() >= self._next_probe:
                    self._try_recover()
            except BaseException as exc:
                key = item[0].batch_key if item is not None else self._behind
                log.exception("indexing batch %s failed; the stream stops and resumes from its progress", key)
                self._failure = exc
                return

    def _take(self, result: BatchResult, rows: list[dict], written: WriteGate) -> None:
        if self._behind is None:
            try:
                self._index_batch(result, rows, written)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                written.wait()  # the batch's Gold rows are committed: recovery will find them
                self._pause(result.batch_key, exc)
        else:
            written.wait()
            self._behind = result.batch_key
        self._finish(result)

    def _pause(self, batch_key: int, exc: BaseException) -> None:
        log.error(
            "Postgres is unavailable (%s); indexing pauses at batch %d while Bronze, Silver and Gold go on, and "
            "catches up when it returns",
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            batch_key,
        )
        self._behind = batch_key
        self._next_probe = time.monotonic() + RECOVERY_PROBE_S
        INDEX_PAUSED.set(1)

    def _try_recover(self) -> None:
        assert self._behind is not None
        try:
            self._recover(self._behind)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            self._next_probe = time.monotonic() + RECOVERY_PROBE_S
            return
        log.info("Postgres is back: the index caught up to batch %d and goes on", self._behind)
        self._behind = None
        INDEX_PAUSED.set(0)
