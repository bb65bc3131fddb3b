"""The maintenance operations as jobs, launchable from the launchpad with typed config; each calls the same
`streamrag_assets.operations` function as the CLI command of the same purpose."""

import dagster as dg
from pydantic import Field

from streamrag_assets.defs.shared.tags import SPARK_TAGS
from streamrag_assets.isotime import parse_iso_time
from streamrag_assets.settings import get_settings


def _who(context: dg.OpExecutionContext) -> str:
    """What the paused continuous query says it waits for (`streamrag status`, /health, its log)."""
    return f"Dagster run {context.run_id[:8]} of {context.job_name}"


class RebuildConfig(dg.Config):
    confirm: bool = Field(True, description="Recompute Silver, quarantine and Gold from Bronze as new versions.")


@dg.op(description="Recompute Silver, quarantine and Gold from Bronze (same transforms as the stream).")
def rebuild_from_bronze_op(context: dg.OpExecutionContext, config: RebuildConfig) -> dict:
    from streamrag_assets.operations.rebuild import rebuild_from_bronze
    from streamrag_assets.streaming.checkpoint import QueryAlreadyRunning

    if not config.confirm:
        raise dg.Failure("set confirm: true to rebuild")
    try:
        counts = rebuild_from_bronze(get_settings(), context.log.info, who=_who(context))
    except QueryAlreadyRunning as exc:
        raise dg.Failure(str(exc)) from None
    context.add_output_metadata({k: v for k, v in counts.items()})
    return counts


class ReprocessConfig(dg.Config):
    from_offsets: dict[str, int] = Field(
        default_factory=dict, description='Partition -> offset to re-read from, e.g. {"0": 1200}; others from 0.'
    )
    from_time: str | None = Field(None, description="ISO-8601 time: re-read from the first offset at or after it.")


@dg.op(description="Re-read the topic from an offset or a time with a fresh checkpoint (an availableNow run).")
def reprocess_topic_op(context: dg.OpExecutionContext, config: ReprocessConfig) -> str:
    from streamrag_assets.operations.reprocess import reprocess
    from streamrag_assets.streaming.checkpoint import QueryAlreadyRunning

    if bool(config.from_offsets) == bool(config.from_time):
        raise dg.Failure("give either from_offsets or from_time")
    when = parse_iso_time(config.from_time) if config.from_time else None
    offsets = {int(p): o for p, o in config.from_offsets.items()} or None
    try:
        done = reprocess(get_settings(), offsets, when, context.log.info, who=_who(context))
    except QueryAlreadyRunning as exc:
        raise dg.Failure(str(exc)) from None
    context.log.info(f"reprocessed from {done.start} into checkpoint epoch {done.epoch}")
    return f"epoch {done.epoch}"


class ReembedConfig(dg.Config):
    since: str | None = Field(None, description="ISO-8601 event time to start at (inclusive).")
    until: str | None = Field(None, description="ISO-8601 event time to stop before.")
    retry_dead_letters: bool = Field(True, description="Also index again the documents that failed before.")


@dg.op(description="(Re)embed the Gold documents of a time range into pgvector (e.g. after a model change).")
def reembed_op(context: dg.OpExecutionContext, config: ReembedConfig) -> dict:
    from streamrag_assets.operations import dead_letters
    from streamrag_assets.operations.reindex import document_index, reindex_window

    settings = get_settings()
    since = parse_iso_time(config.since) if config.since else None
    until = parse_iso_time(config.until) if config.until else None
    index = document_index(settings)  # one engine and embedder for both
    result = reindex_window(settings, since, until, 256, context.log.info, index)
    summary = {"embedded": result.embedded, "upserted": result.upserted, "unchanged": result.unchanged}
    if config.retry_dead_letters:
        _, summary["still_failing"] = dead_letters.retry(settings, context.log.info, index)
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


class PruneHistoryConfig(dg.Config):
    older_than_days: float | None = Field(
        None, description="Remove what is older than this many days (default: STREAMRAG_DAGSTER_HISTORY_DAYS)."
    )


@dg.op(description="Remove finished runs and the stream's runless table reports older than the history to keep.")
def prune_dagster_history_op(context: dg.OpExecutionContext, config: PruneHistoryConfig) -> dict:
    from datetime import UTC, datetime, timedelta

    from streamrag_assets.operations.dagster_history import prune

    days = config.older_than_days
    if days is None:
        days = get_settings().dagster_history_days
        if days <= 0:
            context.log.info("STREAMRAG_DAGSTER_HISTORY_DAYS is 0: everything is kept")
            return {"runs": 0, "runless_events": 0}
    counts = prune(context.instance, datetime.now(UTC) - timedelta(days=days), context.log.info)
    context.add_output_metadata(counts)
    return counts


@dg.job(description="Keeps Dagster's history to STREAMRAG_DAGSTER_HISTORY_DAYS (runs, the stream's table reports).")
def prune_dagster_history_job():
    prune_dagster_history_op()


prune_dagster_history = dg.ScheduleDefinition(
    name="prune_dagster_history",
    job=prune_dagster_history_job,
    cron_schedule=get_settings().dagster_prune_cron,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day: finished runs and runless table reports older than STREAMRAG_DAGSTER_HISTORY_DAYS go.",
)
