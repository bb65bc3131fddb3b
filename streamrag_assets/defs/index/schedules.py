"""The trailing-window backfill: every hour (``backfill_cron``), one run reconciles the last ``backfill_window_hours``
hours of Gold and pgvector: gaps filled, dead letters retried, documents past retention pruned."""

import dagster as dg

from streamrag_assets.defs.index.jobs import hourly_reconcile_job
from streamrag_assets.defs.shared.tables import hourly_partitions
from streamrag_assets.settings import get_settings

# The tags with which Dagster marks a run over a partition range (what a single-run backfill launches).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def trailing_window(partitions: dg.HourlyPartitionsDefinition, now, hours: int) -> tuple[str, str] | None:
    """First and last partition key of the ``hours`` hours up to and including the one ``now`` is in."""
    keys = partitions.get_partition_keys(current_time=now)[-hours:]
    return (keys[0], keys[-1]) if keys else None


def trailing_window_schedule(
    job, partitions: dg.HourlyPartitionsDefinition, cron: str, hours: int
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="trailing_window_backfill",
        cron_schedule=cron,
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Every run reconciles the last {hours} hour(s) of Gold and pgvector in one run.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        window = trailing_window(partitions, context.scheduled_execution_time, hours)
        if window is None:
            return dg.SkipReason("no hourly partition has started yet")
        first, last = window
        return dg.RunRequest(
            run_key=f"{first}..{last}@{context.scheduled_execution_time.isoformat()}",
            tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
        )

    return _schedule


_settings = get_settings()
trailing_window_backfill = trailing_window_schedule(
    hourly_reconcile_job,
    hourly_partitions(_settings),
    _settings.backfill_cron,
    _settings.backfill_window_hours,
)
