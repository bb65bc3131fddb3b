"""The medallion transforms as functions on DataFrames (Spark) and Arrow tables; no Kafka, no table I/O.

One micro-batch costs one Spark action: Bronze rows are refined in a single ``mapInArrow`` pass (parse, validate,
normalise, render) and collected as one Arrow table, which ``split_layers`` cuts into the four tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from streamrag_assets.streaming.refine import Rejected, document, is_canary, parse_event
from streamrag_assets.streaming.schemas import TABLES, spark_schema

ARROW_SCHEMAS = TABLES
BRONZE_COLUMNS = TABLES["bronze"].names
SILVER_COLUMNS = TABLES["silver"].names
GOLD_COLUMNS = TABLES["gold"].names

MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_SILVER_ONLY = [c for c in SILVER_COLUMNS if c not in BRONZE_COLUMNS]
_GOLD_ONLY = [c for c in GOLD_COLUMNS if c not in BRONZE_COLUMNS and c not in SILVER_COLUMNS]

# Bronze columns + Silver fields + the verdict + Gold-only fields: what one refine pass produces per row.
REFINED_ARROW = pa.schema(
    list(TABLES["bronze"])
    + [TABLES["silver"].field(c) for c in _SILVER_ONLY]
    + [pa.field("reject_reason", pa.string()), pa.field("canary", pa.bool_())]
    + [TABLES["gold"].field(c) for c in _GOLD_ONLY]
)


def kafka_columns(kafka_rows: DataFrame) -> DataFrame:
    """Kafka records (the data source's schema) as Bronze's columns, all but the batch's own (`bronze_rows`)."""
    headers = F.col("headers")
    # The header is another producer's text: not a number, or a time past year 9999, falls back to the record's
    # timestamp (Spark's ANSI mode would fail the batch on either).
    ingested_ms = headers["ingested_at"].try_cast("long")
    ingested_ms = F.when(ingested_ms.between(0, MAX_TIMESTAMP_MS), ingested_ms)
    return kafka_rows.select(
        "topic",
        "partition",
        "offset",
        F.col("timestamp").alias("kafka_timestamp"),
        # Bytes that are not UTF-8 (another producer's) become U+FFFD: Bronze holds strings, and one invalid
        # sequence would otherwise fail the Arrow conversion and the Delta write of the whole batch, for good.
        F.make_valid_utf8(F.col("key").cast("string")).alias("key"),
        F.make_valid_utf8(F.col("value").cast("string")).alias("value"),
        headers["sse_id"].alias("sse_id"),
        F.coalesce(F.timestamp_millis(ingested_ms), F.col("timestamp")).alias("ingested_at"),
    )


def bronze_rows(kafka_rows: DataFrame, batch_id: int) -> DataFrame:
    """Kafka records as Bronze rows: raw value kept, lineage added."""
    return kafka_columns(kafka_rows).select(
        "*", F.lit(batch_id).cast("long").alias("batch_id"), F.current_timestamp().alias("written_at")
    )


def with_batch_columns(kafka: pa.Table, batch_id: int, written_at: datetime) -> pa.Table:
    """`kafka_columns` rows, collected, as Bronze rows (what `bronze_rows` adds in Spark, added here). In Spark the
    batch id and time are literals of the plan, so each micro-batch compiled its own generated code (Janino: 19% of
    the stream JVM's CPU samples at 50 events/s); without them every batch reuses the first one's."""
    rows = len(kafka)
    kafka = kafka.append_column("batch_id", pa.array([batch_id] * rows, pa.int64()))
    return kafka.append_column("written_at", pa.array([written_at] * rows, TABLES["bronze"].field("written_at").type))


def refine_record(row: dict) -> dict:
    """One Bronze row with its Silver fields, Gold document and verdict (reject_reason / canary) added. Whatever goes
    wrong with the one record (a `Rejected` reason, or any other exception) makes it a quarantine row, never a
    failed batch."""
    try:
        silver = parse_event(row["value"])
        canary = is_canary(silver)
        doc = None if canary else document(silver)
    except Rejected as rejected:
        return quarantined(row, str(rejected))
    except Exception as exc:  # a bug or a case validation does not know: the record is kept with the reason
        return quarantined(row, error_reason(exc))
    out = {**row, **silver, "reject_reason": None, "canary": canary}
    if doc is not None:
        out.update({name: doc[name] for name in _GOLD_ONLY})
    return out


def quarantined(row: dict, reason: str) -> dict:
    """The refined row of a record that goes to quarantine: its Bronze columns and the reason."""
    return {**{name: row.get(name) for name in BRONZE_COLUMNS}, "reject_reason": reason, "canary": False}


def error_reason(exc: BaseException) -> str:
    """A quarantine reason for an unexpected exception: ``error:<type>: <first line of the message>``."""
    message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"error:{type(exc).__name__}: {message}".rstrip(": ")


def refine_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: Bronze record batches in, refined record batches out."""
    for batch in batches:
        yield refined_batch([refine_record(row) for row in batch.to_pylist()])


def refined_batch(rows: list[dict]) -> pa.RecordBatch:
    """Refined rows as one record batch. A row whose values do not fit the tables' types (an integer past int64, a
    string Arrow cannot encode) is found by converting one row at a time, and goes to quarantine with the reason."""
    with contextlib.suppress(Exception):  # some row does not fit: found one row at a time below
        return pa.RecordBatch.from_pylist(rows, schema=REFINED_ARROW)
    fitted = []
    for row in rows:
        try:
            pa.RecordBatch.from_pylist([row], schema=REFINED_ARROW)
            fitted.append(row)
        except Exception as exc:
            fitted.append(quarantined(row, error_reason(exc)))
    return pa.RecordBatch.from_pylist(fitted, schema=REFINED_ARROW)


def refine_dataframe(bronze: DataFrame) -> DataFrame:
    return bronze.select(*BRONZE_COLUMNS).mapInArrow(refine_batches, spark_schema(REFINED_ARROW))


def refine_arrow(bronze: pa.Table) -> pa.Table:
    """`refine_dataframe` for Bronze rows already in this process: the same function over the same rows, without a
    Spark task (and the round trip through a Python worker) for a small micro-batch."""
    return pa.Table.from_batches(list(refine_batches(bronze.select(BRONZE_COLUMNS).to_batches())), schema=REFINED_ARROW)


@dataclass
class Layers:
    bronze: pa.Table
    silver: pa.Table
    quarantine: pa.Table
    gold: pa.Table
    counts: dict[str, int] = field(default_factory=dict)
    quarantine_reasons: dict[str, int] = field(default_factory=dict)


def split_layers(refined: pa.Table, already_in_silver: set[str], quarantined_at) -> Layers:
    """Cut a refined batch into the four tables. Duplicates (by event_id, against Silver and within the batch) keep
    their first occurrence in (batch, partition, offset) order; every row is counted exactly once."""
    refined = refined.sort_by([("batch_id", "ascending"), ("partition", "ascending"), ("offset", "ascending")])
    rejected = pc.is_valid(refined["reject_reason"])
    canary = pc.fill_null(refined["canary"], False)
    candidate = pc.and_(pc.invert(rejected), pc.invert(canary))
    keep = []
    seen = set(already_in_silver)
    for event_id, is_candidate in zip(refined["event_id"].to_pylist(), candidate.to_pylist(), strict=True):
        first = bool(is_candidate) and event_id not in seen
        if first:
            seen.add(event_id)
        keep.append(first)
    keep_mask = pa.array(keep, type=pa.bool_())
    silver_rows = refined.filter(keep_mask)
    quarantine_rows = refined.filter(rejected)
    gold_rows = silver_rows.filter(pc.is_valid(silver_rows["doc_id"]))
    quarantine = quarantine_rows.select(
        ["partition", "offset", "value", "reject_reason", "ingested_at", "batch_id"]
    ).rename_columns(["partition", "offset", "value", "reason", "ingested_at", "batch_id"])
    quarantine = quarantine.append_column(
        "quarantined_at",
        pa.array([quarantined_at] * len(quarantine), type=ARROW_SCHEMAS["quarantine"].field("quarantined_at").type),
    )
    reasons: dict[str, int] = {}
    for reason in quarantine["reason"].to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    counts = {
        "bronze": len(refined),
        "silver": len(silver_rows),
        "quarantine": len(quarantine),
        "canary": pc.sum(canary).as_py() or 0,
        "duplicate": pc.sum(candidate).as_py() - len(silver_rows) if len(refined) else 0,
        "gold": len(gold_rows),
    }
    return Layers(
        bronze=refined.select(BRONZE_COLUMNS).cast(ARROW_SCHEMAS["bronze"]),
        silver=silver_rows.select(SILVER_COLUMNS).cast(ARROW_SCHEMAS["silver"]),
        quarantine=quarantine.cast(ARROW_SCHEMAS["quarantine"]),
        gold=gold_rows.select(GOLD_COLUMNS).cast(ARROW_SCHEMAS["gold"]),
        counts=counts,
        quarantine_reasons=reasons,
    )
