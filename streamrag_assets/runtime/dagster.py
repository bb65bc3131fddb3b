"""Dagster: the code location's gRPC server, the webserver and the daemon, against the instance stored in Postgres.

One code server loads the definitions for both the webserver and the daemon (as in docker-compose.yml): each of
them would otherwise start code servers of its own, and the daemon's, which stop when a heartbeat is 20 s late, were
started again every minute or two on a busy machine, each load costing seconds of CPU (measured under `up` at 50
events/s). All three run at a lower CPU priority than the live path (`DAGSTER_NICENESS`): on two full cores the
stream and the API go first, and Dagster takes what is left."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import psycopg

from streamrag_assets.runtime.process import (
    LOOPBACK_HOST,
    ManagedProcess,
    PortClaim,
    find_executable,
    http_answers,
    local_http,
    port_is_open,
    postgres_dsn,
)
from streamrag_assets.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGSTER_NICENESS = 10
LOCATION_NAME = "streamrag"


def dagster_env(settings: Settings) -> dict[str, str]:
    return {
        "DAGSTER_HOME": str(settings.dagster_home),
        "STREAMRAG_DAGSTER_STORAGE_URL": settings.dagster_storage_url,
    }


def prepare_dagster_home(settings: Settings) -> None:
    """Install the project's dagster.yaml into DAGSTER_HOME."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", settings.dagster_home / "dagster.yaml")


def code_server_workspace(settings: Settings) -> Path:
    """The workspace file of `up`'s webserver and daemon: the code location served by `dagster_code_process`
    (written by their ``prepare``; building the process list writes nothing, so `status` works on a full disk)."""
    return settings.dagster_home / "workspace.yaml"


def prepare_code_server_client(settings: Settings) -> None:
    """DAGSTER_HOME for the webserver and the daemon: the project's dagster.yaml and a workspace that loads the code
    location from the code server (dagster-code)."""
    prepare_dagster_home(settings)
    code_server_workspace(settings).write_text(
        "# Written by `streamrag up`: the code location is the gRPC server it runs (dagster-code).\n"
        f"load_from:\n  - grpc_server:\n      host: {LOOPBACK_HOST}\n      port: {settings.dagster_code_port}\n"
        f"      location_name: {LOCATION_NAME}\n"
    )


def dagster_code_process(settings: Settings) -> ManagedProcess:
    """The code location (the asset graph) as one gRPC server; runs the daemon launches start from it."""
    port = settings.dagster_code_port
    return ManagedProcess(
        name="dagster-code",
        argv=[_bin("dagster"), "api", "grpc", "-m", "streamrag_assets.definitions", "--location-name", LOCATION_NAME]
        + ["-h", LOOPBACK_HOST, "-p", str(port)],
        env=dagster_env(settings),
        cwd=PROJECT_ROOT,
        log_path=settings.state_dir / "logs" / "dagster-code.log",
        pid_path=settings.state_dir / "run" / "dagster-code.pid",
        ready=lambda: port_is_open(LOOPBACK_HOST, port),  # the server listens once the definitions have loaded
        prepare=lambda: prepare_dagster_home(settings),
        address=f"grpc://{LOOPBACK_HOST}:{port}",
        ports=[PortClaim(port, "the Dagster code server", "STREAMRAG_DAGSTER_CODE_PORT")],
        niceness=DAGSTER_NICENESS,
        # Sensors and the runs it launches read the topic, the tables and the documents, and post alerts.
        secrets=frozenset(
            {"database_url", "dagster_database_url", "kafka_sasl_password", "s3_secret_key", "alert_webhook_url"}
        ),
    )


def _bin(name: str) -> str:
    return find_executable(name, Path(sys.executable).parent / name)


def dagster_webserver_process(settings: Settings) -> ManagedProcess:
    workspace = code_server_workspace(settings)

    def ready() -> bool:
        return local_http().get(f"{settings.dagster_url}/server_info", timeout=2).status_code == 200

    return ManagedProcess(
        name="dagster-webserver",
        argv=[
            _bin("dagster-webserver"),
            "-w",
            str(workspace),
            "-h",
            settings.bind_host,
            "-p",
            str(settings.dagster_port),
        ],
        env=dagster_env(settings),
        cwd=PROJECT_ROOT,
        log_path=settings.state_dir / "logs" / "dagster-webserver.log",
        pid_path=settings.state_dir / "run" / "dagster-webserver.pid",
        ready=ready,
        live=lambda: http_answers(f"{settings.dagster_url}/server_info"),
        prepare=lambda: prepare_code_server_client(settings),
        address=settings.dagster_url,
        ports=[PortClaim(settings.dagster_port, "the Dagster webserver", "STREAMRAG_DAGSTER_PORT")],
        bind_host=settings.bind_host,
        data_dir=settings.dagster_home,
        niceness=DAGSTER_NICENESS,
    )


# Each of the daemon's loops beats every 30 s (Dagster's default); all of them silent this long means it is hung.
DAEMON_HEARTBEAT_MAX_AGE_S = 180.0


def daemon_heartbeat_age_s(settings: Settings) -> float | None:
    """Seconds since the daemon's newest heartbeat in the Dagster instance; None when that cannot be read. The
    time is read from the heartbeat's own body (a Unix timestamp), not the zone-less timestamp column."""
    try:
        with psycopg.connect(postgres_dsn(settings.dagster_storage_url), connect_timeout=2) as conn:
            bodies = [row[0] for row in conn.execute("SELECT body FROM daemon_heartbeats")]
    except psycopg.Error:
        return None
    stamps = []
    for body in bodies:
        try:
            stamps.append(float(json.loads(body)["timestamp"]))
        except (ValueError, KeyError, TypeError):
            continue
    return time.time() - max(stamps) if stamps else None


def dagster_daemon_process(settings: Settings) -> ManagedProcess:
    workspace = code_server_workspace(settings)
    started = {"at": 0.0}

    def prepare() -> None:
        prepare_code_server_client(settings)
        started["at"] = time.monotonic()

    def ready() -> bool:
        # The daemon has no port; it counts as ready once it has stayed up through its start-up.
        return time.monotonic() - started["at"] > 3.0

    def live() -> bool:
        age = daemon_heartbeat_age_s(settings)
        return age is None or age <= DAEMON_HEARTBEAT_MAX_AGE_S

    return ManagedProcess(
        name="dagster-daemon",
        argv=[_bin("dagster-daemon"), "run", "-w", str(workspace)],
        env=dagster_env(settings),
        cwd=PROJECT_ROOT,
        log_path=settings.state_dir / "logs" / "dagster-daemon.log",
        pid_path=settings.state_dir / "run" / "dagster-daemon.pid",
        ready=ready,
        live=live,
        liveness_grace_s=settings.startup_timeout_s,  # its first heartbeats come once the workspace has loaded
        prepare=prepare,
        address="(no port)",
        niceness=DAGSTER_NICENESS,
    )
