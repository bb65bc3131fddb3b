"""Gold and its pgvector embeddings made whole for a range of hours, whatever the stream did: the asset the
trailing-window schedule and partition backfills run. The work is in `streamrag_assets.operations`."""

import dagster as dg

from streamrag_assets.defs.shared.keys import EMBEDDINGS, GOLD
from streamrag_assets.defs.shared.tables import COLUMN_LINEAGE, HOURLY_TABLES, SPECS
from streamrag_assets.settings import get_settings


@dg.multi_asset(
    specs=[SPECS[key] for key in HOURLY_TABLES],
    name="hourly_reconcile",
    can_subset=True,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def hourly_reconcile(context: dg.AssetExecutionContext):
    """Make a range of hours whole, however the stream fared: Gold gets the documents Silver's events of those hours
    should have produced (re-derived from Bronze), pgvector gets every Gold document of those hours it lacks or
    holds stale (embedding only what changed; a working stream's batches not yet indexed are left to it), dead
    letters are tried again and documents past retention pruned.
    Runs of any range: the trailing-window schedule, a backfill from the UI or `dagster job backfill`."""
    from streamrag_assets.documents.retention import prune
    from streamrag_assets.operations import dead_letters
    from streamrag_assets.operations.gold_gaps import fill_gold_gaps
    from streamrag_assets.operations.reindex import document_index, reindex_window

    settings = get_settings()
    window = context.partition_time_window
    hours = context.partition_keys
    context.log.info(f"reconciling {len(hours)} hour(s): {window.start} .. {window.end}")
    if GOLD in context.selected_asset_keys:
        counts = fill_gold_gaps(settings, window.start, window.end, context.log.info)
        context.log.info(f"Gold: {counts}")
        yield dg.MaterializeResult(
            asset_key=GOLD,
            metadata={**counts, "hours": len(hours), "dagster/column_lineage": COLUMN_LINEAGE[GOLD]},
        )
    if EMBEDDINGS in context.selected_asset_keys:
        index = document_index(settings)  # one engine and embedder for both
        # The stream's own batches not yet indexed are left to it (the trailing window's last hour is being written).
        result = reindex_window(settings, window.start, window.end, 256, context.log.info, index, leave_to_stream=True)
        _, still_failing = dead_letters.retry(settings, context.log.info, index)
        pruned = prune(settings.app_database_url, settings.retention_days)
        yield dg.MaterializeResult(
            asset_key=EMBEDDINGS,
            metadata={
                "hours": len(hours),
                "embedded": result.embedded,
                "upserted": result.upserted,
                "unchanged": result.unchanged,
                "deleted": result.deleted,
                "left_to_stream": result.left_to_stream,
                "dead_letters_still_failing": still_failing,
                "pruned_past_retention": pruned,
                "dagster/column_lineage": COLUMN_LINEAGE[EMBEDDINGS],
            },
        )
