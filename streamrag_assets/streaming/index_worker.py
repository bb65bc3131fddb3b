"""Indexing the continuous query's Gold documents beside Spark, newest first when behind, and pausing it (not the
query) while Postgres is unavailable."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamrag_assets.documents.progress import Marks, merged
from streamrag_assets.documents.store import IndexResult, database_unavailable
from streamrag_assets.metrics import INDEX_PAUSED
from streamrag_assets.streaming.batch_result import BatchResult

log = logging.getLogger(__name__)

RECOVERY_PROBE_S = 5.0  # while Postgres is unavailable, how often the index tries to catch up
PART_ROWS = 100  # documents per index transaction: what a newer batch waits for at most before it goes first
OLDEST_WAIT_S = 30.0  # a part waiting longer than this gets one turn in `OLDEST_TURN_EVERY` (below)
OLDEST_TURN_EVERY = 4  # so newest first leaves the oldest at least a quarter of the worker while it is behind
MAX_PENDING_ROWS = 5_000  # documents Spark may run ahead of the index (then `submit` holds it back): a minute and
# a half at 50 events/s. A stop loses what waits; the restarted stream indexes it again while its JVM starts.

Page = tuple[str, str]  # (wiki, title)


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


@dataclass
class _Batch:
    result: BatchResult
    written: WriteGate
    parts_left: int
    outcome: IndexResult = field(default_factory=IndexResult)
    seconds: float = 0.0


@dataclass
class _Part:
    """Up to `PART_ROWS` of a batch's documents, in event order: one index transaction."""

    batch: _Batch
    rows: list[dict[str, Any]]
    last: bool  # the batch's last part: once it and everything before it is indexed, so is the batch
    done: bool = False
    doc_ids: frozenset[str] = frozenset()
    pages: frozenset[Page] = frozenset()  # every page its rows are about
    moved: frozenset[Page] = frozenset()  # pages it deletes, or moves from or to
    submitted: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, batch: _Batch, rows: list[dict[str, Any]], last: bool) -> _Part:
        moved = set()
        for row in rows:
            if row["op"] in ("delete", "rename"):
                moved.add((row["wiki"], row["title"]))
                if row.get("new_title"):
                    moved.add((row["wiki"], row["new_title"]))
        return cls(
            batch,
            rows,
            last,
            doc_ids=frozenset(row["doc_id"] for row in rows),
            pages=frozenset((row["wiki"], row["title"]) for row in rows) | moved,
            moved=frozenset(moved),
        )

    def commutes_with(self, older: _Part) -> bool:
        """Whether indexing this part before ``older`` ends as indexing them in order does: no document in both,
        and no page that one of them deletes or moves while the other has anything about it."""
        return (
            self.doc_ids.isdisjoint(older.doc_ids)
            and self.moved.isdisjoint(older.pages)
            and self.pages.isdisjoint(older.moved)
        )


