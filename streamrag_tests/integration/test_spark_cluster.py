"""The stream on a Spark standalone cluster of separate processes (a master and two workers from the installed
Spark), as `up` runs it with STREAMRAG_SPARK_LOCAL_WORKERS=2: executors on both workers do the refine, a worker
SIGKILLed mid-stream costs nothing, and every count reconciles."""

from __future__ import annotations

import pytest

from streamrag_assets.runtime.spark_cluster import master_json, spark_cluster_processes
from streamrag_assets.runtime.stream import stream_process
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_tests.harness import (
    bronze_verdicts,
    fill_topic,
    free_port,
    free_port_block,
    indexed_doc_ids,
    release,
    running,
    separate_platform,
    wait_until,
)

pytestmark = pytest.mark.integration

EVENTS = 3000


def _executor_logs(settings, worker: int) -> str:
    """What the executors this worker ran for the stream wrote (Spark keeps them under its work dir)."""
    work = settings.state_dir / "spark" / f"worker-{worker}"
    return "".join(path.read_text(errors="replace") for path in sorted(work.glob("app-*/*/stderr")))


def _layers(settings) -> dict[str, list[dict]]:
    delta = DeltaTables(settings.state_dir / "delta")
    layers = {}
    for layer in ("bronze", "silver", "quarantine", "gold"):
        try:
            layers[layer] = delta.read(layer).to_pylist()
        except Exception:  # not created yet
            layers[layer] = []
    return layers


def _reconciled(settings) -> bool:
    layers = _layers(settings)
    if len(layers["bronze"]) < EVENTS:
        return False
    valid, rejected, _ = bronze_verdicts([r["value"] for r in layers["bronze"]])
    live = {d["doc_id"] for d in layers["gold"] if d["op"] != "delete"}
    return (
        {r["event_id"] for r in layers["silver"]} == valid
        and len(layers["quarantine"]) == rejected
        and indexed_doc_ids(settings) == live
    )


def _counts(settings) -> str:
    layers = _layers(settings)
    valid, rejected, _ = bronze_verdicts([r["value"] for r in layers["bronze"]])
    live = {d["doc_id"] for d in layers["gold"] if d["op"] != "delete"}
    indexed = indexed_doc_ids(settings)
    counts = {name: len(rows) for name, rows in layers.items()}
    return f"{counts}; expected {len(valid)} in Silver, {rejected} quarantined, {len(live)} indexed: " + (
        f"{len(indexed - live)} indexed not live, {len(live - indexed)} live not indexed"
    )


def test_the_stream_runs_on_a_standalone_cluster_whose_executors_refine(stack) -> None:
    settings = separate_platform(
        stack,
        "cluster",
        spark_local_workers=2,
        spark_master_port=free_port_block(3),
        spark_master_ui_port=free_port_block(3),
        topic_partitions=2,  # one reader task per partition: both executors read and refine
        stream_metrics_port=free_port(),
        stream_max_events_per_trigger=300,
    )
    fill_topic(settings, EVENTS // 2, seed=21)
    cluster = spark_cluster_processes(settings)
    assert [p.name for p in cluster] == ["spark-master", "spark-worker-1", "spark-worker-2"]
    stream = stream_process(settings)
    log = settings.state_dir / "logs" / "stream.log"
    try:
        with running(settings, [*cluster, stream]):
            first = lambda: len(_layers(settings)["bronze"]) >= 600  # noqa: E731
            wait_until(first, "the first micro-batches", 240, log.read_text)
            apps = master_json(settings)["activeapps"]
            assert [(a["name"], a["cores"]) for a in apps] == [("streamrag", 2)], "one executor on each worker"

            # The worker whose executor has run tasks is the one killed (on a loaded machine the first batches may
            # all have run on one executor): its executor goes with it and Spark re-runs its work on the other one.
            ran = {n: _executor_logs(settings, n).count("Running task") for n in (1, 2)}
            assert any(ran.values()), "the micro-batches' tasks ran in the cluster's executors"
            killed = 1 if ran[1] else 2
            survivor = 3 - killed
            worker = cluster[killed]
            worker.kill()
            fill_topic(settings, EVENTS, seed=21, first=EVENTS // 2)
            worker.start()  # as the supervisor would
            worker.wait_ready(120)

            wait_until(
                lambda: _reconciled(settings),
                "every event in Silver/quarantine and pgvector",
                300,
                lambda: _counts(settings),
            )
        text = log.read_text()
        assert f"Spark master {settings.spark_master_url}: micro-batches are refined in the cluster's executors" in text
        after = _executor_logs(settings, survivor).count("Running task")
        assert after > ran[survivor], f"worker {survivor}'s executor ran the tasks while worker {killed} was down"
        layers = _layers(settings)
        positions = {(r["partition"], r["offset"]) for r in layers["bronze"]}
        assert len(positions) == len(layers["bronze"]) == EVENTS, "each offset once, with a worker killed mid-stream"
        assert len({r["event_id"] for r in layers["silver"]}) == len(layers["silver"]), "each event once in Silver"
    finally:
        release(settings.home.parent)
