"""The availableNow run of the medallion tables, which the Kafka sensor launches."""

import dagster as dg

from streamrag_assets.defs.shared.tables import STREAM_TABLES
from streamrag_assets.defs.shared.tags import SPARK_TAGS

medallion_job = dg.define_asset_job(
    "medallion_job",
    selection=dg.AssetSelection.assets(*STREAM_TABLES),
    tags=SPARK_TAGS,
    description="Bronze -> Silver (+ quarantine) -> Gold -> pgvector for what the topic holds now (availableNow).",
)
