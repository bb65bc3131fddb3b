"""The embedded Postgres has pgvector, answers HNSW cosine queries, and keeps data across a restart; every
connection authenticates, and each service's role may do only what the service needs."""

from __future__ import annotations

import os
import pwd
import random
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from streamrag_assets.credentials import API_ROLE, DAGSTER_ROLE, OWNER_ROLE, SUPERUSER, password_path
from streamrag_assets.documents.migrate import upgrade
from streamrag_assets.runtime.postgres import (
    POSTGRES_BIN_PATH,
    admin_connect,
    auto_shared_buffers,
    machine_memory_bytes,
    postgres_process,
)
from streamrag_assets.runtime.process import ServiceError, postgres_dsn
from streamrag_tests.harness import isolated_settings, release, scratch_dir

pytestmark = pytest.mark.integration

VECTORS = {
    "north": [0.0, 1.0, 0.0],
    "north-east": [0.7, 0.7, 0.0],
    "east": [1.0, 0.0, 0.0],
    "south": [0.0, -1.0, 0.0],
    "up": [0.0, 0.0, 1.0],
}


def test_hnsw_cosine_neighbours_survive_restart(stack) -> None:
    db = stack.settings.postgres_db
    with admin_connect(stack.settings, db) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("DROP TABLE IF EXISTS compass")
        conn.execute("CREATE TABLE compass (name text PRIMARY KEY, embedding vector(3))")
        for name, vec in VECTORS.items():
            conn.execute("INSERT INTO compass VALUES (%s, %s::vector)", (name, str(vec)))
        conn.execute("CREATE INDEX ON compass USING hnsw (embedding vector_cosine_ops)")

    def neighbours() -> list[str]:
        with admin_connect(stack.settings, db) as conn:
            conn.execute("SET enable_seqscan = off")  # make the planner use the HNSW index
            plan = " ".join(
                r[0]
                for r in conn.execute("EXPLAIN SELECT name FROM compass ORDER BY embedding <=> '[0.1, 0.9, 0]' LIMIT 3")
            )
            assert "compass_embedding_idx" in plan
            rows = conn.execute("SELECT name FROM compass ORDER BY embedding <=> '[0.1, 0.9, 0]' LIMIT 3")
            return [r[0] for r in rows]

    assert neighbours() == ["north", "north-east", "east"]

    stack.postgres.stop()
    stack.start(stack.postgres)
    assert neighbours() == ["north", "north-east", "east"]


def _resident_share(path: Path) -> float:
    """The share of a file's pages in the kernel's page cache (util-linux's fincore)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]) / int(out[1])


def test_a_started_postgres_reads_the_vector_graph_ahead_into_memory(stack) -> None:
    """After a restart the HNSW graph is read into memory at once, not a page at a time as inserts and searches
    touch it: at 10M documents, on a machine whose cache did not hold it, an insert cost 14x more until it did."""
    db = stack.settings.postgres_db
    rng = random.Random(7)
    with admin_connect(stack.settings, db) as conn:
        conn.execute("DROP TABLE IF EXISTS graph_ahead")
        conn.execute("CREATE TABLE graph_ahead (id int PRIMARY KEY, embedding vector(384))")
        with conn.cursor().copy("COPY graph_ahead FROM STDIN") as copy:
            for n in range(3000):
                copy.write_row([n, str([rng.gauss(0.0, 1.0) for _ in range(384)])])
        conn.execute("CREATE INDEX graph_ahead_hnsw ON graph_ahead USING hnsw (embedding vector_cosine_ops)")
        relative = conn.execute("SELECT pg_relation_filepath('graph_ahead_hnsw')").fetchone()[0]
    graph = stack.settings.state_dir / "postgres" / relative
    try:
        stack.postgres.stop()  # a clean stop writes every page out, so the kernel may drop them from its cache
        descriptor = os.open(graph, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
        assert _resident_share(graph) < 0.2, "the graph's pages could not be dropped from the page cache"

        stack.start(stack.postgres)
        deadline = time.monotonic() + 20
        while _resident_share(graph) < 0.9 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _resident_share(graph) >= 0.9, f"{_resident_share(graph):.0%} of the graph in memory after a start"
    finally:
        with admin_connect(stack.settings, db) as conn:
            conn.execute("DROP TABLE graph_ahead")


def test_postgres_starts_with_the_buffer_cache_auto_sizes_for_its_data(stack) -> None:
    """The default `auto`: a test's small cluster gets the floor, and Postgres accepts the value it is given."""
    assert stack.settings.postgres_shared_buffers == "auto"
    expected = auto_shared_buffers(stack.settings.state_dir / "postgres", machine_memory_bytes())
    with admin_connect(stack.settings) as conn:
        assert conn.execute("SHOW shared_buffers").fetchone()[0] == expected == "256MB"


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(postgres_dsn(url), connect_timeout=3, autocommit=True)


