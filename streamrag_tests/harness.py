"""The test harness, shared by the tests and the benchmarks: free ports, isolated state directories, the embedded
servers started as real processes, and readers of what the platform holds."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pyarrow as pa
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streamrag_assets.credentials import DAGSTER_ROLE, OWNER_ROLE
from streamrag_assets.ingest.events import event_key, try_parse
from streamrag_assets.ingest.sources import recorded_event, synthetic_event
from streamrag_assets.runtime.broker import broker_process
from streamrag_assets.runtime.postgres import postgres_process
from streamrag_assets.runtime.process import ManagedProcess
from streamrag_assets.runtime.seaweedfs import seaweedfs_process
from streamrag_assets.settings import Settings
from streamrag_assets.streaming.refine import Rejected, document, parse_event
from streamrag_assets.streaming.transforms import ARROW_SCHEMAS

# The processes `streamrag up` starts on embedded defaults, in start order.
EMBEDDED_SERVICES = [
    "seaweedfs",
    "kafka",
    "postgres",
    "ingest",
    "stream",
    "api",
    "probe",
    "dagster-code",
    "dagster-webserver",
    "dagster-daemon",
]
PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECORDING = PROJECT_ROOT / "streamrag_assets" / "ingest" / "data" / "recentchange_sample.ndjson"
VENV_BIN = Path(sys.executable).parent


def _below_ephemeral_range() -> range:
    """Ports the kernel never gives an outgoing connection. A port from its ephemeral range (what binding port 0
    returns) can be taken by any client socket — a Kafka or JDBC connection of a server already started — between the
    pick and the bind of the server it was picked for: CI saw Postgres refuse its port that way."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    ports = range(10000, max(low, 12000))
    # Each pytest-xdist worker takes its own share, so two workers never pick the same port between pick and bind.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    share = len(ports) // workers
    return range(ports.start + worker * share, ports.start + (worker + 1) * share)


_PORTS = _below_ephemeral_range()
_handed_out: set[int] = set()
_port_lock = threading.Lock()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int) -> int:
    """First port of ``size`` consecutive free ports, never handed out before by this process and below the kernel's
    ephemeral range (SeaweedFS takes a block: base..base+14)."""
    with _port_lock:
        for _ in range(500):
            base = random.randrange(_PORTS.start, _PORTS.stop - size)
            block = range(base, base + size)
            if not _handed_out.intersection(block) and all(_bindable(port) for port in block):
                _handed_out.update(block)
                return base
    raise RuntimeError(f"no block of {size} free ports in {_PORTS.start}..{_PORTS.stop - 1}")


def free_port() -> int:
    return free_port_block(1)


def gold_documents(count: int, texts: str = "recording") -> list[dict]:
    """``count`` Gold upsert documents, with lineage, from the replayed recording (or the synthetic source)."""
    docs, seq = [], 0
    while len(docs) < count:
        event = recorded_event(seq) if texts == "recording" else synthetic_event(seq, seed=9, canary_fraction=0)
        try:
            doc = document(parse_event(event))
        except Rejected:
            doc = None
        seq += 1
        if doc is not None and doc["op"] == "upsert":
            docs.append(doc | {"partition": 0, "offset": seq, "ingested_at": doc["event_time"]})
    return docs


def isolated_settings(home: Path, **overrides: object) -> Settings:
    """Settings for a stack that cannot collide with a running `streamrag up` or another test stack."""
    values: dict[str, object] = {
        "home": home,
        # Explicit, so that settings copied to another home (a test's own platform) keep the cluster's passwords.
        "postgres_secrets_dir": home.resolve() / "secrets",
        "kafka_port": free_port(),
        "postgres_port": free_port(),
        "s3_port": free_port(),
        "seaweedfs_port_base": free_port_block(15),
        "dagster_port": free_port(),
        "dagster_code_port": free_port(),
        "api_port": free_port(),
        "source_port": free_port(),
        "ingest_metrics_port": free_port(),
        "stream_metrics_port": free_port(),
        "probe_metrics_port": free_port(),
        "prometheus_port": free_port(),
        "supervisor_metrics_port": free_port(),
        "ingest_source": "recording",
        "startup_timeout_s": 90,
    }
    values.update(overrides)
    return Settings(**values)


