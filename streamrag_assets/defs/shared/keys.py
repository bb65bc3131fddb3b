"""The asset keys, shared by the definitions and the processes that report to Dagster."""

import dagster as dg

TOPIC = dg.AssetKey("wikimedia_recentchange")
BRONZE = dg.AssetKey("bronze_events")
SILVER = dg.AssetKey("silver_events")
QUARANTINE = dg.AssetKey("silver_quarantine")
GOLD = dg.AssetKey("gold_documents")
EMBEDDINGS = dg.AssetKey("document_embeddings")

TABLES = (BRONZE, SILVER, QUARANTINE, GOLD, EMBEDDINGS)

# Tag of the Kafka sensor's catch-up runs: the head offsets the run covers up to.
CATCH_UP_TAG = "streamrag/to"
