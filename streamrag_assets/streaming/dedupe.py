"""Which events Silver already holds, answered from memory for the recent event dates.

Every micro-batch asks whether its events are already in Silver (an SSE reconnect or a producer retry can deliver
one twice). Asking the Delta table means scanning that date's files, which costs more with every batch the table
gains; this index keeps, per event date, the process-local hashes of the event_ids Silver holds: loaded from the
table once per date, then extended with each batch this process writes. A hash that matches is confirmed against
the table (hashes can collide; duplicates are rare, so confirmations are too); a hash that does not match proves the
event is new. Dates older than the newest ``keep_days`` are asked of the table directly (late events are rare).
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from streamrag_assets.streaming.delta import DeltaTables

log = logging.getLogger(__name__)

MERGE_AT = 50_000  # pending hashes folded into a date's sorted array beyond this many


def _hashes(ids: list[str]) -> np.ndarray:
    # str hashes are salted per process, which is all this in-process index needs.
    return np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids))


class _DateIds:
    def __init__(self, loaded: np.ndarray) -> None:
        self.sorted = np.unique(loaded)
        self.pending: set[int] = set()

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        if len(self.sorted):
            at = np.searchsorted(self.sorted, hashes).clip(max=len(self.sorted) - 1)
            found = self.sorted[at] == hashes
        if self.pending:
            found |= np.fromiter((h in self.pending for h in hashes.tolist()), dtype=bool, count=len(hashes))
        return found

    def add(self, hashes: np.ndarray) -> None:
        self.pending.update(hashes.tolist())
        if len(self.pending) >= MERGE_AT:
            merged = np.concatenate([self.sorted, np.fromiter(self.pending, dtype=np.int64)])
            self.sorted, self.pending = np.unique(merged), set()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.pending)


class SeenEvents:
    def __init__(self, delta: DeltaTables, keep_days: int = 2) -> None:
        self.delta = delta
        self.keep_days = keep_days
        self._dates: dict[dt.date, _DateIds] = {}

    def existing(self, candidates: pa.Table, exclude_batch: int | None = None) -> set[str]:
        """The candidates' event_ids that Silver already holds, other than rows written by ``exclude_batch`` (the
        batch being re-run after a crash is not a duplicate of itself)."""
        rows = pa.table({"event_id": candidates["event_id"].cast(pa.string()), "event_date": candidates["event_date"]})
        rows = rows.filter(pc.and_(pc.is_valid(rows["event_id"]), pc.is_valid(rows["event_date"])))
        if len(rows) == 0 or self.delta.table("silver") is None:
            return set()
        ids, dates = rows["event_id"].to_pylist(), rows["event_date"].to_pylist()
        newest = max(dates)
        if not self._dates or newest > max(self._dates):
            self._evict(newest)
        cutoff = max(self._dates, default=newest) - dt.timedelta(days=self.keep_days - 1)
        suspects: set[str] = set()
        for day in sorted(set(dates)):
            day_ids = [i for i, d in zip(ids, dates, strict=True) if d == day]
            if day < cutoff:
                suspects.update(day_ids)  # too old to keep in memory: ask the table
                continue
            known = self._date(day, exclude_batch)
            hits = known.contains(_hashes(day_ids))
            suspects.update(i for i, hit in zip(day_ids, hits.tolist(), strict=True) if hit)
        if not suspects:
            return set()
        subset = rows.filter(pc.is_in(rows["event_id"], pa.array(sorted(suspects))))
        return self.delta.existing_event_ids(subset, exclude_batch=exclude_batch)

    def add(self, silver: pa.Table) -> None:
        """Record the event_ids of Silver rows this process wrote (or found already written)."""
        if len(silver) == 0:
            return
        ids, dates = silver["event_id"].to_pylist(), silver["event_date"].to_pylist()
        for day in set(dates):
            known = self._dates.get(day)
            if known is not None:
                known.add(_hashes([i for i, d in zip(ids, dates, strict=True) if d == day]))

    def _date(self, day: dt.date, exclude_batch: int | None) -> _DateIds:
        known = self._dates.get(day)
        if known is None:
            began = time.perf_counter()
            expr = ds.field("event_date") == day
            if exclude_batch is not None:
                expr = expr & (ds.field("batch_id") != exclude_batch)
            found = self.delta.read("silver", ["event_id"], expr)
            known = self._dates[day] = _DateIds(_hashes(found["event_id"].to_pylist()))
            log.info("loaded %d Silver event ids of %s in %.2f s", len(known), day, time.perf_counter() - began)
        return known

    def _evict(self, newest: dt.date) -> None:
        cutoff = newest - dt.timedelta(days=self.keep_days - 1)
        for day in [d for d in self._dates if d < cutoff]:
            del self._dates[day]