def recentchange(title: str, comment: str, **changes) -> dict:
    """A recentchange event like the recorded ones, for ``title``, happening now."""
    event = json.loads(RECORDING.read_text().splitlines()[0])
    now = dt.datetime.now(dt.UTC)
    revision = 1_500_000_000 + uuid.uuid4().int % 500_000_000  # documents are keyed by wiki and revision
    event["meta"] |= {
        "id": str(uuid.uuid4()),
        "dt": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "uri": f"https://en.wikipedia.org/wiki/{title.replace(' ', '_')}",
    }
    event |= {
        "title": title,
        "title_url": event["meta"]["uri"],
        "comment": comment,
        "parsedcomment": comment,
        "timestamp": int(now.timestamp()),
        "id": revision,
        "revision": {"old": revision - 1, "new": revision},
        "notify_url": f"https://en.wikipedia.org/w/index.php?diff={revision}&oldid={revision - 1}",
    }
    for key, value in changes.items():
        event[key] = value
    return event


def deletion(title: str, wiki: str = "enwiki") -> dict:
    event = recentchange(title, "Housekeeping: page created in error", type="log", wiki=wiki)
    for key in ("length", "revision", "minor", "notify_url"):
        event.pop(key, None)
    event |= {
        "log_type": "delete",
        "log_action": "delete",
        "log_id": uuid.uuid4().int % 1_000_000_000,
        "log_params": [],
        "log_action_comment": "deleted",
    }
    return event


def produce(settings, *events: dict) -> list[tuple[int, int]]:
    """Send events to the raw topic as the ingest process does; returns (partition, offset) of each."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    futures = []
    for event in events:
        line = json.dumps(event)
        headers = [
            ("sse_id", f"test-{uuid.uuid4().hex[:8]}".encode()),
            ("ingested_at", str(int(time.time() * 1000)).encode()),
        ]
        futures.append(
            producer.send(settings.topic, key=event_key(try_parse(line)), value=line.encode(), headers=headers)
        )
    producer.flush()
    where = [(f.get(10).partition, f.get(10).offset) for f in futures]
    producer.close()
    return where


def fill_topic(settings: Settings, events: int, seed: int = 5, first: int = 0) -> None:
    """Produce synthetic events ``first`` .. ``events - 1`` (1% malformed) to the platform's topic, keyed and with
    headers as the ingest service sends them; with ``first`` 0 the topic is created (``topic_partitions``)."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    from streamrag_assets.ingest.events import event_key, try_parse

    if first == 0:
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        admin.create_topics([NewTopic(settings.topic, settings.topic_partitions, 1)])
        admin.close()
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        linger_ms=50,
        batch_size=512 * 1024,
        compression_type="gzip",
    )
    for seq in range(first, events):
        line = synthetic_event(seq, seed=seed, malformed_fraction=0.01)
        producer.send(
            settings.topic,
            key=event_key(try_parse(line)),
            value=line.encode(),
            headers=[("sse_id", str(seq).encode()), ("ingested_at", str(int(time.time() * 1000)).encode())],
        )
    producer.flush()
    producer.close()


@contextmanager
def broker_with_events(settings: Settings, events: int) -> Iterator[EmbeddedStack]:
    """The embedded object store and broker, their topic filled with ``events`` synthetic events (the benchmarks'
    start); stopped when the block ends."""
    stack = EmbeddedStack(settings)
    try:
        for proc in (stack.seaweedfs, stack.kafka):
            stack.start(proc)
        began = time.monotonic()
        fill_topic(settings, events)
        print(
            f"topic filled with {events:,} events ({settings.topic_partitions} partition(s)) in "
            f"{time.monotonic() - began:.1f} s",
            flush=True,
        )
        yield stack
    finally:
        stack.stop_all()


def bounded_run(settings: Settings) -> tuple[list, float, int]:
    """One availableNow query over what the topic holds, in this process: its batches (`BatchResult`), the seconds
    it took with its start, and the events it read."""
    from streamrag_assets.streaming.pipeline import start_query

    batches: list = []
    began = time.monotonic()
    start_query(settings, available_now=True, on_batch=batches.append).awaitTermination()
    return batches, time.monotonic() - began, sum(b.counts["bronze"] for b in batches)


def bronze_verdicts(values: list[bytes]) -> tuple[set[str], int, int]:
    """What Bronze's raw values must become: the event ids Silver holds (each valid event once), how many rows
    quarantine holds, and how many are dropped (Wikimedia's canary events and repeated event ids)."""
    valid: set[str] = set()
    rejected = dropped = 0
    for value in values:
        try:
            event = parse_event(value)
        except Rejected:
            rejected += 1
            continue
        if event["domain"] == "canary" or event["event_id"] in valid:
            dropped += 1
        else:
            valid.add(event["event_id"])
    return valid, rejected, dropped


