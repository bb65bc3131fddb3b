"""The continuous query's reports (`documents/reports.py`) as runless materializations of the tables it wrote."""

import dagster as dg
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from streamrag_assets.defs.shared.reporting import to_materializations
from streamrag_assets.documents import reports
from streamrag_assets.settings import get_settings


def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    settings = get_settings()
    reported = int(context.cursor or 0)
    engine = create_engine(settings.app_database_url, poolclass=NullPool)
    try:
        # The cursor is stored with the events of the tick that moved it: what it covers is in Dagster now.
        reports.forget(engine, reported)
        unread = reports.unread(engine, reported)
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc  # a DBAPIError's driver exception, when there is one
        return dg.SkipReason(f"the stream's reports cannot be read ({type(cause).__name__})")
    finally:
        engine.dispose()
    if not unread:
        return dg.SkipReason("no micro-batch since the last report")
    events = to_materializations(e for _, report in unread for e in report)
    return dg.SensorResult(asset_events=events, cursor=str(unread[-1][0]))


@dg.sensor(
    name="stream_reports",
    minimum_interval_seconds=max(1, round(get_settings().dagster_report_interval_s)),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reports the continuous query's micro-batches as runless materializations of the tables it wrote "
    "(rows, Delta versions, offsets reached, batch ids; Gold and embeddings per hour written), from the summaries the "
    "stream leaves in Postgres every STREAMRAG_DAGSTER_REPORT_INTERVAL_S.",
)
def stream_reports(context: dg.SensorEvaluationContext):
    return evaluate(context)
