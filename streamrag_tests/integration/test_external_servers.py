"""The platform against servers started separately, as a user has them: a Postgres that asks for a password (scram)
and gives the platform a role that is not a superuser, a Kafka-protocol broker of its own (topics with 6
partitions), and Dagster's code location as its own gRPC server (`dagster code-server start`, as in compose)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import httpx
import psycopg
import pytest
from kafka import KafkaAdminClient

from streamrag_assets.runtime.api import api_process
from streamrag_assets.runtime.broker import broker_process
from streamrag_assets.runtime.dagster import dagster_env, prepare_dagster_home
from streamrag_assets.runtime.postgres import admin_connect, postgres_process
from streamrag_assets.runtime.process import ManagedProcess, port_is_open
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_tests.harness import (
    VENV_BIN,
    clean_env,
    fill_topic,
    free_port,
    indexed_doc_ids,
    isolated_settings,
    release,
    run_cli,
    running,
    scratch_dir,
)

pytestmark = pytest.mark.integration

PASSWORD = f"rag-secret-{uuid.uuid4().hex[:6]}"
EVENTS = 1500


def _require_scram(servers) -> None:
    """What a DBA does: a login role without superuser, its databases and the vector extension (every TCP
    connection to the cluster already authenticates with scram-sha-256)."""
    with admin_connect(servers) as conn:
        conn.autocommit = True
        conn.execute(f"CREATE ROLE rag LOGIN PASSWORD '{PASSWORD}' NOSUPERUSER NOCREATEDB NOCREATEROLE")
        conn.execute("CREATE DATABASE rag OWNER rag")
        conn.execute("CREATE DATABASE rag_dagster OWNER rag")
    with admin_connect(servers, "rag") as conn:
        conn.autocommit = True
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def _create_bucket(settings, bucket: str) -> None:
    """The broker's own bucket on the test object store (a broker of its own keeps its own data)."""
    DeltaTables.ensure_bucket(settings.model_copy(update={"delta_uri": f"s3://{bucket}/x"}))


def test_the_platform_runs_against_external_postgres_kafka_and_a_grpc_code_server(stack) -> None:
    home = scratch_dir("streamrag-external-")
    servers = isolated_settings(
        home / "servers" / ".streamrag",
        s3_port=stack.settings.s3_port,
        s3_bucket=f"broker-{uuid.uuid4().hex[:8]}",
    )
    _create_bucket(stack.settings, servers.s3_bucket)
    postgres, broker = postgres_process(servers), broker_process(servers)
    code_port = free_port()
    try:
        with running(servers, [postgres, broker]):
            _require_scram(servers)
            database = f"127.0.0.1:{servers.postgres_port}"
            settings = isolated_settings(
                home / "platform" / ".streamrag",
                kafka_bootstrap_servers=f"127.0.0.1:{servers.kafka_port}",
                database_url=f"postgresql+psycopg://rag:{PASSWORD}@{database}/rag",
                dagster_database_url=f"postgresql+psycopg2://rag:{PASSWORD}@{database}/rag_dagster",
            )
            assert settings.topic_partitions == 6, "an external broker gets 6 partitions by default"
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(f"postgresql://rag:wrong@{database}/rag", connect_timeout=3).close()

            migrated = run_cli("migrate", settings=settings)
            assert migrated.returncode == 0, migrated.stderr[-2000:]
            fill_topic(settings, EVENTS, seed=17)
            admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
            try:
                (topic,) = admin.describe_topics([settings.topic])
            finally:
                admin.close()
            assert len(topic["partitions"]) == 6

            streamed = run_cli("stream", "--available-now", settings=settings, timeout=400)
            assert streamed.returncode == 0, streamed.stderr[-3000:]
            delta = DeltaTables.from_settings(settings)
            assert len(delta.read("bronze")) == EVENTS
            assert {p for p in delta.read("bronze")["partition"].to_pylist()} == set(range(6))
            live = {d["doc_id"] for d in delta.read("gold").to_pylist() if d["op"] != "delete"}
            assert live and indexed_doc_ids(settings) == live, "pgvector (as the role rag) holds every live document"
            with psycopg.connect(f"postgresql://rag:{PASSWORD}@{database}/rag") as conn:
                owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'documents'").fetchone()
                superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            assert owner == ("rag",) and superuser == (False,)

            api = api_process(settings)
            with running(settings, [api]):
                title = delta.read("gold").to_pylist()[0]["title"]
                found = httpx.post(f"{settings.api_url}/search", json={"query": title, "top_k": 5}, timeout=30)
                assert found.status_code == 200, found.text
                assert title in {hit["title"] for hit in found.json()["hits"]}, "search answers from the scram Postgres"

            _check_code_server(settings, code_port)
    finally:
        release(home)


def _check_code_server(settings, port: int) -> None:
    """Dagster's code location as a gRPC server of its own; the instance's storage on the scram Postgres."""
    env = {**clean_env(), **settings.to_env(), **dagster_env(settings)}
    server = ManagedProcess(
        name="dagster-code",
        argv=[str(VENV_BIN / "dagster"), "code-server", "start", "-m", "streamrag_assets.definitions"]
        + ["-h", "127.0.0.1", "-p", str(port), "--location-name", "streamrag"],
        log_path=settings.state_dir / "logs" / "dagster-code.log",
        pid_path=settings.state_dir / "run" / "dagster-code.pid",
        ready=lambda: port_is_open("127.0.0.1", port),
        env=env,
    )
    prepare_dagster_home(settings)
    workspace = settings.state_dir / "grpc-workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n      location_name: streamrag\n"
    )
    query = (
        "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } "
        "assetNodes { assetKey { path } } }"
    )
    with running(settings, [server]):
        result = subprocess.run(
            [str(VENV_BIN / "dagster-graphql"), "-w", str(workspace), "-t", query],
            env=env | {"DAGSTER_HOME": str(settings.dagster_home)},
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)["data"]
    (entry,) = data["workspaceOrError"]["locationEntries"]
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    keys = {"/".join(node["assetKey"]["path"]) for node in data["assetNodes"]}
    assert {"bronze_events", "silver_events", "silver_quarantine", "gold_documents"} <= keys, keys
    # The instance created its schema in the role's own database, without superuser rights.
    with psycopg.connect(settings.dagster_storage_url.replace("postgresql+psycopg2://", "postgresql://")) as conn:
        owners = {row[0] for row in conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'public'")}
    assert owners == {"rag"}
    shutil.rmtree(settings.dagster_home, ignore_errors=True)
