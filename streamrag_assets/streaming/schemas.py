"""One schema per table, as Arrow schemas (the delta-rs writer's native form); Spark's StructTypes are derived
from them (``spark_schema``), so the two can never disagree. No JVM is needed to import this module."""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

TRANSFORM_VERSION = "1"

_TS = pa.timestamp("us", tz="UTC")

BRONZE_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("kafka_timestamp", _TS),
        ("key", pa.string()),
        ("value", pa.string()),
        ("sse_id", pa.string()),
        ("ingested_at", _TS),
        ("batch_id", pa.int64()),
        ("written_at", _TS),
    ]
)

SILVER_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("event_time", _TS),
        ("event_date", pa.date32()),
        ("wiki", pa.string()),
        ("domain", pa.string()),
        ("type", pa.string()),
        ("namespace", pa.int32()),
        ("title", pa.string()),
        ("page_url", pa.string()),
        ("comment", pa.string()),
        ("comment_text", pa.string()),
        ("user", pa.string()),
        ("bot", pa.bool_()),
        ("minor", pa.bool_()),
        ("patrolled", pa.bool_()),
        ("length_old", pa.int64()),
        ("length_new", pa.int64()),
        ("revision_old", pa.int64()),
        ("revision_new", pa.int64()),
        ("rc_id", pa.int64()),
        ("log_id", pa.int64()),
        ("log_type", pa.string()),
        ("log_action", pa.string()),
        ("log_params", pa.string()),
        ("server_url", pa.string()),
        ("notify_url", pa.string()),
        # lineage
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("ingested_at", _TS),
        ("batch_id", pa.int64()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("value", pa.string()),
        ("reason", pa.string()),
        ("ingested_at", _TS),
        ("batch_id", pa.int64()),
        ("quarantined_at", _TS),
    ]
)

GOLD_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("op", pa.string()),
        ("text", pa.string()),
        ("title", pa.string()),
        ("new_title", pa.string()),
        ("page_url", pa.string()),
        ("diff_url", pa.string()),
        ("wiki", pa.string()),
        ("lang", pa.string()),
        ("namespace", pa.int32()),
        ("type", pa.string()),
        ("event_time", _TS),
        ("event_date", pa.date32()),
        ("bot", pa.bool_()),
        ("quality_flags", pa.list_(pa.string())),
        ("content_hash", pa.string()),
        # lineage
        ("event_id", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("ingested_at", _TS),
        ("transform_version", pa.string()),
        ("batch_id", pa.int64()),
    ]
)

# What diff enrichment (`enrichment/diffs.py`) fetched for a Gold document: kept beside Gold, so that pgvector rebuilt
# from Gold gets the enriched text back without asking the wikis again.
GOLD_DIFFS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("event_time", _TS),
        ("added", pa.list_(pa.string())),
        ("removed", pa.list_(pa.string())),
        ("fetched_at", _TS),
    ]
)

TABLES = {
    "bronze": BRONZE_SCHEMA,
    "silver": SILVER_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
    "gold": GOLD_SCHEMA,
    "gold_diffs": GOLD_DIFFS_SCHEMA,
}

VALID_TYPES = ("edit", "new", "log", "categorize", "external")
DOCUMENT_TYPES = ("edit", "new", "log")


def spark_schema(schema: pa.Schema) -> StructType:
    return from_arrow_schema(schema)
