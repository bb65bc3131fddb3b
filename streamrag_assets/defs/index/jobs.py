"""The reconciliation of Gold and pgvector over a range of hours (the trailing-window schedule, backfills)."""

import dagster as dg

from streamrag_assets.defs.shared.tables import HOURLY_TABLES

hourly_reconcile_job = dg.define_asset_job(
    "hourly_reconcile_job",
    selection=dg.AssetSelection.assets(*HOURLY_TABLES),
    description="Gold + pgvector for a range of hours: fill gaps, retry dead letters, prune past retention.",
)
