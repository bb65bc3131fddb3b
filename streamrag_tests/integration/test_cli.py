"""`streamrag up / status / down` on a fresh state directory, restarts that keep data, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

from streamrag_assets.runtime.postgres import admin_connect
from streamrag_assets.runtime.process import ServiceError
from streamrag_assets.runtime.supervisor import SchemaMigration
from streamrag_assets.streaming.spark import scratch_dir
from streamrag_tests.harness import (
    EMBEDDED_SERVICES,
    PROJECT_ROOT,
    VENV_BIN,
    clean_env,
    isolated_settings,
    run_cli,
    small_filesystem,
    wait_until,
)

pytestmark = pytest.mark.integration


def _start_up(settings, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(VENV_BIN / "streamrag"), "up"],
        env={**clean_env(), **settings.to_env(), **env},
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    lines = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if "streamrag is up" in line:
            return proc
    proc.kill()
    raise AssertionError("streamrag up did not come up:\n" + "".join(lines))


def _our_processes(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            environ = proc.info["environ"] or {}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if (str(home) in cmdline or environ.get("STREAMRAG_HOME") == str(home)) and proc.pid != os.getpid():
            found.append(proc)
    return found


def _down(settings, up_proc: subprocess.Popen) -> None:
    result = run_cli("down", settings=settings)
    assert result.returncode == 0, result.stderr
    assert up_proc.wait(60) == 0


def _configured_secrets(state_home: Path) -> dict[str, str]:
    closed = isolated_settings(state_home).api_port  # a free port: the LLM and the webhook cannot be reached
    tag = uuid.uuid4().hex[:10]
    return {
        "llm_base_url": f"http://127.0.0.1:{closed}/v1",
        "llm_api_key": f"sk-llm-{tag}",
        "alert_webhook_url": f"http://127.0.0.1:{closed}/hooks/T0/{tag}",
        "s3_secret_key": f"s3-secret-{tag}",
        "api_keys": f"api-key-{tag}",
    }


def _no_secret_leaks(settings, configured: dict[str, str], rows: list[dict]) -> None:
    """No configured or generated secret in a log, in run/, in any /metrics or in what the API tells clients; each
    process' environment holds only the secrets it uses; no process is connected as the Postgres superuser."""
    folder = settings.postgres_secrets_path
    secrets = {name: value for name, value in configured.items() if name != "llm_base_url"}
    secrets |= {path.name: path.read_text().strip() for path in folder.glob("postgres-*.password")}
    assert len(secrets) == 8 and all(len(value) >= 10 for value in secrets.values())
    assert folder.stat().st_mode & 0o777 == 0o700 and all(
        path.stat().st_mode & 0o777 == 0o600 for path in folder.iterdir()
    )
    key = {"Authorization": f"Bearer {configured['api_keys']}"}
    with httpx.Client(base_url=settings.api_url, timeout=30) as api:
        said = [
            api.post("/search", json={"query": "moon"}),  # 401
            api.post("/search", json={"query": "moon"}, headers={"Authorization": "Bearer wrong"}),  # 401
            api.post("/search", json={"query": ""}, headers=key),  # 422
            api.post("/answer", json={"query": "Wikipedia"}, headers=key),  # the unreachable LLM: a fallback
            api.get("/health"),
            api.get("/metrics/"),
        ]
    assert [r.status_code for r in said[:3]] == [401, 401, 422]
    fallback = said[3].json()
    assert said[3].status_code == 200 and (fallback["fallback"] or fallback["citations"] == []), fallback
    assert configured["llm_base_url"] not in said[3].text, "clients are not told internal addresses"
    for port in (settings.ingest_metrics_port, settings.stream_metrics_port, settings.probe_metrics_port):
        said.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10))
    said.append(httpx.get(f"http://127.0.0.1:{settings.supervisor_metrics_port}/metrics", timeout=10))
    texts = {f"response {r.request.method} {r.request.url.path} {r.status_code}": r.text for r in said}
    for folder_name in ("logs", "run"):
        for path in (settings.state_dir / folder_name).rglob("*"):
            if path.is_file():
                texts[str(path)] = path.read_text(errors="replace")
    for where, text in texts.items():
        for name, value in secrets.items():
            assert value not in text, f"{name} is in {where}"

    uses = {  # the configured secrets each service is given; the Postgres passwords are files its role reads
        "api": {"llm_api_key", "api_keys"},
        "probe": {"api_keys"},
        "stream": {"s3_secret_key"},
        "dagster-code": {"alert_webhook_url", "s3_secret_key"},
        "kafka": {"s3_secret_key"},  # its bucket's credentials
        "dagster-webserver": {"postgres-streamrag_dagster.password"},  # its instance storage URL
        "dagster-daemon": {"postgres-streamrag_dagster.password"},
    }
    uses["dagster-code"] |= uses["dagster-webserver"]
    for row in rows:
        environ = Path(f"/proc/{row['pid']}/environ").read_bytes().decode(errors="replace")
        given = {name for name, value in secrets.items() if value in environ}
        assert given == uses.get(row["name"], set()), row["name"]
    users: set[str | None] = set()

    def connected_users() -> bool:
        """The roles of every other client connection; false while one is still authenticating (no role yet)."""
        with admin_connect(settings) as conn:
            users.clear()
            users.update(
                user
                for (user,) in conn.execute(
                    "SELECT usename FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            )
        return None not in users

    wait_until(connected_users, "a connection stayed without a role (authenticating) for 30 s", 30, lambda: str(users))
    assert users and users <= {"streamrag_owner", "streamrag_api", "streamrag_dagster"}, users


def test_up_status_down_and_restart_keeps_messages_offsets_tables_and_no_secret_leaks(state_home: Path) -> None:
    configured = _configured_secrets(state_home)
    settings = isolated_settings(state_home, **configured)
    system_tmp = state_home.parent / f"{state_home.name}-system-tmp"  # the temporary folder `up` is given
    system_tmp.mkdir()
    scratch = scratch_dir(settings)
    up = _start_up(settings, TMPDIR=str(system_tmp))
    try:
        status = run_cli("status", "--json", settings=settings)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = json.loads(status.stdout)
        assert {r["name"] for r in rows} == set(EMBEDDED_SERVICES)
        assert all(r["up"] for r in rows), rows
        assert next(r for r in rows if r["name"] == "postgres")["data_bytes"] > 1_000_000
        # Every service runs with glibc's malloc arenas bounded (STREAMRAG_MALLOC_ARENA_MAX, default 2), a fixed
        # mmap threshold (STREAMRAG_MALLOC_MMAP_THRESHOLD_KIB, default 128) and delta-rs' jemalloc handing freed
        # pages back after a second (STREAMRAG_DELTA_JEMALLOC_CONF).
        for row in rows:
            environ = Path(f"/proc/{row['pid']}/environ").read_bytes().split(b"\0")
            assert b"MALLOC_ARENA_MAX=2" in environ, row["name"]
            assert b"MALLOC_MMAP_THRESHOLD_=131072" in environ, row["name"]
            assert b"_RJEM_MALLOC_CONF=dirty_decay_ms:1000,muzzy_decay_ms:0" in environ, row["name"]
        # The supervisor holds no ORM, Alembic or Kafka client for the run (the schema migrates in a child process):
        # ~58 MiB of anonymous memory, where those made ~94 (measured).
        own = psutil.Process(up.pid).memory_full_info()
        assert own.uss < 72 * 2**20, f"the supervisor holds {own.uss / 2**20:.0f} MiB of its own"

        # `up` ingests: the recording source's events reach the raw topic.
        deadline = time.monotonic() + 60
        raw = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
        while time.monotonic() < deadline and settings.topic not in raw.topics():
            time.sleep(0.5)
        raw.assign([TopicPartition(settings.topic, p) for p in range(settings.topic_partitions)])
        raw.seek_to_beginning()
        ingested = []
        while time.monotonic() < deadline and len(ingested) < 20:
            for batch in raw.poll(500).values():
                ingested += batch
        raw.close()
        assert len(ingested) >= 20 and all(dict(r.headers).get("sse_id") for r in ingested)
        _no_secret_leaks(settings, configured, rows)
        # The Spark driver's own temporary files (a native library it unpacks) are in the state, not in /tmp.
        wait_until(
            lambda: any(scratch.glob("liblz4-java-*.so")),
            "the stream's JVM unpacked no native library into the state's scratch folder in 120 s",
            120,
            lambda: str(sorted(path.name for path in scratch.iterdir())),
        )

        # Leave state behind: messages, a group's committed offsets, a table.
        topic, group = f"keep-{uuid.uuid4().hex[:6]}", "keeper"
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        admin.create_topics([NewTopic(topic, 2, 1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
        for i in range(100):
            producer.send(topic, key=str(i % 2).encode(), value=str(i).encode(), partition=i % 2)
        producer.flush()
        producer.close()
        consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            session_timeout_ms=6000,
        )
        consumer.commit(
            {
                TopicPartition(topic, 0): OffsetAndMetadata(20, "", -1),
                TopicPartition(topic, 1): OffsetAndMetadata(30, "", -1),
            }
        )
        consumer.close(autocommit=False)
        with admin_connect(settings, settings.postgres_db) as conn:
            conn.execute("CREATE TABLE kept (id int)")
            conn.execute("INSERT INTO kept SELECT generate_series(1, 42)")
    finally:
        _down(settings, up)
    assert _our_processes(state_home) == [], "down leaves no process of ours behind"
    # Every service stopped in its own time: the JVM's shutdown removed its scratch folders and unpacked libraries,
    # and nothing (SeaweedFS' own log files included) was written to the temporary folder `up` was given.
    assert sorted(path.name for path in scratch.iterdir()) == []
    # (`import onnxruntime` writes its telemetry library's 51-byte session file there, read again at the next import.)
    assert sorted(path.name for path in system_tmp.iterdir() if path.name != ".ses") == []
    assert "master.go" in (settings.state_dir / "logs" / "seaweedfs.log").read_text(), "SeaweedFS logs into the state"
    stopped = run_cli("status", "--json", settings=settings)
    assert stopped.returncode != 0 and not any(r["up"] for r in json.loads(stopped.stdout))

    up = _start_up(settings)
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            session_timeout_ms=6000,
        )
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        assert [consumer.committed(tp) for tp in tps] == [20, 30]
        consumer.assign(tps)
        values = []
        deadline = time.monotonic() + 30
        while len(values) < 50 and time.monotonic() < deadline:
            for batch in consumer.poll(500).values():
                values += [int(r.value) for r in batch]
        consumer.close(autocommit=False)
        assert len(values) == 50, "resumed at the commits: 30 + 20 messages remain"
        with admin_connect(settings, settings.postgres_db) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone()[0] == 42
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C stops everything too
        assert up.wait(90) == 0
    assert _our_processes(state_home) == []


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_occupied_port_is_a_one_line_error(state_home: Path) -> None:
    settings = isolated_settings(state_home)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.postgres_port))
        squatter.listen()
        message = _one_line_error(run_cli("up", settings=settings))
    assert f"port {settings.postgres_port}" in message and "STREAMRAG_POSTGRES_PORT" in message
    assert _our_processes(state_home) == [], "nothing was started"


def test_unwritable_state_directory_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    message = _one_line_error(run_cli("up", settings=isolated_settings(blocker / ".streamrag")))
    assert "state directory" in message and "STREAMRAG_HOME" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="the unprivileged Postgres user only exists when started as root")