def fresh_database(stack, prefix: str) -> str:
    """The SQLAlchemy URL of a new, empty database on the shared test Postgres."""
    from streamrag_assets.runtime.postgres import admin_connect

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin_connect(stack.settings) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {OWNER_ROLE}")
    return stack.settings.model_copy(update={"postgres_db": name}).app_database_url


def separate_platform(stack, prefix: str, dagster_db: bool = False, **overrides: object) -> Settings:
    """Settings of a platform of its own on the shared test servers: its own state directory (under a fresh
    temporary directory: remove ``settings.home.parent`` when done), topic and app database (and Dagster database)."""
    home = scratch_dir(f"streamrag-{prefix}-")
    suffix = uuid.uuid4().hex[:8]
    from streamrag_assets.runtime.postgres import admin_connect

    with admin_connect(stack.settings) as conn:
        conn.execute(f"CREATE DATABASE app_{suffix} OWNER {OWNER_ROLE}")
        if dagster_db:
            conn.execute(f"CREATE DATABASE dagster_{suffix} OWNER {DAGSTER_ROLE}")
    names = {
        "home": home / ".streamrag",
        "topic": f"raw-{suffix}",
        "postgres_db": f"app_{suffix}",
        "postgres_secrets_dir": stack.settings.postgres_secrets_path,  # the shared cluster's role passwords
    }
    if dagster_db:
        names["postgres_dagster_db"] = f"dagster_{suffix}"
    settings = stack.settings.model_copy(update=names | overrides)
    settings.state_dir.mkdir(parents=True)
    return settings


@contextmanager
def running(settings: Settings, processes: list[ManagedProcess], timeout_s: float = 240) -> Iterator[None]:
    """Start ``processes`` with ``settings`` in their environment, wait until each is ready, and stop them (the last
    first) when the block ends, however it ends."""
    try:
        for proc in processes:
            proc.env = {**settings.to_env(), **proc.env}
            proc.start()
        for proc in processes:
            proc.wait_ready(timeout_s)
        yield
    finally:
        for proc in reversed(processes):
            proc.stop()


def started_code_server(settings: Settings) -> ManagedProcess:
    """The Dagster code location's gRPC server, which `up` runs for the webserver and the daemon: started with
    ``settings`` in its environment (sensors and runs execute in it) and ready."""
    from streamrag_assets.runtime.dagster import dagster_code_process

    code = dagster_code_process(settings)
    code.env = {**settings.to_env(), **code.env}
    code.start()
    try:
        code.wait_ready(180)
    except BaseException:
        code.stop()
        raise
    return code


