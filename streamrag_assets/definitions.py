"""The code location: merges each domain's definitions, nothing else."""

import dagster as dg

from streamrag_assets.defs.alerts import freshness_alert_sensor
from streamrag_assets.defs.ingest.assets import wikimedia_recentchange
from streamrag_assets.defs.ingest.sensors import kafka_sensor
from streamrag_assets.defs.ops.replay import JOBS, SPARK_TAGS
from streamrag_assets.defs.pipeline.assets import hourly_partitions, hourly_reconcile, medallion, pyspark_resource
from streamrag_assets.defs.pipeline.checks import CHECKS
from streamrag_assets.defs.schedules.backfill import trailing_window_schedule
from streamrag_assets.settings import get_settings

settings = get_settings()
medallion_job = dg.define_asset_job(
    "medallion_job",
    selection=dg.AssetSelection.assets(medallion),
    tags=SPARK_TAGS,
    description="Bronze -> Silver (+ quarantine) -> Gold -> pgvector for what the topic holds now (availableNow).",
)
hourly_reconcile_job = dg.define_asset_job(
    "hourly_reconcile_job",
    selection=dg.AssetSelection.assets(hourly_reconcile),
    description="Gold + pgvector for a range of hours: fill gaps, retry dead letters, prune past retention.",
)

defs = dg.Definitions(
    assets=[wikimedia_recentchange, medallion, hourly_reconcile],
    asset_checks=CHECKS,
    jobs=[medallion_job, hourly_reconcile_job, *JOBS],
    schedules=[
        trailing_window_schedule(
            hourly_reconcile_job,
            hourly_partitions(settings),
            settings.backfill_cron,
            settings.backfill_window_hours,
        )
    ],
    sensors=[
        kafka_sensor(medallion_job, settings.sensor_interval_s),
        freshness_alert_sensor(settings.sensor_interval_s),
    ],
    resources={"pyspark": pyspark_resource(settings)},
)
