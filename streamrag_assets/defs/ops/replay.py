"""Replay jobs, launchable from the launchpad with typed config; each runs the same code as the CLI."""

from datetime import datetime

import dagster as dg
from pydantic import Field

from streamrag_assets.settings import get_settings

SPARK_TAGS = {"streamrag/spark": "medallion"}  # the instance runs one such job at a time


class RebuildConfig(dg.Config):
    confirm: bool = Field(True, description="Recompute Silver, quarantine and Gold from Bronze as new versions.")


@dg.op(description="Recompute Silver, quarantine and Gold from Bronze (same transforms as the stream).")
def rebuild_from_bronze_op(context: dg.OpExecutionContext, config: RebuildConfig) -> dict:
    from streamrag_assets.streaming.checkpoint import QueryAlreadyRunning, checkpoint_lock
    from streamrag_assets.streaming.replay import rebuild_from_bronze

    if not config.confirm:
        raise dg.Failure("set confirm: true to rebuild")
    try:
        with checkpoint_lock(get_settings()):
            counts = rebuild_from_bronze(get_settings())
    except QueryAlreadyRunning as exc:
        raise dg.Failure(f"{exc}; stop it first") from None
    context.add_output_metadata({k: v for k, v in counts.items()})
    return counts


class ReprocessConfig(dg.Config):
    from_offsets: dict[str, int] = Field(
        default_factory=dict, description='Partition -> offset to re-read from, e.g. {"0": 1200}; others from 0.'
    )
    from_time: str | None = Field(None, description="ISO-8601 time: re-read from the first offset at or after it.")


@dg.op(description="Re-read the topic from an offset or a time with a fresh checkpoint (an availableNow run).")
def reprocess_topic_op(context: dg.OpExecutionContext, config: ReprocessConfig) -> str:
    from streamrag_assets.streaming.checkpoint import QueryAlreadyRunning, checkpoint_lock
    from streamrag_assets.streaming.pipeline import start_query
    from streamrag_assets.streaming.replay import prepare_reprocess, resolve_start, starting_offsets_option

    settings = get_settings()
    if bool(config.from_offsets) == bool(config.from_time):
        raise dg.Failure("give either from_offsets or from_time")
    when = datetime.fromisoformat(config.from_time.replace("Z", "+00:00")) if config.from_time else None
    offsets = {int(p): o for p, o in config.from_offsets.items()} or None
    try:
        with checkpoint_lock(settings):
            start = resolve_start(settings, offsets, when)
            epoch = prepare_reprocess(settings, start)
            query = start_query(
                settings, available_now=True, starting_offsets=starting_offsets_option(start), epoch=epoch
            )
            query.awaitTermination()
    except QueryAlreadyRunning as exc:
        raise dg.Failure(f"{exc}; stop it first") from None
    context.log.info(f"reprocessed from {start} into checkpoint epoch {epoch}")
    return f"epoch {epoch}"


class ReembedConfig(dg.Config):
    since: str | None = Field(None, description="ISO-8601 event time to start at (inclusive).")
    until: str | None = Field(None, description="ISO-8601 event time to stop before.")
    retry_dead_letters: bool = Field(True, description="Also index again the documents that failed before.")


@dg.op(description="(Re)embed the Gold documents of a time range into pgvector (e.g. after a model change).")
def reembed_op(context: dg.OpExecutionContext, config: ReembedConfig) -> dict:
    from streamrag_assets.documents.store import DocumentIndex
    from streamrag_assets.index import backfill
    from streamrag_assets.index.embedder import get_embedder
    from streamrag_assets.streaming.delta import DeltaTables

    settings = get_settings()
    since = datetime.fromisoformat(config.since.replace("Z", "+00:00")) if config.since else None
    until = datetime.fromisoformat(config.until.replace("Z", "+00:00")) if config.until else None
    index = DocumentIndex(settings.app_database_url, get_embedder(settings))

    def progress(done: int, total: int, so_far) -> None:
        context.log.info(f"{done}/{total} Gold rows: {so_far.embedded} embedded, {so_far.unchanged} unchanged")

    result = backfill.reindex(index, DeltaTables(settings.state_dir / "delta"), since, until, 256, progress)
    summary = {"embedded": result.embedded, "upserted": result.upserted, "unchanged": result.unchanged}
    if config.retry_dead_letters:
        _, summary["still_failing"] = backfill.retry_dead_letters(index)
    context.add_output_metadata(summary)
    return summary


@dg.job(tags=SPARK_TAGS, description="Rebuild Silver, quarantine and Gold from Bronze.")
def rebuild_from_bronze_job():
    rebuild_from_bronze_op()


@dg.job(tags=SPARK_TAGS, description="Re-read the raw topic from an offset or time (fresh checkpoint).")
def reprocess_topic_job():
    reprocess_topic_op()


@dg.job(description="Re-embed a time range of Gold documents into pgvector.")
def reembed_job():
    reembed_op()


JOBS = [rebuild_from_bronze_job, reprocess_topic_job, reembed_job]