def indexed_doc_ids(settings: Settings) -> set[str]:
    """Every doc_id in the platform's pgvector `documents` table."""
    from sqlalchemy import create_engine, text

    engine = create_engine(settings.app_database_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT doc_id FROM documents")).scalars())
    finally:
        engine.dispose()


def stream_triggers(settings: Settings) -> int:
    """Triggers the stream's continuous query has finished, with events (its histogram of Spark's trigger phases) or
    without (idle): above 0 once the query runs."""
    body = httpx.get(f"http://127.0.0.1:{settings.stream_metrics_port}/metrics", timeout=5).text
    count = 0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "streamrag_stream_idle_triggers_total" or (
                sample.name == "streamrag_stream_trigger_phase_seconds_count"
                and sample.labels.get("phase") == "triggerExecution"
            ):
                count += int(sample.value)
    return count


def run_cli(
    *args: str, settings: Settings, timeout: float = 120, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``streamrag *args`` with ``settings`` (and ``env`` over the inherited environment, without STREAMRAG_*)."""
    return subprocess.run(
        [str(VENV_BIN / "streamrag"), *args],
        env={**(clean_env() if env is None else env), **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or PROJECT_ROOT,
    )


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STREAMRAG_")}


class EmbeddedStack:
    """The embedded servers (object store, broker, Postgres) started as `streamrag up` starts them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seaweedfs = seaweedfs_process(settings)
        self.kafka = broker_process(settings)
        self.postgres = postgres_process(settings)

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.seaweedfs, self.kafka, self.postgres]

    def start(self, proc: ManagedProcess) -> None:
        proc.start()
        proc.wait_ready(self.settings.startup_timeout_s)

    def start_all(self) -> None:
        for proc in self.processes:
            self.start(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


TODAY = dt.date(2026, 11, 26)


def silver_rows(ids: list[str], day: dt.date, batch: int) -> pa.Table:
    """A Silver table of the given event ids on one day, every other column null."""
    schema = ARROW_SCHEMAS["silver"]
    columns = {field.name: pa.nulls(len(ids), field.type) for field in schema}
    columns["event_id"] = pa.array(ids, schema.field("event_id").type)
    columns["event_date"] = pa.array([day] * len(ids), schema.field("event_date").type)
    columns["batch_id"] = pa.array([batch] * len(ids), schema.field("batch_id").type)
    return pa.table(columns, schema=schema)


def bronze_table(values: list[str], first_offset: int, batch_id: int, when: dt.datetime) -> pa.Table:
    """Records of partition 0 from ``first_offset`` on as the stream's Bronze rows of batch ``batch_id``."""
    rows = len(values)
    return pa.Table.from_pydict(
        {
            "topic": ["recentchange"] * rows,
            "partition": [0] * rows,
            "offset": list(range(first_offset, first_offset + rows)),
            "kafka_timestamp": [when] * rows,
            "key": ["k"] * rows,
            "value": values,
            "sse_id": [str(first_offset + i) for i in range(rows)],
            "ingested_at": [when] * rows,
            "batch_id": [batch_id] * rows,
            "written_at": [when] * rows,
        },
        schema=ARROW_SCHEMAS["bronze"],
    )


def scratch_dir(prefix: str) -> Path:
    """A fresh directory the unprivileged Postgres user can reach (tempfile's directories are 0700 root)."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    return home


def release(home: Path, keep: bool = False) -> None:
    """Remove a scratch directory, or say where it was kept (benchmarks' --keep-state). The process's Spark session
    is made once and reused (`get_spark`); one whose local directory is in ``home`` is stopped first, or it would
    outlive its directory and fail the next test file that asks for a session in this process."""
    if keep:
        print(f"state kept in {home}", flush=True)
        return
    if "pyspark" in sys.modules:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession

        context = SparkContext._active_spark_context
        if context is not None and Path(context.getConf().get("spark.local.dir", "/")).is_relative_to(home):
            SparkSession.builder.getOrCreate().stop()
    shutil.rmtree(home, ignore_errors=True)


def wait_until(condition: Callable[[], object], what: str, timeout_s: float, detail: Callable[[], str] = str) -> None:
    """Poll ``condition`` until it holds; after ``timeout_s`` fail with ``what`` and ``detail()`` (logs, state)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}\n{detail()}"
        time.sleep(0.5)


@contextmanager
def small_filesystem(size_mb: int) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` MiB mounted on a fresh directory (needs root), unmounted and removed afterwards."""
    mount = Path(tempfile.mkdtemp(prefix="streamrag-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


class FakeCompareAPI:
    """A wiki's action API on loopback as far as `action=compare` goes (real HTTP, MediaWiki's response shape):
    ``diffs`` holds a diff body per new revision (None: "no such revision"); any other revision gets ``default`` or,
    without one, "no such revision"; the first ``fail_first`` requests get a 503. ``requests`` keeps each request."""

    def __init__(self) -> None:
        self.diffs: dict[str, str | None] = {}
        self.default: str | None = None
        self.fail_first = 0
        self.requests: list[dict] = []
        self.url = ""

    def answer(self, query: dict[str, str], agent: str | None) -> tuple[int, dict | None]:
        self.requests.append({"query": query, "agent": agent, "at": time.monotonic()})
        if self.fail_first > 0:
            self.fail_first -= 1
            return 503, None
        revision = query.get("torev", "")
        body = self.diffs.get(revision, self.default)
        if body is None:
            return 200, {"error": {"code": "nosuchrevid", "info": "There is no revision with that ID."}}
        revisions = {"fromrevid": int(query.get("fromrev", 0)), "torevid": int(query["torev"])}
        return 200, {"compare": {**revisions, "body": body}}


@contextmanager
def compare_api_server() -> Iterator[FakeCompareAPI]:
    """A `FakeCompareAPI` serving on 127.0.0.1 (its ``url`` is the api.php address) while the block runs."""
    fake = FakeCompareAPI()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            status, reply = fake.answer(query, self.headers.get("User-Agent"))
            data = json.dumps(reply).encode() if reply is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{server.server_port}/w/api.php"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