def test_state_directory_postgres_user_cannot_reach_is_a_one_line_error(state_home: Path) -> None:
    private = state_home.parent / "private"
    private.mkdir(mode=0o700)
    home = private / ".streamrag"
    message = _one_line_error(run_cli("up", settings=isolated_settings(home)))
    assert "cannot reach" in message and "STREAMRAG_HOME" in message
    assert _our_processes(home) == [], "what had started was stopped again"


def test_wrong_external_urls_are_one_line_errors(state_home: Path, stack) -> None:
    closed = isolated_settings(state_home).kafka_port  # a free port: nothing listens there
    message = _one_line_error(
        run_cli("up", settings=isolated_settings(state_home, kafka_bootstrap_servers=f"127.0.0.1:{closed}"))
    )
    assert "not reachable" in message and "STREAMRAG_KAFKA_BOOTSTRAP_SERVERS" in message

    message = _one_line_error(run_cli("up", settings=isolated_settings(state_home, database_url="not-a-url")))
    assert "STREAMRAG_DATABASE_URL" in message
    spaced = "postgresql+psycopg://u:hunter 2@127.0.0.1/db"  # libpq wants the space escaped; its error would quote it
    message = _one_line_error(run_cli("up", settings=isolated_settings(state_home, database_url=spaced)))
    assert "STREAMRAG_DATABASE_URL" in message and "percent-escaped" in message and "hunter" not in message

    message = _one_line_error(
        run_cli(
            "up", settings=isolated_settings(state_home, database_url=f"postgresql+psycopg://u:p@127.0.0.1:{closed}/db")
        )
    )
    assert "not reachable" in message and "STREAMRAG_DATABASE_URL" in message

    # A Postgres that answers but refuses the password: said as Postgres says it, with the setting to fix.
    wrong = f"postgresql+psycopg://streamrag_owner:not-the-password@127.0.0.1:{stack.settings.postgres_port}/x"
    message = _one_line_error(run_cli("up", settings=isolated_settings(state_home, database_url=wrong)))
    assert 'password authentication failed for user "streamrag_owner"' in message, message
    assert "STREAMRAG_DATABASE_URL" in message and "not-the-password" not in message


