"""Retention for the embedded broker: record batches Bronze already holds are removed from Tansu's object store.

Tansu 0.6 on S3 keeps each produced batch as one object (``…/partitions/<p:010>/records/<base offset:020>.batch``),
never removes any (it ignores ``retention.ms``), and lists every object of a partition on each fetch that has new
records and on each ListOffsets. So the broker's and the object store's CPU grow with the topic's age: at 50 events/s,
SeaweedFS went from 3.9 to 22.5 CPU-seconds a minute over ten minutes (`benchmarks/RESULTS.md`). Bronze is the
long-term record, so the stream removes, every `SWEEP_INTERVAL_S`, the batches that are wholly below what it has
committed to Bronze and older than ``broker_retention_s``; a replay older than that reads Bronze (`replay rebuild`).

Only a contiguous run from the partition's start is removed (the log stays one range of offsets), never a partition's
newest batch, and never the watermark or metadata objects (Tansu would reuse offsets without them). With the oldest
batches gone, Tansu answers a fetch below the new start with the first batch left and ListOffsets(EARLIEST) with its
offset; `offsets.read_ranges` counts records a reading finds removed as lost (`gaps.RETENTION`).

Written by hand on obstore (object_store's Python binding, the library Tansu uses) because Tansu 0.6 has no
DeleteRecords and no retention of its own (both came after 0.6).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import obstore
from obstore.store import S3Store

from streamrag_assets.metrics import BROKER_BATCHES_REMOVED
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

CLUSTER_ID = "streamrag"  # the embedded broker's --cluster-id: the first part of its object keys
SWEEP_INTERVAL_S = 15.0
LOG_EVERY_S = 600.0
BATCH_SUFFIX = ".batch"


@dataclass(frozen=True)
class BatchObject:
    path: str
    base_offset: int
    modified: float  # Unix time


def records_prefix(topic: str, partition: int) -> str:
    return f"clusters/{CLUSTER_ID}/topics/{topic}/partitions/{partition:010d}/records/"


def batch_objects(metas: Iterable[Mapping[str, Any]]) -> list[BatchObject]:
    """The record batches among a listing of a partition's records folder, in offset order."""
    found = []
    for meta in metas:
        name = meta["path"].rsplit("/", 1)[-1]
        if name.endswith(BATCH_SUFFIX) and name[: -len(BATCH_SUFFIX)].isdigit():
            found.append(BatchObject(meta["path"], int(name[: -len(BATCH_SUFFIX)]), meta["last_modified"].timestamp()))
    return sorted(found, key=lambda batch: batch.base_offset)


def removable(batches: list[BatchObject], floor: int, modified_before: float) -> list[BatchObject]:
    """The batches that may go: from the first, each one whose next batch starts at or below ``floor`` (so all of its
    records are below it) and that was written before ``modified_before``; the newest batch always stays."""
    removed = []
    for batch, following in zip(batches, batches[1:], strict=False):
        if following.base_offset > floor or batch.modified >= modified_before:
            break
        removed.append(batch)
    return removed


class BrokerRetention:
    """Removes, on a thread, the embedded broker's batches that are in Bronze and older than the retention.

    ``floor`` gives the next offset per partition that Bronze does not hold yet (the stream's last committed
    micro-batch)."""

    def __init__(self, settings: Settings, floor: Callable[[], dict[int, int]]) -> None:
        self.topic = settings.topic
        self.retention_s = settings.broker_retention_s
        self.floor = floor
        self.store = S3Store(
            settings.s3_bucket,
            endpoint=settings.s3_endpoint,
            access_key_id=settings.s3_access_key,
            secret_access_key=settings.s3_secret_key.get_secret_value(),
            region=settings.s3_region,
            client_options={"allow_http": settings.s3_endpoint.startswith("http://")},
        )
        self._removed, self._logged_at = 0, float("-inf")  # the log says what went at most every LOG_EVERY_S
        self._starts: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-retention", daemon=True)

    def start(self) -> BrokerRetention:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop sweeping; returns once a sweep in progress has ended (it removes nothing more once asked to stop)."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL_S):
            try:
                self.sweep()
            except Exception as exc:  # the object store is down or slow: the next sweep tries again
                log.warning("broker retention: the sweep failed (%s); trying again in %.0f s", exc, SWEEP_INTERVAL_S)

    def sweep(self, now: float | None = None) -> int:
        """One pass over the partitions Bronze has records of; returns the batches removed."""
        modified_before = (time.time() if now is None else now) - self.retention_s
        total = 0
        for partition, floor in sorted(self.floor().items()):
            listing = obstore.list(self.store, records_prefix(self.topic, partition), chunk_size=1000)
            batches = batch_objects(meta for chunk in listing for meta in chunk)
            gone = removable(batches, floor, modified_before)
            if not gone or self._stop.is_set():
                continue
            obstore.delete(self.store, [batch.path for batch in gone])
            BROKER_BATCHES_REMOVED.inc(len(gone))
            total += len(gone)
            self._starts[partition] = batches[len(gone)].base_offset
            log.debug("broker retention: removed %d batches of %s[%d]", len(gone), self.topic, partition)
        self._removed += total
        if self._removed and time.monotonic() - self._logged_at >= LOG_EVERY_S:
            starts = ", ".join(f"[{p}] at {o}" for p, o in sorted(self._starts.items()))
            log.info(
                "broker retention: removed %d record batches Bronze holds; %s now begins %s",
                self._removed,
                self.topic,
                starts,
            )
            self._removed, self._logged_at = 0, time.monotonic()
        return total