class IndexWorker:
    """Indexes each micro-batch's Gold documents on a thread of its own while Spark reads and refines the next
    batches: a document waits for one Spark pass instead of two, and embedding overlaps the broker and Delta round
    trips.

    **Newest first when behind.** After a start or an outage Spark reads a backlog in batches of
    ``stream_max_events_per_trigger``; each batch is split into parts of `PART_ROWS` documents, and the worker takes
    the newest part whose documents commute with every older part still waiting (`_Part.commutes_with`), so an edit
    that arrives while the backlog is embedded waits for one part, not for the backlog. Parts that do not commute
    go in order. Newest first alone starves the oldest part while new ones keep the worker busy (a machine near its
    capacity: the soak's index stayed ~160 batches behind Spark for half an hour while each new batch was indexed at
    once); so once the oldest part has waited `OLDEST_WAIT_S`, every `OLDEST_TURN_EVERY`th turn is the oldest's: its
    wait is bounded, the recorded progress moves, and new edits keep three turns in four. Spark may run up to
    `MAX_PENDING_ROWS` documents ahead; beyond that ``submit`` holds it back.

    **Exactly once.** Spark may commit a batch before its documents are indexed, so each index transaction records a
    batch key (`IndexProgress`) — only the last one below which every part is indexed, so the recorded progress
    never passes a document not yet in Postgres — and the partition marks (offset, newest ingest and event times)
    of every batch up to it: the low watermark the API reports. A stream restarted after a crash indexes the
    committed Gold batches beyond it (`MedallionBatch.catch_up`), in order; parts indexed ahead of their turn are
    then found unchanged (a lookup, no embedding). A part may also be indexed before its batch's tables are written:
    a batch that never got them written was not committed by Spark, which runs it again after the crash, and its
    documents are then found unchanged.

    **One layer down at a time.** When Postgres is unavailable the worker pauses indexing instead of failing the
    query. Batches go on into Bronze, Silver and Gold; the worker notes the last one whose tables are written and
    every ``RECOVERY_PROBE_S`` calls ``recover`` with it, which indexes the Gold batches beyond the index's durable
    progress; once that succeeds, indexing goes on batch by batch. Any other failure stops the worker and fails the
    next micro-batch: the query stops, and the restarted stream resumes from the recorded progress.
    """

    def __init__(
        self,
        index_part: Callable[[list[dict[str, Any]], tuple[int, Marks] | None, WriteGate], IndexResult],
        finish: Callable[[BatchResult], None],
        recover: Callable[[int], object],
        behind: int | None = None,
    ):
        """``index_part(rows, progress, written)`` indexes rows in one transaction that records ``progress`` — a batch
        key and the partition marks of every batch up to it (None: none) — before or after the batch's tables are
        written (``written``); ``finish`` is called once per batch, when all of it is indexed and its tables are
        written."""
        self._index_part = index_part
        self._finish = finish
        self._recover = recover
        self._behind = behind  # the last batch key written to Gold but not indexed; None when in step
        self._next_probe = 0.0
        INDEX_PAUSED.set(0 if behind is None else 1)
        self._turns_since_oldest = 0
        self._parts: list[_Part] = []  # in batch order: those waiting, and those indexed ahead of an older one
        self._reached: Marks = {}  # the partition marks of the batches done and gone from `_parts`
        self._changed = threading.Condition()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="index-worker", daemon=True)
        self._thread.start()

    @property
    def paused(self) -> bool:
        return self._behind is not None

    def submit(self, result: BatchResult, rows: list[dict[str, Any]], written: WriteGate) -> None:
        rows = sorted(rows, key=lambda r: (r["event_time"], r["partition"], r["offset"]))
        chunks = [rows[i : i + PART_ROWS] for i in range(0, len(rows), PART_ROWS)] or [[]]
        batch = _Batch(result, written, parts_left=len(chunks))
        parts = [_Part.of(batch, chunk, last=n == len(chunks) - 1) for n, chunk in enumerate(chunks)]
        with self._changed:
            while self._failure is None and self._parts and self._pending_rows() + len(rows) > MAX_PENDING_ROWS:
                self._changed.wait(1.0)
            if self._failure is not None:
                raise RuntimeError(f"indexing a previous micro-batch failed: {self._failure}") from self._failure
            self._parts += parts
            self._changed.notify_all()

    def _pending_rows(self) -> int:
        return sum(len(p.rows) for p in self._parts if not p.done)

    def _run(self) -> None:
        while True:
            try:
                with self._changed:
                    if not any(not p.done for p in self._parts):
                        self._changed.wait(1.0)
                    # while indexing is paused nothing is taken: choosing would count a turn never taken
                    part = self._choose() if self._behind is None else None
                if self._behind is not None:
                    self._skip_all()
                    if time.monotonic() >= self._next_probe:
                        self._try_recover()
                elif part is not None:
                    self._take(part)
            except BaseException as exc:
                log.exception("indexing failed; the stream stops and resumes from its progress")
                with self._changed:
                    self._failure = exc
                    self._changed.notify_all()
                return

    def _choose(self) -> _Part | None:
        """The newest waiting part that commutes with every older waiting one, else the oldest; the oldest too when
        its turn has come (`OLDEST_WAIT_S`, `OLDEST_TURN_EVERY`)."""
        waiting = [p for p in self._parts if not p.done]
        if not waiting:
            return None
        overdue = time.monotonic() - waiting[0].submitted > OLDEST_WAIT_S
        if not (overdue and self._turns_since_oldest >= OLDEST_TURN_EVERY - 1):
            for n in range(len(waiting) - 1, 0, -1):
                if all(waiting[n].commutes_with(older) for older in waiting[:n]):
                    self._turns_since_oldest += 1
                    return waiting[n]
        self._turns_since_oldest = 0
        return waiting[0]

    def _progress_with(self, part: _Part) -> tuple[int, Marks] | None:
        """The progress to record with ``part``'s transaction: the last batch all of whose parts, and all before
        them, are indexed once ``part`` is (parts indexed ahead of their turn included), and the marks of every
        batch up to it; None when an older part still waits."""
        key, marks, reached = None, self._reached, False
        for p in self._parts:
            if not (p.done or p is part):
                break
            reached = reached or p is part
            if p.last:
                key, marks = p.batch.result.batch_key, merged(marks, p.batch.result.marks)
        return (key, marks) if reached and key is not None else None

    def _take(self, part: _Part) -> None:
        batch = part.batch
        with self._changed:
            progress = self._progress_with(part)
        began = time.perf_counter()
        try:
            if part.rows:
                batch.outcome.add(self._index_part(part.rows, progress, batch.written))
            # Done once its tables are written too: its report names their versions, and a failed write stops here.
            batch.written.wait()
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            self._pause(batch.result.batch_key, exc)
            return
        batch.seconds += time.perf_counter() - began
        self._mark_done(part)

    def _mark_done(self, part: _Part) -> None:
        batch = part.batch
        with self._changed:
            part.done = True
            batch.parts_left -= 1
            while self._parts and self._parts[0].done:
                gone = self._parts.pop(0)
                if gone.last:
                    self._reached = merged(self._reached, gone.batch.result.marks)
            self._changed.notify_all()
        if batch.parts_left == 0:
            batch.result.record_index(batch.outcome, batch.seconds)
            self._finish(batch.result)

    def _skip_all(self) -> None:
        """While paused: every waiting batch's Gold rows are committed once its gate opens; recovery indexes them."""
        with self._changed:
            waiting = [p for p in self._parts if not p.done]
        for part in waiting:
            part.batch.written.wait()
            self._behind = max(self._behind or -1, part.batch.result.batch_key)
            self._mark_done(part)

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
        self._skip_all()  # the failed part too: recovery indexes from the recorded progress, in order

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