def test_a_failed_schema_migration_says_why(state_home: Path) -> None:
    # `up` migrates in a child process (`streamrag migrate`) beside ingest's start: its failure reaches the
    # supervisor as the child's reason, not as an exit code.
    closed = isolated_settings(state_home).kafka_port  # a free port: no Postgres there
    settings = isolated_settings(state_home, database_url=f"postgresql+psycopg://u:secret@127.0.0.1:{closed}/db")
    migration = SchemaMigration(settings)
    with pytest.raises(ServiceError) as failed:
        migration.wait(60)
    message = str(failed.value)
    assert message.startswith("migrating the documents schema failed:") and "Connection refused" in message, message
    assert "secret" not in message


def test_listening_beyond_loopback_without_an_api_key_is_a_one_line_error(state_home: Path) -> None:
    open_api = isolated_settings(state_home, bind_host="0.0.0.0")
    for args in (("up",), ("api",), ("api", "--host", "0.0.0.0")):
        settings = open_api if args != ("api", "--host", "0.0.0.0") else isolated_settings(state_home)
        message = _one_line_error(run_cli(*args, settings=settings))
        assert "STREAMRAG_API_KEYS" in message and "STREAMRAG_API_AUTH=off" in message, args
    assert _our_processes(state_home) == [], "nothing was started"


