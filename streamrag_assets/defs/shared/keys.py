"""The asset keys, shared by the definitions and the processes that report to Dagster."""

import dagster as dg

from streamrag_assets.streaming import reports

TOPIC = dg.AssetKey("wikimedia_recentchange")
BRONZE = dg.AssetKey(reports.BRONZE)
SILVER = dg.AssetKey(reports.SILVER)
QUARANTINE = dg.AssetKey(reports.QUARANTINE)
GOLD = dg.AssetKey(reports.GOLD)
EMBEDDINGS = dg.AssetKey(reports.EMBEDDINGS)

TABLES = (BRONZE, SILVER, QUARANTINE, GOLD, EMBEDDINGS)

# Tag of the Kafka sensor's catch-up runs: the head offsets the run covers up to.
CATCH_UP_TAG = "streamrag/to"
