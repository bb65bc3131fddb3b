"""The asset graph against the real stack: a Dagster run of bronze -> embeddings, the Kafka sensor on the real broker,
and freshness alerts posted by the real daemon to a real local webhook."""

import json
import shutil
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import create_engine, text

from benchmarks.medallion_throughput import fill_topic
from streamrag_assets.defs.keys import BRONZE, EMBEDDINGS, GOLD, QUARANTINE, SILVER, TOPIC
from streamrag_assets.services.dagster import dagster_daemon_process, dagster_env, prepare_dagster_home
from streamrag_assets.services.postgres import admin_connect
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_tests.conftest import PROJECT_ROOT, VENV_BIN, _clean_env, free_port

pytestmark = pytest.mark.integration

EVENTS = 600


@pytest.fixture(scope="module")
def platform(stack):
    """Settings of a separate platform on the shared servers: own topic, state, app and Dagster databases."""
    home = Path(tempfile.mkdtemp(prefix="streamrag-dagster-"))
    home.chmod(0o755)
    suffix = uuid.uuid4().hex[:8]
    with admin_connect(stack.settings) as conn:
        conn.execute(f"CREATE DATABASE app_{suffix}")
        conn.execute(f"CREATE DATABASE dagster_{suffix}")
    settings = stack.settings.model_copy(
        update={
            "home": home / ".streamrag",
            "topic": f"raw-{suffix}",
            "postgres_db": f"app_{suffix}",
            "postgres_dagster_db": f"dagster_{suffix}",
            "stream_metrics_port": 0,
            "ingest_metrics_port": 0,
            "dagster_port": free_port(),
            "sensor_interval_s": 2,
            "freshness_warn_minutes": 1.0,  # Dagster's shortest windows
            "freshness_fail_minutes": 1.25,
        }
    )
    settings.state_dir.mkdir(parents=True)
    fill_topic(settings, EVENTS)
    yield settings
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def env(platform, monkeypatch):
    """This process sees the platform's settings and Dagster instance (as the code location does)."""
    from streamrag_assets.settings import get_settings

    for name, value in {**platform.to_env(), **dagster_env(platform)}.items():
        monkeypatch.setenv(name, value)
    prepare_dagster_home(platform)
    get_settings.cache_clear()
    yield platform
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def materialized(platform):
    import subprocess

    prepare_dagster_home(platform)
    result = subprocess.run(
        [str(VENV_BIN / "dagster"), "job", "execute", "-m", "streamrag_assets.definitions", "-j", "medallion_job"],
        env={**_clean_env(), **platform.to_env(), **dagster_env(platform)},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    event = instance.get_latest_materialization_event(key)
    assert event is not None, f"{key.to_user_string()} was not materialized"
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_a_run_materializes_every_table_with_reconciling_counts(materialized, env) -> None:
    instance = dg.DagsterInstance.get()
    bronze, silver = _metadata(instance, BRONZE), _metadata(instance, SILVER)
    quarantine, gold, embeddings = (
        _metadata(instance, QUARANTINE),
        _metadata(instance, GOLD),
        _metadata(instance, EMBEDDINGS),
    )
    assert bronze["rows"] == EVENTS
    assert (
        bronze["rows"] == silver["rows"] + quarantine["rows"] + silver["duplicates_dropped"] + silver["canary_dropped"]
    )
    delta = DeltaTables(env.state_dir / "delta")
    assert gold["rows"] == len(delta.read("gold")) and gold["delta_version"] == delta.version("gold")
    assert sum(bronze["next_offsets"].values()) == EVENTS, "the run covered the topic up to its head"
    live_docs = sum(1 for op in delta.read("gold")["op"].to_pylist() if op != "delete")
    engine = create_engine(env.app_database_url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM documents")).scalar()
    engine.dispose()
    assert embeddings["upserted"] == stored == live_docs
    assert "dagster/column_lineage" in instance.get_latest_materialization_event(GOLD).asset_materialization.metadata

    run_id = instance.get_latest_materialization_event(GOLD).run_id
    checks = [
        e.dagster_event.event_specific_data
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    assert {c.check_name for c in checks} >= {
        "silver_no_duplicate_event_ids",
        "gold_documents_complete",
        "embeddings_reconcile_with_gold",
        "silver_schema_valid",
    }
    assert all(c.passed for c in checks if c.check_name != "quarantine_rate_under_threshold"), checks


def test_kafka_sensor_observes_the_topic_and_requests_runs_only_when_needed(materialized, env) -> None:
    from streamrag_assets.defs.ingest.sensors import evaluate, run_key, topic_heads
    from streamrag_assets.streaming.pipeline import checkpoint_lock

    instance = dg.DagsterInstance.ephemeral()
    caught_up = evaluate(dg.build_sensor_context(instance=instance))
    assert not caught_up.run_requests, "the run above processed everything: nothing to launch"
    observation = caught_up.asset_events[0]
    assert observation.asset_key == TOPIC and observation.metadata["pipeline_lag"].value == 0

    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=env.bootstrap_servers, acks="all")
    for i in range(50):
        producer.send(env.topic, key=f"k{i}".encode(), value=b'{"not": "an event"}')
    producer.flush()
    producer.close()

    behind = evaluate(dg.build_sensor_context(instance=instance, cursor=caught_up.cursor))
    heads = topic_heads(env.bootstrap_servers, env.topic)
    assert [r.run_key for r in behind.run_requests] == [run_key(heads)]
    assert behind.asset_events[0].metadata["pipeline_lag"].value == 50
    assert json.loads(behind.cursor)["heads"] == {str(p): o for p, o in heads.items()}

    unchanged = evaluate(dg.build_sensor_context(instance=instance, cursor=behind.cursor))
    assert not unchanged.asset_events, "observations only when the topic changed"
    assert [r.run_key for r in unchanged.run_requests] == [run_key(heads)], "same range, same key: launched once"

    with checkpoint_lock(env):  # the continuous query is running: it will process the new events itself
        while_running = evaluate(dg.build_sensor_context(instance=instance, cursor=behind.cursor))
    assert not while_running.run_requests


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_freshness_alerts_reach_a_webhook_when_a_table_goes_stale_and_recovers(materialized, env) -> None:
    from streamrag_assets.defs.reporting import DagsterReporter
    from streamrag_assets.streaming.pipeline import BatchResult, checkpoint_lock

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = env.model_copy(update={"alert_webhook_url": f"http://127.0.0.1:{server.server_port}/hook"})
    daemon = dagster_daemon_process(settings)
    daemon.env = {**settings.to_env(), **daemon.env, "FRESHNESS_DAEMON_INTERVAL_SECONDS": "2"}

    def gold_states() -> list[str]:
        return [m["state"] for m in _Receiver.received if m["asset"] == "gold_documents"]

    def wait_until(condition, what: str, timeout_s: float = 150) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"{what}; received {_Receiver.received}"
            time.sleep(0.5)

    def report_fresh_gold() -> None:
        reporter = DagsterReporter(settings.model_copy(update={"dagster_report_interval_s": 3600}))
        reporter.add(BatchResult(1, {"bronze": 1, "gold": 1}, {}, {0: 1}, {}, 0.1))
        reporter.close()

    with checkpoint_lock(settings):  # the Kafka sensor must not launch Spark runs meanwhile
        daemon.start()
        try:
            report_fresh_gold()  # PASS now, WARN after 60 s, FAIL after 75 s
            wait_until(lambda: gold_states()[-2:] == ["WARN", "FAIL"], "no WARN then FAIL alert for gold_documents")
            report_fresh_gold()  # recovered
            wait_until(lambda: gold_states()[-1:] == ["PASS"], "no recovery alert")
        finally:
            daemon.stop()
            server.shutdown()
    recovered = next(m for m in _Receiver.received if m["asset"] == "gold_documents" and m["state"] == "PASS")
    assert "recovered" in recovered["text"] and recovered["previous_state"] == "FAIL"
