"""The raw Kafka topic: the durable, replayable source of every table downstream."""

import dagster as dg

from streamrag_assets.settings import get_settings

wikimedia_recentchange = dg.AssetSpec(
    key="wikimedia_recentchange",
    description=(
        "Kafka topic holding every Wikimedia recentchange event exactly as the SSE stream sent it "
        "(key wiki:title, headers sse_id and ingested_at). Filtering happens downstream, where it is counted."
    ),
    group_name="ingest",
    kinds={"kafka"},
    owners=["team:streamrag"],
    metadata={"topic": get_settings().topic, "partitions": get_settings().topic_partitions},
)