def test_the_api_role_only_reads_and_no_service_role_is_a_superuser(stack) -> None:
    settings = stack.settings
    upgrade(settings.app_database_url)  # as the owner role: the schema is the stream's to make
    with _connect(settings.app_database_url) as owner:
        owner.execute("CREATE TABLE IF NOT EXISTS owners_scratch (id int)")
        owner.execute("DROP TABLE owners_scratch")
        count = owner.execute("SELECT count(*) FROM documents").fetchone()[0]
    with _connect(settings.reader_database_url) as api:
        assert api.execute("SELECT count(*) FROM documents").fetchone()[0] == count
        api.execute("LISTEN streamrag_documents")  # the live feed's notifications need no privilege
        for statement in (
            "INSERT INTO pipeline_heartbeats (component, detail) VALUES ('x', '{}')",
            "DELETE FROM documents",
            "UPDATE documents SET title = 'x'",
            "CREATE TABLE api_scratch (id int)",
            "CREATE TEMPORARY TABLE api_scratch (id int)",
            "DROP TABLE documents",
            "COPY documents TO PROGRAM 'true'",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                api.execute(statement)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        _connect(settings.model_copy(update={"postgres_db": settings.postgres_dagster_db}).reader_database_url)
    with admin_connect(settings) as conn:
        roles = dict(conn.execute("SELECT rolname, rolsuper FROM pg_roles WHERE rolname LIKE 'streamrag%'").fetchall())
    assert roles == {OWNER_ROLE: False, API_ROLE: False, DAGSTER_ROLE: False}


def _single_user(settings, database: str, statements: str) -> None:
    result = subprocess.run(
        [str(POSTGRES_BIN_PATH / "postgres"), "--single", "-D", str(settings.state_dir / "postgres"), database],
        input=statements,
        user=settings.postgres_run_as if os.geteuid() == 0 else None,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_cluster_made_with_trust_gets_passwords_and_its_objects_move_to_the_owner_role() -> None:
    """An installation from before roles: initdb --auth=trust, everything made by the superuser."""
    home = scratch_dir("streamrag-pg-upgrade-")
    settings = isolated_settings(home / ".streamrag")
    data_dir = settings.state_dir / "postgres"
    data_dir.mkdir(parents=True)
    run_as = settings.postgres_run_as if os.geteuid() == 0 else None
    if run_as is not None:
        postgres_process(settings)  # (makes nothing) the user exists once any test started the shared stack
        entry = pwd.getpwnam(run_as)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    initdb = [
        str(POSTGRES_BIN_PATH / "initdb"),
        "-D",
        str(data_dir),
        "-U",
        "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
    ]
    assert subprocess.run(initdb, user=run_as, capture_output=True, check=False).returncode == 0
    _single_user(settings, "postgres", f"CREATE DATABASE {settings.postgres_db};\n")
    _single_user(
        settings,
        settings.postgres_db,
        "CREATE TABLE old_notes (id serial PRIMARY KEY, note text);\n"
        "CREATE FUNCTION old_answer() RETURNS int LANGUAGE sql AS 'SELECT 42';\n",
    )
    server = postgres_process(settings)
    try:
        server.start()
        server.wait_ready(60)
        assert "trust" not in "".join(
            line for line in (data_dir / "pg_hba.conf").read_text().splitlines() if not line.lstrip().startswith("#")
        )
        bare = f"host=127.0.0.1 port={settings.postgres_port} user=postgres dbname=postgres connect_timeout=3"
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(bare)
        with _connect(settings.app_database_url) as owner:
            owner.execute("INSERT INTO old_notes (note) VALUES ('kept')")  # the table and its sequence moved
            assert owner.execute("SELECT old_answer()").fetchone() == (42,)
            owner.execute("ALTER FUNCTION old_answer() RENAME TO old_answer2")
        with _connect(settings.reader_database_url) as api:
            assert api.execute("SELECT note FROM old_notes").fetchall() == [("kept",)]
        server.stop()

        # A superuser password that is not the cluster's: a clear error naming the file, not a timeout.
        kept = password_path(settings.postgres_secrets_path, SUPERUSER)
        real = kept.read_text()
        kept.write_text("not-the-password\n")
        with pytest.raises(ServiceError, match=f"refused the superuser password in {kept}"):
            server.start()
            server.wait_ready(60)
        server.stop()
        kept.write_text(real)
        server.start()
        server.wait_ready(60)
    finally:
        server.stop()
        release(home)


def test_the_compose_init_script_makes_roles_the_platform_runs_with() -> None:
    """deploy/postgres/init.sh (what compose and the README give a DBA) on a bare cluster: the owner role can migrate,
    the API role only reads, Dagster's role owns its database."""
    home = scratch_dir("streamrag-pg-init-")
    settings = isolated_settings(home / ".streamrag", postgres_db="streamrag", postgres_dagster_db="dagster")
    server = postgres_process(settings)
    server.after_ready = None  # a bare cluster: the superuser and nothing else, as the Postgres image makes it
    passwords = {"owner": "owner-pw-1", "api": "api-pw-2", "dagster": "dagster-pw-3"}
    try:
        server.start()
        server.wait_ready(60)
        env = {
            "PATH": f"{POSTGRES_BIN_PATH}:{os.environ['PATH']}",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(settings.postgres_port),
            "PGPASSWORD": password_path(settings.postgres_secrets_path, SUPERUSER).read_text().strip(),
            "POSTGRES_USER": "postgres",
            "POSTGRES_OWNER_PASSWORD": passwords["owner"],
            "POSTGRES_API_PASSWORD": passwords["api"],
            "POSTGRES_DAGSTER_PASSWORD": passwords["dagster"],
        }
        script = Path(__file__).parents[2] / "deploy" / "postgres" / "init.sh"
        result = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        at = f"127.0.0.1:{settings.postgres_port}"
        owner = f"postgresql+psycopg://streamrag_owner:{passwords['owner']}@{at}/streamrag"
        upgrade(owner)
        with _connect(owner) as conn:
            conn.execute("INSERT INTO pipeline_heartbeats (component, detail) VALUES ('init-test', '{}')")
        with _connect(f"postgresql+psycopg://streamrag_api:{passwords['api']}@{at}/streamrag") as api:
            assert api.execute("SELECT component FROM pipeline_heartbeats").fetchall() == [("init-test",)]
            with pytest.raises(errors.InsufficientPrivilege):
                api.execute("DELETE FROM pipeline_heartbeats")
        with _connect(f"postgresql+psycopg://streamrag_dagster:{passwords['dagster']}@{at}/dagster") as dagster:
            dagster.execute("CREATE TABLE runs (id int)")  # dagster-postgres makes its schema on first use
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            _connect(f"postgresql+psycopg://streamrag_api:{passwords['api']}@{at}/dagster")
    finally:
        server.stop()
        release(home)
