"""Hostile events through the real platform (SSE -> ingest -> Tansu -> Spark stream -> Delta -> pgvector), and one
layer down at a time: the continuous query never stops for data, and a Postgres outage pauses only the index."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from kafka import KafkaProducer

from streamrag_assets.ingest.sources import recorded_event
from streamrag_assets.runtime.sse_source import sse_source_process
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.refine import Rejected, is_canary, parse_event
from streamrag_tests.harness import free_port, indexed_doc_ids, release, separate_platform
from streamrag_tests.hostile import hostile_events, storage_poison
from streamrag_tests.integration.test_ingest import _ingest, _topic_records, _wait_for
from streamrag_tests.integration.test_medallion import _stream

pytestmark = pytest.mark.integration

HOSTILE, ORDINARY = 1_200, 400


def sample_hostile(count: int, seed_value: int) -> list[str]:
    """``count`` hostile event values, the same ones on every run; each one line an SSE data field can carry."""
    values: list[str] = []

    @seed(seed_value)
    @settings(
        max_examples=count * 2,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_events())
    def collect(value: str) -> None:
        if len(values) < count and value.strip() and "\n" not in value and "\r" not in value:
            values.append(value)

    collect()
    return values


def _log(platform) -> str:
    return (platform.state_dir / "stream-test.log").read_text(errors="replace")


def _wait(condition, what: str, platform, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}\n{_log(platform)[-4000:]}"
        time.sleep(1)


def _bronze_complete(platform) -> bool:
    bronze = DeltaTables(platform.state_dir / "delta").read("bronze", ["offset"]) if _has_bronze(platform) else None
    return bronze is not None and len(bronze) == len(_topic_records(platform))


def _has_bronze(platform) -> bool:
    return (platform.state_dir / "delta" / "bronze" / "_delta_log").exists()


def _gold_doc_ids(platform) -> set[str]:
    gold = DeltaTables(platform.state_dir / "delta").read("gold", ["doc_id", "op"]).to_pylist()
    return {d["doc_id"] for d in gold if d["op"] != "delete"}


@pytest.fixture(scope="module")
def poisoned(stack):
    """1,200 hostile events among 400 recorded ones, served over SSE, ingested and refined by the continuous query."""
    platform = separate_platform(
        stack,
        "poison",
        source_port=free_port(),
        ingest_metrics_port=0,
        stream_metrics_port=0,
        dagster_report_interval_s=0,
        stream_trigger_ms=250,
        # The tests count Bronze against the topic's records: the broker keeps them all (a 60-s retention trimmed
        # the topic under Bronze's feet when the machine was loaded, and the counts never met).
        broker_retention_s=0,
    )
    lines = sample_hostile(HOSTILE, seed_value=22)
    for n in range(ORDINARY):
        lines.insert(n * 4, recorded_event(n, seed="poison"))
    lines[1:1] = storage_poison()  # in the first micro-batch, among ordinary edits
    feed = platform.state_dir / "hostile.ndjson"
    feed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stream = _stream(platform)
    server = sse_source_process(platform.model_copy(update={"ingest_rate": 200.0}), "recording", file=feed)
    ingest = None
    try:
        server.start()
        server.wait_ready(30)
        ingest = _ingest(platform, "recording")
        _wait_for(platform, len(lines), timeout_s=180)
        _wait(lambda: _bronze_complete(platform), "the stream did not take in every record", platform)
        yield platform, stream, lines
    finally:
        if ingest is not None:
            ingest.send_signal(signal.SIGTERM)
            ingest.wait(60)
        server.stop()
        stream.send_signal(signal.SIGTERM)
        try:
            stream.wait(60)
        except Exception:
            stream.kill()
        release(platform.home.parent)


def test_hostile_events_never_stop_the_stream_and_every_record_lands_exactly_once(poisoned) -> None:
    platform, stream, lines = poisoned
    assert stream.poll() is None, "the continuous query's process is still the first one: nothing stopped it"
    assert "streaming query failed" not in _log(platform) and "Traceback" not in _log(platform)

    records = _topic_records(platform)
    assert len(records) == len(lines), "every line served over SSE is one record of the topic"
    delta = DeltaTables(platform.state_dir / "delta")
    bronze, silver, quarantine = delta.read("bronze"), delta.read("silver"), delta.read("quarantine")
    positions = list(zip(bronze["partition"].to_pylist(), bronze["offset"].to_pylist(), strict=True))
    assert sorted(positions) == sorted((r.partition, r.offset) for r in records), "each offset once in Bronze"

    # Each Bronze record is in Silver or quarantine exactly once, or dropped as a canary or a repeated event id.
    silver_at = set(zip(silver["partition"].to_pylist(), silver["offset"].to_pylist(), strict=True))
    quarantine_at = set(zip(quarantine["partition"].to_pylist(), quarantine["offset"].to_pylist(), strict=True))
    assert len(silver_at) == len(silver) and len(quarantine_at) == len(quarantine) and not silver_at & quarantine_at
    dropped = len(bronze) - len(silver) - len(quarantine)
    canaries, accepted = 0, []
    for value in bronze["value"].to_pylist():
        try:
            event = parse_event(value)
        except Rejected:
            continue
        if is_canary(event):
            canaries += 1
        else:
            accepted.append(event["event_id"])
    assert dropped == canaries + len(accepted) - len(set(accepted))
    reasons = Counter(reason.split(":")[0] for reason in quarantine["reason"].to_pylist())
    assert len(quarantine) >= HOSTILE // 2 and all(quarantine["reason"].to_pylist())
    assert {"invalid_json", "wrong_type", "out_of_range", "invalid_time"} <= set(reasons), reasons
    assert len(silver) >= ORDINARY
    poison = [r for r in quarantine.to_pylist() if "storage-poison-" in r["value"]]
    assert len(poison) == len(storage_poison()), "each value past the storage types is quarantined once"

    # Every Gold document reached pgvector, once.
    _wait(lambda: indexed_doc_ids(platform) == _gold_doc_ids(platform), "pgvector does not match Gold", platform, 120)


def test_postgres_down_pauses_only_the_index_which_catches_up_with_no_gap(poisoned, stack) -> None:
    platform, stream, _ = poisoned
    before = len(DeltaTables(platform.state_dir / "delta").read("gold", ["doc_id"]))
    producer = KafkaProducer(bootstrap_servers=platform.bootstrap_servers, acks="all")
    stack.postgres.kill()
    try:
        for n in range(300):  # 300 more recorded edits while the vector store is down
            event = recorded_event(10_000 + n, seed="outage")
            producer.send(platform.topic, value=event.encode(), key=f"k{n}".encode())
            time.sleep(0.03)
        producer.flush()
        # Bronze, Silver and Gold take them in without Postgres.
        _wait(lambda: _bronze_complete(platform), "Bronze stopped while Postgres was down", platform, 120)
        gold_during = len(DeltaTables(platform.state_dir / "delta").read("gold", ["doc_id"]))
        assert gold_during > before
        assert stream.poll() is None, "the stream kept running"
        assert "indexing pauses" in _log(platform)
        time.sleep(5)  # down for a while longer: the index's probes find it still down
        assert stream.poll() is None
    finally:
        producer.close()
        stack.start(stack.postgres)
    _wait(lambda: "caught up" in _log(platform), "the index did not catch up", platform, 120)
    _wait(lambda: indexed_doc_ids(platform) == _gold_doc_ids(platform), "pgvector misses documents", platform, 120)
    assert stream.poll() is None
    counts = json.dumps({"gold": gold_during, "before": before})
    assert gold_during >= before + 200, counts
