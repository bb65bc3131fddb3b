"""Spark's report of each trigger, as metrics: where Spark's fixed cost per micro-batch goes."""

from __future__ import annotations

import json
import logging

from pyspark.sql import SparkSession

from streamrag_assets.metrics import STREAM_IDLE_TRIGGERS, STREAM_TRIGGER_PHASE
from streamrag_assets.streaming.spark_internals import LISTENER_INTERFACE, raw_listener

log = logging.getLogger(__name__)


class TriggerPhases:
    """Spark's listener interface, implemented over py4j: each trigger's progress report (``durationMs``:
    latestOffset, addBatch, walCommit, ...) becomes `STREAM_TRIGGER_PHASE` observations. The report is read as one
    JSON string: pyspark's own listener converts it field by field over py4j, and its class look-ups scan the JVM's
    class path each time (measured: ~115 ms of JVM and ~50 ms of driver CPU per trigger, a sixth of a core at one
    trigger a second; 48% of the stream JVM's CPU samples). A trigger slower than ``slow_s`` is logged."""

    def __init__(self, slow_s: float) -> None:
        self.slow_s = slow_s

    def onQueryStarted(self, event) -> None:
        pass

    def onQueryProgress(self, event) -> None:
        progress = json.loads(event.progress().json())
        durations = progress.get("durationMs") or {}
        for phase, ms in durations.items():
            STREAM_TRIGGER_PHASE.labels(phase).observe(ms / 1000)
        if durations.get("triggerExecution", 0) > self.slow_s * 1000:
            log.warning("micro-batch %d: a slow trigger, ms by phase %s", progress.get("batchId"), durations)

    def onQueryIdle(self, event) -> None:
        STREAM_IDLE_TRIGGERS.inc()

    def onQueryTerminated(self, event) -> None:
        pass

    class Java:
        implements = [LISTENER_INTERFACE]


_LISTENING: set[int] = set()


def listen_to_triggers(spark: SparkSession, slow_s: float) -> None:
    """Register `TriggerPhases` with the session, once per session."""
    if id(spark) not in _LISTENING:
        spark.streams.addListener(raw_listener(TriggerPhases(slow_s)))
        _LISTENING.add(id(spark))
