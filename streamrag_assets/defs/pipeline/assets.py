"""Bronze -> Silver (+ quarantine) -> Gold -> pgvector as software-defined assets.

The tables are kept fresh by the continuous query (`streamrag stream`, which reports each interval's writes as
runless materializations); materializing them here runs the same Spark code and checkpoint as a bounded
``availableNow`` query, which is what the Kafka sensor launches when the continuous query is not running.
"""

from datetime import timedelta
from typing import Any

import dagster as dg
import pyarrow as pa
from dagster_pyspark import PySparkResource

from streamrag_assets.defs.keys import BRONZE, EMBEDDINGS, GOLD, QUARANTINE, SILVER, TOPIC
from streamrag_assets.defs.reporting import materializations
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
    delta_root = settings.state_dir / "delta"
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
            schemas.BRONZE,
            str(delta_root / "bronze"),
        ),
        spec(
            SILVER,
            [BRONZE],
            "Typed, validated, normalised events (UTC times, plain-text comments), one row per event id across "
            "restarts; canary events dropped and counted.",
            {"spark", "delta"},
            schemas.SILVER,
            str(delta_root / "silver"),
        ),
        spec(
            QUARANTINE,
            [BRONZE],
            "Every record that failed parsing or validation, with its raw value and the reason.",
            {"spark", "delta"},
            schemas.QUARANTINE,
            str(delta_root / "quarantine"),
        ),
        spec(
            GOLD,
            [SILVER],
            "One document per change (edit, new, log): readable text, URLs, filters, quality flags, content hash, "
            "lineage; page deletions and moves as delete/rename ops.",
            {"spark", "delta"},
            schemas.GOLD,
            str(delta_root / "gold"),
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


@dg.multi_asset(specs=[SPECS[key] for key in STREAM_TABLES], name="medallion_available_now", can_subset=False)
def medallion(context: dg.AssetExecutionContext, pyspark: PySparkResource):
    """Process what the topic holds beyond the checkpoint (availableNow), through every table, then stop.

    The same micro-batches write Gold and pgvector; those are partitioned by hour of event time, so their writes
    are logged as materializations of the hours they touched."""
    from streamrag_assets.streaming.batch_result import BatchResult
    from streamrag_assets.streaming.checkpoint import QueryAlreadyRunning, checkpoint_lock
    from streamrag_assets.streaming.pipeline import start_query
    from streamrag_assets.streaming.spark import prepare_environment

    settings = get_settings()
    prepare_environment(settings)
    pyspark.spark_session  # noqa: B018 - the session dagster-pyspark made with our configuration; reused below
    results: list[BatchResult] = []

    def progress(result: BatchResult) -> None:
        results.append(result)
        context.log.info(f"batch {result.batch_key}: {result.counts} in {result.seconds:.2f} s")

    try:
        with checkpoint_lock(settings):
            query = start_query(settings, available_now=True, on_batch=progress)
            query.awaitTermination()
    except QueryAlreadyRunning as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    if query.exception() is not None:
        raise dg.Failure(f"the streaming query failed: {query.exception()}")
    events = materializations(results, f"run {context.run_id}")
    for event in events:
        if event.asset_key in HOURLY_TABLES:
            context.log_event(event)
    by_key = {m.asset_key: m for m in events if m.partition is None}
    for key in STREAM_TABLES:
        table_event = by_key.get(key)
        metadata: dict[str, Any] = dict(table_event.metadata) if table_event else {"rows": 0, "batches": 0}
        if key in COLUMN_LINEAGE:
            metadata["dagster/column_lineage"] = COLUMN_LINEAGE[key]
        yield dg.MaterializeResult(asset_key=key, metadata=metadata)


def pyspark_resource(settings: Settings) -> PySparkResource:
    from streamrag_assets.streaming.spark import prepare_environment, session_conf

    # The JVM, started when a run first uses the session, must inherit PYSPARK_PYTHON: Python workers that plan the
    # Kafka data source read the environment, not the configuration.
    prepare_environment(settings)
    return PySparkResource(spark_config=session_conf(settings))


@dg.multi_asset(
    specs=[SPECS[key] for key in HOURLY_TABLES],
    name="hourly_reconcile",
    can_subset=True,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def hourly_reconcile(context: dg.AssetExecutionContext):
    """Make a range of hours whole, however the stream fared: Gold gets the documents Silver's events of those hours
    should have produced (re-derived from Bronze), pgvector gets every Gold document of those hours it lacks or
    holds stale (embedding only what changed), dead letters are tried again and documents past retention pruned.
    Runs of any range: the trailing-window schedule, a backfill from the UI or `dagster job backfill`."""
    from streamrag_assets.documents.retention import prune
    from streamrag_assets.documents.store import DocumentIndex
    from streamrag_assets.index import backfill
    from streamrag_assets.index.embedder import get_embedder
    from streamrag_assets.streaming.gold_gaps import fill_gold_gaps
    from streamrag_assets.streaming.pipeline import tables

    settings = get_settings()
    window = context.partition_time_window
    hours = context.partition_keys
    context.log.info(f"reconciling {len(hours)} hour(s): {window.start} .. {window.end}")
    if GOLD in context.selected_asset_keys:
        counts = fill_gold_gaps(settings, window.start, window.end)
        context.log.info(f"Gold: {counts}")
        yield dg.MaterializeResult(
            asset_key=GOLD,
            metadata={**counts, "hours": len(hours), "dagster/column_lineage": COLUMN_LINEAGE[GOLD]},
        )
    if EMBEDDINGS in context.selected_asset_keys:
        index = DocumentIndex(settings.app_database_url, get_embedder(settings))

        def progress(done: int, total: int, so_far) -> None:
            context.log.info(f"{done}/{total} Gold rows: {so_far.embedded} embedded, {so_far.unchanged} unchanged")

        result = backfill.reindex(index, tables(settings), window.start, window.end, 256, progress)
        _, still_failing = backfill.retry_dead_letters(index)
        pruned = prune(settings.app_database_url, settings.retention_days)
        yield dg.MaterializeResult(
            asset_key=EMBEDDINGS,
            metadata={
                "hours": len(hours),
                "embedded": result.embedded,
                "upserted": result.upserted,
                "unchanged": result.unchanged,
                "deleted": result.deleted,
                "dead_letters_still_failing": still_failing,
                "pruned_past_retention": pruned,
                "dagster/column_lineage": COLUMN_LINEAGE[EMBEDDINGS],
            },
        )
