"""The asset graph against the real stack: a Dagster run of bronze -> embeddings, the Kafka sensor on the real broker,
and freshness alerts posted by the real daemon to a real local webhook."""

import json
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import httpx
import pytest
from sqlalchemy import create_engine, text

from streamrag_assets.defs.shared.keys import BRONZE, CATCH_UP_TAG, EMBEDDINGS, GOLD, QUARANTINE, SILVER, TOPIC
from streamrag_assets.runtime.dagster import dagster_daemon_process, dagster_env, prepare_dagster_home
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_tests import harness
from streamrag_tests.harness import PROJECT_ROOT, VENV_BIN, clean_env, fill_topic, free_port, release, separate_platform

pytestmark = pytest.mark.integration

EVENTS = 600


@pytest.fixture(scope="module")
def platform(stack):
    """Settings of a separate platform on the shared servers: own topic, state, app and Dagster databases."""
    settings = separate_platform(
        stack,
        "dagster",
        dagster_db=True,
        stream_metrics_port=0,
        ingest_metrics_port=0,
        dagster_port=free_port(),
        sensor_interval_s=2,
        freshness_warn_minutes=1.0,  # Dagster's shortest windows
        freshness_fail_minutes=1.25,
        # The replay test re-reads the topic from offset 0 after the stream has run for minutes: the broker keeps
        # every record here (retention and what a reprocess below it does: test_offset_gaps.py).
        broker_retention_s=0,
    )
    fill_topic(settings, EVENTS)
    yield settings
    release(settings.home.parent)


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
        env={**clean_env(), **platform.to_env(), **dagster_env(platform)},
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


def _hourly(instance: dg.DagsterInstance, key: dg.AssetKey, run_id: str) -> dict[str, dict]:
    """The run's materializations of an hourly asset: partition -> metadata."""
    found = {}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records:
        event = record.event_log_entry.asset_materialization
        if event is not None and event.asset_key == key:
            found[event.partition] = {k: v.value for k, v in event.metadata.items()}
    return found


def _gold_hours(delta: DeltaTables) -> dict[str, int]:
    from streamrag_assets.streaming.batch_result import hour_counts

    return hour_counts(delta.read("gold")["event_time"])


