"""Gold gaps: reconcile Gold with Silver for a window of event time. The documents Silver's events should have
produced but Gold lacks (rows deleted by hand, a table restored from an old version, ...) are derived again from their
Bronze records with the stream's own transform and appended. What Gold already holds is never written twice, and a
batch the stream has not finished (its four tables are written at once: Silver may be committed an instant before
Gold) is left to the stream, which writes it again after a crash."""

from __future__ import annotations

import logging
import time
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from streamrag_assets.operations.progress import Progress, reporter
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.checkpoint import current_epoch, epoch_batch_key, last_committed_batch
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.pipeline import APP_ID
from streamrag_assets.streaming.transforms import (
    ARROW_SCHEMAS,
    BRONZE_COLUMNS,
    GOLD_COLUMNS,
    REFINED_ARROW,
    refine_record,
)

log = logging.getLogger(__name__)


def event_window(since: datetime, until: datetime) -> ds.Expression:
    """``since <= event_time < until``, with the event_date bounds that let Delta skip other partitions."""
    ts = pa.timestamp("us", "UTC")
    return (
        (ds.field("event_date") >= pa.scalar(since.date(), pa.date32()))
        & (ds.field("event_date") <= pa.scalar(until.date(), pa.date32()))
        & (ds.field("event_time") >= pa.scalar(since, ts))
        & (ds.field("event_time") < pa.scalar(until, ts))
    )


def first_unfinished_batch(settings: Settings) -> int:
    """The first batch key of the current epoch Spark has not committed: from it on, batches are the stream's to write
    (a batch counts as done only after its tables; one cut short is run again with the same key). Batches of earlier
    epochs are never run again."""
    epoch = current_epoch(settings)
    last = last_committed_batch(settings, epoch)
    return epoch_batch_key(epoch, 0 if last is None else last + 1)


def fill_gold_gaps(
    settings: Settings, since: datetime, until: datetime, progress: Progress | None = None
) -> dict[str, int]:
    """Append the Gold documents missing for Silver's events of ``[since, until)``, but those of batches the stream
    has not finished; returns what was seen and done."""
    delta = DeltaTables.from_settings(settings)
    window = event_window(since, until)
    unfinished = first_unfinished_batch(settings)  # read before the tables: a batch finished after is not a gap
    silver = delta.read("silver", ["event_id", "partition", "offset", "batch_id"], window)
    in_gold = set(delta.read("gold", ["event_id"], window)["event_id"].to_pylist())
    lacking = silver.filter(pc.invert(pc.is_in(silver["event_id"], pa.array(sorted(in_gold), pa.string()))))
    in_flight = pc.greater_equal(lacking["batch_id"], unfinished)
    counts = {
        "silver_events": len(silver),
        "gold_documents": len(in_gold),
        "restored": 0,
        "left_to_stream": pc.sum(in_flight).as_py() or 0,
    }
    lacking = lacking.filter(pc.invert(in_flight))
    if len(lacking) == 0:
        return counts
    # Their Bronze records, by (partition, offset): the raw values the stream refined.
    where = None
    for partition in pc.unique(lacking["partition"]).to_pylist():
        offsets = lacking.filter(pc.equal(lacking["partition"], partition))["offset"]
        part = (ds.field("partition") == partition) & ds.field("offset").isin(offsets)
        where = part if where is None else where | part
    bronze = delta.read("bronze", BRONZE_COLUMNS, where)
    wanted = set(lacking["event_id"].to_pylist())
    refined = pa.Table.from_pylist([refine_record(row) for row in bronze.to_pylist()], schema=REFINED_ARROW)
    documents = refined.filter(
        pc.and_(pc.is_valid(refined["doc_id"]), pc.is_in(refined["event_id"], pa.array(sorted(wanted), pa.string())))
    )
    # A record read twice (a reprocessed offset range) yields one document.
    first: list[int] = []
    seen: set[str] = set()
    for i, event_id in enumerate(documents["event_id"].to_pylist()):
        if event_id not in seen:
            seen.add(event_id)
            first.append(i)
    documents = documents.take(pa.array(first, pa.int64())).select(GOLD_COLUMNS).cast(ARROW_SCHEMAS["gold"])
    if len(documents):
        delta.write_once("gold", documents, f"{APP_ID}-gold-fill", time.time_ns())
        reporter(progress, log)(f"Gold {since}..{until}: restored {len(documents)} missing document(s)")
    counts["restored"] = len(documents)
    return counts
