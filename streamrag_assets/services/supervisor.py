"""The supervisor: starts the platform's processes in order, keeps them running, stops them cleanly.

`streamrag up` is one supervisor process. Its pid is in <home>/run/up.pid; `streamrag down` sends it SIGTERM and the
supervisor stops every child in reverse order. A child that dies while the platform runs is restarted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from streamrag_assets.services.api import api_process
from streamrag_assets.services.broker import broker_process
from streamrag_assets.services.dagster import dagster_daemon_process, dagster_webserver_process
from streamrag_assets.services.ingest import ingest_process
from streamrag_assets.services.observability import canary_process, prometheus_process
from streamrag_assets.services.postgres import postgres_process
from streamrag_assets.services.process import ManagedProcess, ServiceError, pid_alive, port_is_open
from streamrag_assets.services.seaweedfs import seaweedfs_process
from streamrag_assets.services.stream import stream_process
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def build_stack(settings: Settings, with_prometheus: bool = False) -> list[ManagedProcess]:
    """The processes `up` runs, in start order; embedded servers only where no external address is set."""
    stack: list[ManagedProcess] = []
    if settings.embedded_kafka:
        if settings.embedded_s3:
            stack.append(seaweedfs_process(settings))
        stack.append(broker_process(settings))
    if settings.embedded_postgres:
        stack.append(postgres_process(settings))
    stack += [
        ingest_process(settings),
        stream_process(settings),
        dagster_webserver_process(settings),
        dagster_daemon_process(settings),
        api_process(settings),
        canary_process(settings),
    ]
    if with_prometheus:
        stack.append(prometheus_process(settings))
    env = settings.to_env()
    for proc in stack:
        proc.env = {**env, **proc.env}
    return stack


def ensure_state_dir(settings: Settings) -> Path:
    state = settings.state_dir
    try:
        (state / "run").mkdir(parents=True, exist_ok=True)
        probe = state / "run" / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ServiceError(
            f"cannot use the state directory {state} ({exc.strerror or exc}); "
            "set STREAMRAG_HOME to a directory you can write"
        ) from None
    return state


def check_external(settings: Settings) -> None:
    """Fail fast, with the setting to fix, when a configured external server cannot be reached."""
    if settings.kafka_bootstrap_servers:
        servers = [s.strip() for s in settings.kafka_bootstrap_servers.split(",") if s.strip()]
        reachable = []
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ServiceError(
                    f"STREAMRAG_KAFKA_BOOTSTRAP_SERVERS has '{server}', expected host:port[,host:port...]"
                )
            reachable.append(port_is_open(host, int(port), timeout=3))
        if not any(reachable):
            raise ServiceError(
                f"Kafka at {settings.kafka_bootstrap_servers} is not reachable; "
                "check STREAMRAG_KAFKA_BOOTSTRAP_SERVERS (or unset it to use the embedded broker)"
            )
    for setting, url in (
        ("DATABASE_URL", settings.database_url),
        ("DAGSTER_DATABASE_URL", settings.dagster_database_url),
    ):
        if not url:
            continue
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ServiceError(f"STREAMRAG_{setting} is not a database URL: expected postgresql+psycopg://…") from None
        try:
            psycopg.connect(
                parsed.set(drivername="postgresql").render_as_string(hide_password=False), connect_timeout=3
            ).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceError(
                f"Postgres at {parsed.host}:{parsed.port or 5432} is not reachable ({reason}); "
                f"check STREAMRAG_{setting}"
            ) from None
    if settings.s3_endpoint_url and settings.embedded_kafka:
        try:
            httpx.get(settings.s3_endpoint_url, timeout=3)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"S3 at {settings.s3_endpoint_url} is not reachable ({type(exc).__name__}); "
                "check STREAMRAG_S3_ENDPOINT_URL"
            ) from None


def migrate_documents(settings: Settings) -> None:
    from streamrag_assets.index.migrate import upgrade

    try:
        upgrade(settings.app_database_url)
    except Exception as exc:
        raise ServiceError(f"migrating the documents schema failed: {str(exc).splitlines()[0]}") from None


def _pid_file(settings: Settings) -> Path:
    return settings.state_dir / "run" / "up.pid"


def _settings_file(settings: Settings) -> Path:
    return settings.state_dir / "run" / "settings.json"


def effective_settings(settings: Settings) -> Settings:
    """The settings the running `up` was started with (ports, sources), so `status` reports what really runs."""
    try:
        recorded = json.loads(_settings_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return settings
    if running_supervisor(settings) is None:
        return settings
    return Settings(**{**settings.model_dump(), **{k: v for k, v in recorded.items() if k in Settings.model_fields}})


def running_supervisor(settings: Settings) -> int | None:
    path = _pid_file(settings)
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(path.read_text())
        if pid_alive(pid):
            return pid
    return None


@dataclass
class Supervisor:
    settings: Settings
    progress: Progress = print
    restart_limit: int = 5
    with_prometheus: bool = False

    def __post_init__(self) -> None:
        self.stack: list[ManagedProcess] = []
        self._stop = False
        self._restarts: dict[str, int] = {}

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def start(self) -> None:
        """Start every process; on any failure stop what was started and raise."""
        ensure_state_dir(self.settings)
        other = running_supervisor(self.settings)
        if other is not None:
            raise ServiceError(f"streamrag is already running here (pid {other}); `streamrag down` stops it")
        check_external(self.settings)
        self.stack = build_stack(self.settings, self.with_prometheus)
        for proc in self.stack:  # every port checked before anything starts
            proc.check_ports()
        _pid_file(self.settings).write_text(str(os.getpid()))
        # Secrets stay out of the file; everything else lets `status` describe this run.
        public = self.settings.model_dump(mode="json", exclude={"s3_secret_key", "llm_api_key"})
        _settings_file(self.settings).write_text(json.dumps(public))
        try:
            migrated = False
            for proc in self.stack:
                if self._stop:
                    raise ServiceError("start-up interrupted")
                if not migrated and proc.name == "ingest":
                    self.progress("migrating the documents schema …")
                    migrate_documents(self.settings)
                    migrated = True
                began = time.monotonic()
                self.progress(f"starting {proc.name} …")
                proc.start()
                proc.wait_ready(self.settings.startup_timeout_s)
                self.progress(f"{proc.name} ready at {proc.address} ({time.monotonic() - began:.1f} s)")
        except BaseException:
            self.stop()
            raise

    def watch(self, poll_s: float = 1.0) -> None:
        """Block until asked to stop, restarting any child that died."""
        while not self._stop:
            for proc in self.stack:
                if self._stop or proc.running():
                    continue
                count = self._restarts.get(proc.name, 0) + 1
                self._restarts[proc.name] = count
                code = proc.proc.returncode if proc.proc else None
                if count > self.restart_limit:
                    log.error(
                        "%s exited (code %s) %d times; giving up on it. Log: %s",
                        proc.name,
                        code,
                        count,
                        proc.log_path,
                    )
                    continue
                log.warning("%s exited (code %s); restarting (%d/%d)", proc.name, code, count, self.restart_limit)
                try:
                    proc.start()
                    proc.wait_ready(self.settings.startup_timeout_s)
                except ServiceError as exc:
                    log.error("restart of %s failed: %s", proc.name, exc)
            time.sleep(poll_s)

    def stop(self) -> None:
        for proc in reversed(self.stack):
            self.progress(f"stopping {proc.name} …")
            proc.stop()
        with contextlib.suppress(FileNotFoundError):
            _pid_file(self.settings).unlink()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            self.start()
            self.watch()
        finally:
            self.stop()


def down(settings: Settings, timeout_s: float = 90.0) -> bool:
    """Stop a running `up`; also reap children left by a supervisor that was killed. True if anything ran."""
    stopped = False
    pid = running_supervisor(settings)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            raise ServiceError(f"the supervisor (pid {pid}) did not stop within {timeout_s:.0f} s")
        stopped = True
    run_dir = settings.state_dir / "run"
    for pid_path in sorted(run_dir.glob("*.pid")) if run_dir.exists() else []:
        with contextlib.suppress(ValueError, FileNotFoundError):
            child = int(pid_path.read_text())
            if pid_path.name != "up.pid" and pid_alive(child):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child, signal.SIGTERM)
                    time.sleep(2)
                    os.killpg(child, signal.SIGKILL)
                stopped = True
        with contextlib.suppress(FileNotFoundError):
            pid_path.unlink()
    return stopped


@dataclass
class ServiceStatus:
    name: str
    up: bool
    address: str
    pid: int | None
    data_bytes: int


def data_size_bytes(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat(follow_symlinks=False).st_size
    return total


def status(settings: Settings) -> list[ServiceStatus]:
    settings = effective_settings(settings)
    rows = []
    for proc in build_stack(settings):
        pid = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(proc.pid_path.read_text())
        alive = pid is not None and pid_alive(pid)
        is_up = False
        if alive:
            with contextlib.suppress(Exception):
                is_up = bool(proc.ready())
        rows.append(
            ServiceStatus(proc.name, is_up, proc.address, pid if alive else None, data_size_bytes(proc.data_dir))
        )
    for name, external in (
        ("kafka (external)", settings.kafka_bootstrap_servers),
        ("postgres (external)", settings.database_url),
    ):
        if external:
            host_port = external.split(",")[0].rsplit("@", 1)[-1].split("/")[0]
            host, _, port = host_port.rpartition(":")
            rows.append(ServiceStatus(name, port_is_open(host, int(port or 5432)), host_port, None, 0))
    return rows


__all__ = ["Supervisor", "down", "status"]
