"""The tables' asset specs, shared by the domains that materialize them: descriptions, schemas, column lineage,
freshness policies and the hourly partitions of Gold and its embeddings."""

from datetime import timedelta

import dagster as dg
import pyarrow as pa

from streamrag_assets.defs.shared.keys import BRONZE, EMBEDDINGS, GOLD, QUARANTINE, SILVER, TOPIC
from streamrag_assets.settings import Settings, get_settings
from streamrag_assets.streaming import schemas

OWNERS = ["team:streamrag"]


def freshness(settings: Settings) -> dg.FreshnessPolicy:
    return dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=settings.freshness_fail_minutes),
        warn_window=timedelta(minutes=settings.freshness_warn_minutes),
    )


def table_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(field.name, str(field.type)) for field in schema])


def _lineage(upstream: dg.AssetKey, mapping: dict[str, list[str]]) -> dg.TableColumnLineage:
    return dg.TableColumnLineage(
        deps_by_column={
            column: [dg.TableColumnDep(asset_key=upstream, column_name=source) for source in sources]
            for column, sources in mapping.items()
        }
    )


# Where each column comes from (the transforms in streaming/refine.py).
COLUMN_LINEAGE = {
    SILVER: _lineage(
        BRONZE,
        {
            "event_id": ["value"],
            "event_time": ["value"],
            "title": ["value"],
            "page_url": ["value"],
            "comment_text": ["value"],
            "partition": ["partition"],
            "offset": ["offset"],
            "ingested_at": ["ingested_at"],
        },
    ),
    QUARANTINE: _lineage(BRONZE, {"value": ["value"], "partition": ["partition"], "offset": ["offset"]}),
    GOLD: _lineage(
        SILVER,
        {
            "text": ["title", "wiki", "user", "type", "length_old", "length_new", "comment_text", "event_time"],
            "title": ["title"],
            "page_url": ["page_url"],
            "event_id": ["event_id"],
            "partition": ["partition"],
            "offset": ["offset"],
        },
    ),
    EMBEDDINGS: _lineage(
        GOLD, {"embedding": ["text"], "doc_id": ["doc_id"], "title": ["title"], "event_id": ["event_id"]}
    ),
}


def hourly_partitions(settings: Settings) -> dg.HourlyPartitionsDefinition:
    """Hours of event time; the current hour is included, since the stream writes into it."""
    return dg.HourlyPartitionsDefinition(start_date=settings.partitions_start, end_offset=1)


def specs(settings: Settings) -> list[dg.AssetSpec]:
    policy = freshness(settings)
    delta_root = settings.delta_location
    hourly = hourly_partitions(settings)

    def spec(key, deps, description, kinds, schema, where) -> dg.AssetSpec:
        return dg.AssetSpec(
            key,
            deps=deps,
            description=description,
            kinds=kinds,
            group_name="medallion",
            owners=OWNERS,
            freshness_policy=policy,
            metadata={"dagster/column_schema": table_schema(schema), "location": where},
            partitions_def=hourly if key in (GOLD, EMBEDDINGS) else None,
        )

    return [
        spec(
            BRONZE,
            [TOPIC],
            "Every Kafka record, append-only and unchanged: raw value, key, partition, offset, Kafka timestamp, "
            "sse_id, ingested_at, batch id. Exactly once per offset (Delta app transactions per micro-batch).",
            {"spark", "delta"},
            schemas.BRONZE_SCHEMA,
            f"{delta_root}/bronze",
        ),
        spec(
            SILVER,
            [BRONZE],
            "Typed, validated, normalised events (UTC times, plain-text comments), one row per event id across "
            "restarts; canary events dropped and counted.",
            {"spark", "delta"},
            schemas.SILVER_SCHEMA,
            f"{delta_root}/silver",
        ),
        spec(
            QUARANTINE,
            [BRONZE],
            "Every record that failed parsing or validation, with its raw value and the reason.",
            {"spark", "delta"},
            schemas.QUARANTINE_SCHEMA,
            f"{delta_root}/quarantine",
        ),
        spec(
            GOLD,
            [SILVER],
            "One document per change (edit, new, log): readable text, URLs, filters, quality flags, content hash, "
            "lineage; page deletions and moves as delete/rename ops.",
            {"spark", "delta"},
            schemas.GOLD_SCHEMA,
            f"{delta_root}/gold",
        ),
        spec(
            EMBEDDINGS,
            [GOLD],
            "The pgvector `documents` table the API searches: MiniLM embeddings (HNSW cosine), full-text column, "
            "filters, lineage; deleted pages tombstoned.",
            {"postgres", "pgvector"},
            pa.schema(
                [
                    ("doc_id", pa.string()),
                    ("embedding", pa.list_(pa.float32(), 384)),
                    ("text", pa.string()),
                    ("title", pa.string()),
                    ("event_time", pa.timestamp("us", "UTC")),
                    ("indexed_at", pa.timestamp("us", "UTC")),
                    ("deleted", pa.bool_()),
                ]
            ),
            "documents table in the app database",
        ),
    ]


STREAM_TABLES = (BRONZE, SILVER, QUARANTINE)
HOURLY_TABLES = (GOLD, EMBEDDINGS)
SPECS = {spec.key: spec for spec in specs(get_settings())}
