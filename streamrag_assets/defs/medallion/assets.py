"""Bronze -> Silver (+ quarantine) -> Gold -> pgvector as software-defined assets.

The tables are kept fresh by the continuous query (`streamrag stream`, which reports each interval's writes as
runless materializations); materializing them here runs the same Spark code and checkpoint as a bounded
``availableNow`` query, which is what the Kafka sensor launches when the continuous query is not running.
"""

from typing import Any

import dagster as dg
from dagster_pyspark import PySparkResource

from streamrag_assets.defs.shared.keys import CATCH_UP_TAG
from streamrag_assets.defs.shared.reporting import materializations
from streamrag_assets.defs.shared.tables import COLUMN_LINEAGE, HOURLY_TABLES, SPECS, STREAM_TABLES
from streamrag_assets.settings import get_settings


@dg.multi_asset(specs=[SPECS[key] for key in STREAM_TABLES], name="medallion_available_now", can_subset=False)
def medallion(context: dg.AssetExecutionContext, pyspark: PySparkResource):
    """Process what the topic holds beyond the checkpoint (availableNow), through every table, then stop.

    The same micro-batches write Gold and pgvector; those are partitioned by hour of event time, so their writes
    are logged as materializations of the hours they touched."""
    from streamrag_assets.streaming.batch_result import BatchResult
    from streamrag_assets.streaming.checkpoint import QueryAlreadyRunning, checkpoints_for_run, query_running
    from streamrag_assets.streaming.pipeline import start_query
    from streamrag_assets.streaming.spark import prepare_environment

    settings = get_settings()
    if CATCH_UP_TAG in context.run.tags and query_running(settings):
        # The sensor saw no query between a replay's end and the continuous query taking its checkpoint back (or
        # while another run held it): whoever holds it now reads these offsets. Pausing it would only cost a restart.
        context.log.info("the continuous query (or another run) holds the checkpoint and reads these offsets; skipped")
        for key in STREAM_TABLES:
            yield dg.MaterializeResult(asset_key=key, metadata={"rows": 0, "batches": 0, "skipped": True})
        return
    prepare_environment(settings)
    pyspark.spark_session  # noqa: B018 - the session dagster-pyspark made with our configuration; reused below
    results: list[BatchResult] = []

    def progress(result: BatchResult) -> None:
        results.append(result)
        context.log.info(f"batch {result.batch_key}: {result.counts} in {result.seconds:.2f} s")

    try:
        with checkpoints_for_run(
            settings, f"Dagster run {context.run_id[:8]} of {context.job_name}", progress=context.log.info
        ):
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