def test_doctor_says_what_the_machine_has_and_what_blocks_up(state_home: Path) -> None:
    settings = isolated_settings(state_home)
    healthy = run_cli("doctor", settings=settings)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    lines = healthy.stdout.splitlines()
    for name in ("Python", "Java", "state directory", "disk", "ports", "API access"):
        assert any(line.startswith(f"✓ {name}: ") for line in lines), (name, lines)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.api_port))
        squatter.listen()
        blocked = run_cli("doctor", settings=settings)
    line = _failed(blocked)
    assert f"port {settings.api_port}" in line and "the API" in line and "STREAMRAG_API_PORT" in line


def _failed(result: subprocess.CompletedProcess) -> str:
    """The one ✗ line of a doctor run that failed."""
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("✗ ")]
    return line


def test_doctor_tells_a_missing_java_and_model_and_up_starts_nothing(state_home: Path) -> None:
    settings = isolated_settings(state_home)
    env = {k: v for k, v in clean_env().items() if k != "JAVA_HOME"}
    env["PATH"] = _path_without("java", env["PATH"], state_home / "bin-without-java")
    line = _failed(run_cli("doctor", settings=settings, env=env))
    assert line.startswith("✗ Java: not found") and "openjdk-17" in line and "JAVA_HOME" in line
    up = run_cli("up", settings=settings, env=env)
    assert up.returncode != 0 and "Java" in up.stdout + up.stderr
    assert _our_processes(state_home) == [], "nothing was started"

    elsewhere = isolated_settings(state_home, embedding_model_path=str(state_home / "no-such-model"))
    line = _failed(run_cli("doctor", settings=elsewhere))
    assert line.startswith("✗ embedding model: ") and "STREAMRAG_EMBEDDING_MODEL_PATH" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_doctor_tells_a_full_disk() -> None:
    with small_filesystem(2048) as mount:  # tmpfs takes memory only as files fill it
        settings = isolated_settings(mount / ".streamrag")
        [disk] = [line for line in run_cli("doctor", settings=settings).stdout.splitlines() if " disk: " in line]
        assert disk.startswith("! disk: ") and "free under" in disk, disk  # below 5 GiB `up` still starts, warned
        with open(mount / "filler", "wb") as filler:
            os.posix_fallocate(filler.fileno(), 0, shutil.disk_usage(mount).free - 100 * 2**20)
        line = _failed(run_cli("doctor", settings=settings))
        assert line.startswith("✗ disk: ") and "free space or move STREAMRAG_HOME" in line
        up = run_cli("up", settings=settings)
        assert up.returncode != 0 and "disk" in up.stdout + up.stderr


def _path_without(program: str, path: str, folder: Path) -> str:
    """``path`` without ``program``: each folder holding it replaced by ``folder``, links to its other programs."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for directory in path.split(os.pathsep):
        if not (Path(directory) / program).exists():
            kept.append(directory)
            continue
        for other in Path(directory).iterdir():
            if other.name != program and not (folder / other.name).exists():
                (folder / other.name).symlink_to(other)
    return os.pathsep.join([*kept, str(folder)])


def test_prepare_model_makes_the_onnx_files_once(state_home: Path) -> None:
    cache = state_home / "models"
    settings = isolated_settings(state_home, model_cache_dir=cache)
    made = run_cli("prepare-model", settings=settings, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert made.stdout.strip() == "all-MiniLM-L6-v2:int8: ready"
    files = sorted(p.name for p in cache.glob("*.onnx"))
    assert len(files) == 2 and any(f.endswith("-int8.onnx") for f in files), files
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*.onnx")}
    again = run_cli("prepare-model", settings=settings, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == "all-MiniLM-L6-v2:int8: ready"
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.onnx")} == stamps, "made once"
