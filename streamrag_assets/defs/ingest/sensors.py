"""The Kafka sensor: observes the raw topic, and launches availableNow runs when the continuous query is not running.

Every poll is bounded (a few seconds at most), far below the daemon's sensor timeout, so a slow or unreachable
broker skips a tick instead of blocking the daemon.
"""

import hashlib
import json
import time
from typing import Any

import dagster as dg

from streamrag_assets.defs.medallion.jobs import medallion_job
from streamrag_assets.defs.shared.keys import CATCH_UP_TAG, TOPIC
from streamrag_assets.kafka import offsets as kafka_offsets
from streamrag_assets.settings import get_settings

POLL_TIMEOUT_S = 5.0


def run_key(heads: dict[int, int]) -> str:
    """One run per distinct set of head offsets: the range the run will cover ends there."""
    text = ",".join(f"{p}:{o}" for p, o in sorted(heads.items()))
    return "offsets-" + hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


def evaluate(context: dg.SensorEvaluationContext, job_name: str | None = None) -> dg.SensorResult | dg.SkipReason:
    from streamrag_assets.streaming.checkpoint import committed_offsets, query_running

    settings = get_settings()
    try:
        heads = kafka_offsets.topic_heads(settings.bootstrap_servers, settings.topic, POLL_TIMEOUT_S)
    except Exception as exc:  # unreachable broker, missing topic: skip this tick, say why
        return dg.SkipReason(f"topic {settings.topic} at {settings.bootstrap_servers} not readable: {exc}")
    previous = json.loads(context.cursor) if context.cursor else {}
    now = time.time()
    processed = committed_offsets(settings)
    lag = {p: max(0, head - processed.get(p, 0)) for p, head in heads.items()}
    running = query_running(settings)
    cursor: dict[str, Any] = {"heads": {str(p): o for p, o in heads.items()}, "at": now}
    events: list[dg.AssetObservation] = []
    if previous.get("heads") != cursor["heads"]:
        produced = sum(heads.values()) - sum(previous.get("heads", {}).values())
        elapsed = now - previous["at"] if previous else 0
        events.append(
            dg.AssetObservation(
                TOPIC,
                metadata={
                    "head_offsets": dg.MetadataValue.json(cursor["heads"]),
                    "records": sum(heads.values()),
                    "pipeline_lag": sum(lag.values()),
                    "events_per_s": round(produced / elapsed, 2) if elapsed > 0 else 0.0,
                    "continuous_query_running": running,
                },
            )
        )
    else:
        cursor = previous  # unchanged: keep the time of the last change for the rate
    requests = []
    if not running and sum(lag.values()) > 0:
        requests.append(
            dg.RunRequest(
                run_key=run_key(heads),
                tags={"streamrag/from": json.dumps(processed), CATCH_UP_TAG: json.dumps(heads)},
                job_name=job_name,
            )
        )
    return dg.SensorResult(run_requests=requests, asset_events=events, cursor=json.dumps(cursor))


def kafka_sensor(job, interval_s: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="kafka_topic_sensor",
        job=job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Observes the raw topic (head offsets, lag, events/s; only when they change) and, when the "
        "continuous query is not running, launches an availableNow run of bronze -> embeddings per new offset range.",
    )
    def kafka_topic_sensor(context: dg.SensorEvaluationContext):
        return evaluate(context)

    return kafka_topic_sensor


kafka_topic_sensor = kafka_sensor(medallion_job, get_settings().sensor_interval_s)