def test_a_run_materializes_every_table_with_reconciling_counts(materialized, env) -> None:
    instance = dg.DagsterInstance.get()
    bronze, silver, quarantine = (
        _metadata(instance, BRONZE),
        _metadata(instance, SILVER),
        _metadata(instance, QUARANTINE),
    )
    run_id = instance.get_latest_materialization_event(BRONZE).run_id
    gold, embeddings = _hourly(instance, GOLD, run_id), _hourly(instance, EMBEDDINGS, run_id)
    assert bronze["rows"] == EVENTS
    assert (
        bronze["rows"] == silver["rows"] + quarantine["rows"] + silver["duplicates_dropped"] + silver["canary_dropped"]
    )
    delta = DeltaTables(env.state_dir / "delta")
    # Gold and its embeddings are hourly partitions of event time: one materialization per hour written.
    assert {hour: m["rows"] for hour, m in gold.items()} == _gold_hours(delta)
    assert {m["delta_version"] for m in gold.values()} == {delta.version("gold")}
    assert {hour: m["documents"] for hour, m in embeddings.items()} == _gold_hours(delta)
    assert sum(bronze["next_offsets"].values()) == EVENTS, "the run covered the topic up to its head"
    live_docs = sum(1 for op in delta.read("gold")["op"].to_pylist() if op != "delete")
    engine = create_engine(env.app_database_url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM documents")).scalar()
    engine.dispose()
    assert stored == live_docs
    assert "dagster/column_lineage" in instance.get_latest_materialization_event(SILVER).asset_materialization.metadata

    checks = [
        e.dagster_event.event_specific_data
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    assert {c.check_name for c in checks} >= {"silver_no_duplicate_event_ids", "silver_schema_valid"}
    assert all(c.passed for c in checks if c.check_name != "quarantine_rate_under_threshold"), checks


def test_kafka_sensor_observes_the_topic_and_requests_runs_only_when_needed(materialized, env) -> None:
    from streamrag_assets.defs.ingest.sensors import evaluate, run_key
    from streamrag_assets.kafka.offsets import topic_heads
    from streamrag_assets.streaming.checkpoint import checkpoint_lock

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
    from streamrag_assets.documents.reports import StreamReporter
    from streamrag_assets.streaming.batch_result import HOUR_KEY_FORMAT, BatchResult
    from streamrag_assets.streaming.checkpoint import checkpoint_lock

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = env.model_copy(update={"alert_webhook_url": f"http://127.0.0.1:{server.server_port}/hook"})
    daemon = dagster_daemon_process(settings)
    daemon.env = {**settings.to_env(), **daemon.env, "FRESHNESS_DAEMON_INTERVAL_SECONDS": "2"}

    def gold_states() -> list[str]:
        return [m["state"] for m in _Receiver.received if m["asset"] == "gold_documents"]

    def wait_until(condition, what: str, timeout_s: float = 150) -> None:
        harness.wait_until(condition, what, timeout_s, lambda: f"received {_Receiver.received}")

    def report_fresh_gold() -> None:
        """What the continuous query's process does: its summary goes through Postgres to the stream_reports sensor."""
        reporter = StreamReporter(settings.app_database_url, interval_s=3600)
        hour = datetime.now(UTC).strftime(HOUR_KEY_FORMAT)
        reporter.add(BatchResult(1, {"bronze": 1, "gold": 1}, {"bad_json": 2}, {0: 1}, {}, 0.1, gold_hours={hour: 1}))
        reporter.close()

    with checkpoint_lock(settings):  # the Kafka sensor must not launch Spark runs meanwhile
        code = harness.started_code_server(settings)  # the sensors run in it, with the test's webhook
        daemon.start()
        try:
            report_fresh_gold()  # PASS now, WARN after 60 s, FAIL after 75 s
            wait_until(lambda: gold_states()[-2:] == ["WARN", "FAIL"], "no WARN then FAIL alert for gold_documents")
            report_fresh_gold()  # recovered
            wait_until(lambda: gold_states()[-1:] == ["PASS"], "no recovery alert")
        finally:
            daemon.stop()
            code.stop()
            server.shutdown()
    recovered = next(m for m in _Receiver.received if m["asset"] == "gold_documents" and m["state"] == "PASS")
    assert "recovered" in recovered["text"] and recovered["previous_state"] == "FAIL"
    # The report arrived whole: the offsets reached and the quarantine's reasons, as JSON metadata of the tables.
    instance = dg.DagsterInstance.get()
    assert _metadata(instance, BRONZE)["next_offsets"] == {"0": 1}
    assert _metadata(instance, QUARANTINE)["reasons"] == {"bad_json": 2}
    assert _metadata(instance, BRONZE)["source"] == "continuous query"
    engine = create_engine(settings.app_database_url)
    with engine.connect() as conn:  # what the sensor reported is removed (the last tick's reports at its next)
        assert conn.execute(text("SELECT count(*) FROM stream_reports")).scalar_one() <= 1
    engine.dispose()


def _lose_documents(env, fraction: int = 3) -> tuple[set[str], set[str]]:
    """Delete every ``fraction``-th Gold document (and its vector), and the vectors of the next ones: what a lost
    Gold write and a lost index write would leave. Returns (event ids gone from Gold, doc ids gone from pgvector)."""
    from deltalake import DeltaTable

    delta = DeltaTables(env.state_dir / "delta")
    gold = delta.read("gold", ["event_id", "doc_id", "op"]).to_pylist()
    upserts = [row for row in gold if row["op"] != "delete"]
    from_gold = upserts[::fraction]
    from_index = upserts[1::fraction]
    ids = ", ".join(f"'{row['event_id']}'" for row in from_gold)
    DeltaTable(delta.path("gold")).delete(f"event_id IN ({ids})")
    docs = [row["doc_id"] for row in from_gold + from_index]
    engine = create_engine(env.app_database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM documents WHERE doc_id = ANY(:ids)"), {"ids": docs})
    engine.dispose()
    return {row["event_id"] for row in from_gold}, set(docs)


def _stored_doc_ids(env) -> set[str]:
    engine = create_engine(env.app_database_url)
    with engine.connect() as conn:
        found = {row[0] for row in conn.execute(text("SELECT doc_id FROM documents"))}
    engine.dispose()
    return found


def test_the_trailing_window_schedule_makes_gold_and_pgvector_whole_again(materialized, env) -> None:
    from streamrag_assets.definitions import defs
    from streamrag_assets.defs.index.jobs import hourly_reconcile_job
    from streamrag_assets.defs.index.schedules import RANGE_END_TAG, RANGE_START_TAG, trailing_window_schedule
    from streamrag_assets.defs.shared.tables import hourly_partitions

    delta = DeltaTables(env.state_dir / "delta")
    events_before = sorted(delta.read("gold", ["event_id"])["event_id"].to_pylist())
    docs_before = _stored_doc_ids(env)
    hours = sorted(_gold_hours(delta))
    lost_events, lost_docs = _lose_documents(env)
    assert lost_events and lost_docs <= docs_before and not (_stored_doc_ids(env) & lost_docs)

    # The schedule's tick an hour after the last event: its window (2 hours here) covers every event hour.
    last_hour = datetime.strptime(hours[-1], "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)
    tick = last_hour + timedelta(hours=1, minutes=10)
    schedule = trailing_window_schedule(hourly_reconcile_job, hourly_partitions(env), "10 * * * *", len(hours) + 1)
    instance = dg.DagsterInstance.get()
    request = schedule.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=tick))
    [run] = request.run_requests
    assert run.tags[RANGE_START_TAG] <= hours[0] and run.tags[RANGE_END_TAG] > hours[-1]

    result = defs.resolve_job_def("hourly_reconcile_job").execute_in_process(instance=instance, tags=run.tags)
    assert result.success
    gold_meta = result.asset_materializations_for_node("hourly_reconcile")
    restored = {m.partition: m.metadata["restored"].value for m in gold_meta if m.asset_key == GOLD}
    assert set(hours) <= set(restored), "every hour of the range is materialized"
    assert sorted(delta.read("gold", ["event_id"])["event_id"].to_pylist()) == events_before, "Gold whole, once"
    assert _stored_doc_ids(env) == docs_before, "pgvector whole again"
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"gold_documents_complete": True, "embeddings_reconcile_with_gold": True}

    again = defs.resolve_job_def("hourly_reconcile_job").execute_in_process(instance=instance, tags=run.tags)
    embeddings = [m for m in again.asset_materializations_for_node("hourly_reconcile") if m.asset_key == EMBEDDINGS]
    assert {m.metadata["embedded"].value for m in embeddings} == {0}, "a second pass embeds nothing"
    assert len(delta.read("gold")) == len(events_before)


def test_a_backfill_from_the_cli_runs_through_the_daemon_and_restores_lost_documents(materialized, env) -> None:
    """`dagster job backfill` (what the UI's backfill dialog also creates), executed by the real daemon."""
    from streamrag_assets.streaming.checkpoint import checkpoint_lock

    delta = DeltaTables(env.state_dir / "delta")
    hours = sorted(_gold_hours(delta))
    docs_before = _stored_doc_ids(env)
    events_before = len(delta.read("gold"))
    _lose_documents(env, fraction=4)
    instance = dg.DagsterInstance.get()
    daemon = dagster_daemon_process(env)
    daemon.env = {**env.to_env(), **daemon.env}
    with checkpoint_lock(env):  # the Kafka sensor must not launch Spark runs meanwhile
        code = harness.started_code_server(env)
        daemon.start()
        try:
            cli = subprocess.run(
                [str(VENV_BIN / "dagster"), "job", "backfill", "-w", str(PROJECT_ROOT / "workspace.yaml")]
                + ["-j", "hourly_reconcile_job", "--from", hours[0], "--to", hours[-1], "--noprompt"],
                env={**clean_env(), **env.to_env(), **dagster_env(env)},
                cwd=PROJECT_ROOT,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
            deadline = time.monotonic() + 300
            while True:
                [backfill] = instance.get_backfills()
                if backfill.status.value != "REQUESTED":
                    break
                assert time.monotonic() < deadline, f"backfill still {backfill.status}"
                time.sleep(2)
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
            deadline = time.monotonic() + 300
            while any(not run.is_finished for run in runs):
                assert time.monotonic() < deadline, "backfill runs did not finish"
                time.sleep(2)
                runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
        finally:
            daemon.stop()
            code.stop()
    assert runs and all(run.is_success for run in runs), [(run.run_id, run.status) for run in runs]
    assert set(hours) <= instance.get_materialized_partitions(GOLD)
    assert len(delta.read("gold")) == events_before and _stored_doc_ids(env) == docs_before


LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


def test_the_daemon_runs_what_the_sensor_and_the_webserver_launch(materialized, env) -> None:
    """With the webserver and the daemon up: new events in the topic make the Kafka sensor launch a run that brings
    the tables up to the new head; a replay job and a partition backfill launched through the webserver's GraphQL
    (what the UI does) complete, and Gold and pgvector reconcile."""
    from streamrag_assets.kafka.offsets import topic_heads
    from streamrag_assets.runtime.dagster import dagster_webserver_process

    delta = DeltaTables(env.state_dir / "delta")
    hours = sorted(_gold_hours(delta))
    docs_before, gold_before = _stored_doc_ids(env), len(delta.read("gold"))
    instance = dg.DagsterInstance.get()
    runs_before = {run.run_id for run in instance.get_runs()}
    webserver, daemon = dagster_webserver_process(env), dagster_daemon_process(env)
    for proc in (webserver, daemon):
        proc.env = {**env.to_env(), **proc.env}

    def graphql(query: str, variables: dict) -> dict:
        response = httpx.post(f"{env.dagster_url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def finished(run_ids: set[str], timeout_s: float = 420) -> list:
        deadline = time.monotonic() + timeout_s
        while True:
            runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
            if runs and all(run.is_finished for run in runs):
                return runs
            assert time.monotonic() < deadline, [(r.job_name, r.status) for r in runs]
            time.sleep(2)

    from kafka import KafkaProducer

    from streamrag_assets.ingest.sources import synthetic_event

    producer = KafkaProducer(bootstrap_servers=env.bootstrap_servers, acks="all")
    for seq in range(200):  # new events arrive
        producer.send(env.topic, value=synthetic_event(seq, seed=99).encode())
    producer.flush()
    producer.close()
    heads = topic_heads(env.bootstrap_servers, env.topic)
    code = harness.started_code_server(env)
    webserver.start()
    daemon.start()
    try:
        webserver.wait_ready(120)
        # 1. the sensor: a run of medallion_job for the new range, keyed by it
        deadline = time.monotonic() + 240
        while not (sensor_runs := [r for r in instance.get_runs() if r.run_id not in runs_before]):
            assert time.monotonic() < deadline, "the sensor launched no run"
            time.sleep(2)
        [sensor_run] = finished({sensor_runs[0].run_id})
        assert sensor_run.job_name == "medallion_job" and sensor_run.is_success, sensor_run.status
        bronze = instance.get_latest_materialization_event(BRONZE).asset_materialization.metadata
        assert {int(p): o for p, o in bronze["next_offsets"].value.items()} == heads, "fresh up to the new head"

        # 2. a replay job, as the launchpad sends it
        lost_events, lost_docs = _lose_documents(env, fraction=5)
        selector = {"repositoryLocationName": "streamrag", "repositoryName": "__repository__"}
        launched = graphql(
            LAUNCH_RUN,
            {
                "params": {
                    "selector": selector | {"jobName": "reembed_job"},
                    "runConfigData": {"ops": {"reembed_op": {"config": {"retry_dead_letters": True}}}},
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        [replay_run] = finished({launched["run"]["runId"]})
        assert replay_run.is_success
        # 3. a partition backfill of the hourly assets, as the asset page's dialog sends it
        backfill = graphql(
            LAUNCH_BACKFILL,
            {
                "params": {
                    "assetSelection": [{"path": ["gold_documents"]}, {"path": ["document_embeddings"]}],
                    "partitionNames": hours,
                    "fromFailure": False,
                }
            },
        )["launchPartitionBackfill"]
        assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
        deadline = time.monotonic() + 300
        while not (
            backfill_runs := instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill["backfillId"]}))
        ):
            assert time.monotonic() < deadline, "the backfill launched no run"
            time.sleep(2)
        assert all(run.is_success for run in finished({run.run_id for run in backfill_runs}))
    finally:
        daemon.stop()
        webserver.stop()
        code.stop()
    assert lost_events and lost_docs
    assert _stored_doc_ids(env) >= docs_before, "the replay job re-embedded the lost documents"
    assert len(delta.read("gold")) >= gold_before, "the backfill restored Gold"


def _produce(env, count: int, seed: int) -> None:
    from kafka import KafkaProducer

    from streamrag_assets.ingest.sources import synthetic_event

    producer = KafkaProducer(bootstrap_servers=env.bootstrap_servers, acks="all")
    for seq in range(count):
        producer.send(env.topic, value=synthetic_event(seq, seed=seed).encode())
    producer.flush()
    producer.close()


def test_replays_launched_from_the_ui_pause_the_running_stream_which_resumes_after_them(materialized, env) -> None:
    """While the continuous query runs (as `up` runs it), a rebuild and a reprocess launched through the webserver's
    GraphQL (what the launchpad sends) ask it to pause: it stops at a batch boundary and waits, the runs complete
    with their progress in the run's logs, and the same process resumes from the right offsets. At the end every
    offset of the topic is in Bronze exactly once, every Gold document is in pgvector, and events produced after the
    runs are indexed: the stream is flowing again."""
    from streamrag_assets.definitions import defs
    from streamrag_assets.kafka.offsets import topic_heads
    from streamrag_assets.runtime.dagster import dagster_webserver_process
    from streamrag_assets.runtime.stream import stream_process
    from streamrag_assets.streaming.checkpoint import pause_request

    instance = dg.DagsterInstance.get()
    delta = DeltaTables(env.state_dir / "delta")
    webserver, daemon, stream = dagster_webserver_process(env), dagster_daemon_process(env), stream_process(env)
    for proc in (webserver, daemon, stream):
        proc.env = {**env.to_env(), **proc.env}
    log = env.state_dir / "logs" / "stream.log"

    def wait_for(condition, what: str, timeout_s: float = 240) -> None:
        harness.wait_until(condition, what, timeout_s, lambda: log.read_text()[-3000:] if log.exists() else "")

    def bronze_is_the_topic() -> bool:
        heads = topic_heads(env.bootstrap_servers, env.topic)
        offsets = delta.read("bronze", ["partition", "offset"]).to_pylist()
        return len(offsets) == sum(heads.values()) and {(o["partition"], o["offset"]) for o in offsets} == {
            (p, o) for p, head in heads.items() for o in range(head)
        }

    def launch(job: str, op_config: dict) -> str:
        response = httpx.post(
            f"{env.dagster_url}/graphql",
            json={
                "query": LAUNCH_RUN,
                "variables": {
                    "params": {
                        "selector": {"repositoryLocationName": "streamrag", "repositoryName": "__repository__"}
                        | {"jobName": job},
                        "runConfigData": {"ops": op_config},
                    }
                },
            },
            timeout=60,
        )
        launched = response.json()["data"]["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        wait_for(lambda: instance.get_run_by_id(run_id).is_finished, f"{job} did not finish", 420)
        run = instance.get_run_by_id(run_id)
        messages = [entry.message for entry in instance.all_logs(run_id)]
        assert run.is_success, (run.status, messages[-20:])
        assert any("asked the continuous query to pause" in m for m in messages), "the run waited for the stream"
        return run_id

    code = harness.started_code_server(env)
    webserver.start()
    daemon.start()
    stream.start()
    try:
        webserver.wait_ready(120)
        wait_for(lambda: log.exists() and "streaming " in log.read_text(), "the stream did not start")
        pid = stream.proc.pid
        _produce(env, 100, seed=71)
        wait_for(bronze_is_the_topic, "the running stream did not take in the new events")

        launch("rebuild_from_bronze_job", {"rebuild_from_bronze_op": {"config": {"confirm": True}}})
        wait_for(lambda: log.read_text().count("[streamrag] streaming ") == 2, "the stream did not resume")
        launch("reprocess_topic_job", {"reprocess_topic_op": {"config": {"from_offsets": {"0": 0}}}})
        assert pause_request(env) is None

        _produce(env, 100, seed=72)
        wait_for(bronze_is_the_topic, "the stream did not resume after the runs", 300)
        gold = {d["doc_id"] for d in delta.read("gold", ["doc_id", "op"]).to_pylist() if d["op"] != "delete"}
        wait_for(lambda: gold <= _stored_doc_ids(env), "pgvector misses Gold documents", 120)
        assert stream.running() and stream.proc.pid == pid, "the stream paused and resumed; it never exited"
        # A catch-up run the Kafka sensor launched in the moment between a run's end and the stream taking its
        # checkpoint back finds the stream running again: it leaves the offsets to it instead of pausing it.
        catch_up = defs.resolve_job_def("medallion_job").execute_in_process(
            instance=instance, tags={CATCH_UP_TAG: json.dumps(topic_heads(env.bootstrap_servers, env.topic))}
        )
        assert catch_up.success
        (skipped,) = [
            m for m in catch_up.asset_materializations_for_node("medallion_available_now") if m.asset_key == BRONZE
        ]
        assert skipped.metadata["skipped"].value is True
        text_log = log.read_text()
        assert text_log.count("pausing at the end of the micro-batch") == 2, text_log[-3000:]
        assert "Traceback" not in text_log, text_log[-3000:]
    finally:
        stream.stop()
        daemon.stop()
        webserver.stop()
        code.stop()


def test_pruning_dagster_history_keeps_each_tables_newest_report_and_no_finished_run(materialized, env) -> None:
    """Last in the module: it deletes the runs the tests above read. Nothing of Dagster's grows forever: finished
    runs and runless reports older than the history to keep go; the newest report of each table stays."""
    from streamrag_assets.defs.operations.jobs import prune_dagster_history_job
    from streamrag_assets.operations.dagster_history import FINISHED

    instance = dg.DagsterInstance.get()
    for rows in (1, 2, 3):  # what the stream_reports sensor makes, every 15 s
        instance.report_runless_asset_event(dg.AssetMaterialization(BRONZE, metadata={"rows": rows}))
    finished = [r.dagster_run.run_id for r in instance.get_run_records(dg.RunsFilter(statuses=FINISHED))]
    assert finished, "the module's runs"

    def runless(key: dg.AssetKey) -> list:
        return [r for r in instance.fetch_materializations(key, limit=1000).records if r.run_id == ""]

    assert len(runless(BRONZE)) >= 3
    result = prune_dagster_history_job.execute_in_process(
        instance=instance, run_config={"ops": {"prune_dagster_history_op": {"config": {"older_than_days": 0}}}}
    )
    assert result.success
    counts = result.output_for_node("prune_dagster_history_op")
    assert counts["runs"] >= len(finished) and counts["runless_events"] >= 2
    assert [run_id for run_id in finished if instance.get_run_by_id(run_id) is not None] == []
    assert len(runless(BRONZE)) == 1 and _metadata(instance, BRONZE)["rows"] == 3
    for key in (SILVER, QUARANTINE):  # reported by the freshness test's stream summaries, when it ran before
        assert len(runless(key)) <= 1
