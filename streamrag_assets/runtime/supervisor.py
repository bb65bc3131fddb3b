"""The supervisor: starts the platform's processes in order, keeps them running, stops them cleanly.

`streamrag up` is one supervisor process. Its pid is in <home>/run/up.pid; `streamrag down` sends it SIGTERM and the
supervisor stops every child in reverse order. A child that dies, hangs or cannot be started while the platform runs is
restarted with backoff, forever; what it knows of each child is in <home>/run/supervisor.json for `streamrag status`
and in its metrics (streamrag_service_*).

Embedded rather than supervisord/circus: the children are defined in Python (probes, prepare hooks, settings) and
`up` is one foreground process that must stop them all; the backoff comes from tenacity.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import httpx
import psycopg
from prometheus_client import start_http_server
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from streamrag_assets.credentials import ROLES, ensure_password
from streamrag_assets.metrics import SERVICE_CRASHING, SERVICE_RESTARTS, SERVICE_UP
from streamrag_assets.runtime.api import api_process
from streamrag_assets.runtime.broker import broker_process
from streamrag_assets.runtime.dagster import dagster_code_process, dagster_daemon_process, dagster_webserver_process
from streamrag_assets.runtime.disk import space_problem
from streamrag_assets.runtime.ingest import ingest_process
from streamrag_assets.runtime.logs import rotate_if_large
from streamrag_assets.runtime.observability import probe_process, prometheus_process
from streamrag_assets.runtime.postgres import postgres_process
from streamrag_assets.runtime.process import (
    ManagedProcess,
    ServiceError,
    ensure_port_free,
    pid_alive,
    port_is_open,
    postgres_dsn,
)
from streamrag_assets.runtime.seaweedfs import seaweedfs_process
from streamrag_assets.runtime.spark_cluster import spark_cluster_processes
from streamrag_assets.runtime.stream import stream_process
from streamrag_assets.settings import SECRET_FIELDS, Settings

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def build_stack(settings: Settings, with_prometheus: bool = False) -> list[ManagedProcess]:
    """The processes `up` runs, in start order; embedded servers only where no external address is set."""
    stack: list[ManagedProcess] = []
    if settings.embedded_s3 and (settings.embedded_kafka or settings.delta_on_s3):
        stack.append(seaweedfs_process(settings))  # under the embedded broker, and the Delta tables when on S3
    if settings.embedded_kafka:
        stack.append(broker_process(settings))
    if settings.embedded_postgres:
        stack.append(postgres_process(settings))
    stack += spark_cluster_processes(settings)
    stack += [
        ingest_process(settings),
        stream_process(settings),
        api_process(settings),
        probe_process(settings),
        # Off the live path, last: each waits for the one before it (the code location loads in seconds).
        dagster_code_process(settings),
        dagster_webserver_process(settings),
        dagster_daemon_process(settings),
    ]
    if with_prometheus:
        stack.append(prometheus_process(settings))
    allocators = {  # the allocators' own variables; a setting of 0 or "" leaves them alone, and the environment wins
        "MALLOC_ARENA_MAX": settings.malloc_arena_max,
        "MALLOC_MMAP_THRESHOLD_": settings.malloc_mmap_threshold_kib * 1024,
        "_RJEM_MALLOC_CONF": settings.delta_jemalloc_conf,
    }
    extra = {name: str(value) for name, value in allocators.items() if value and name not in os.environ}
    for proc in stack:  # every setting, and of the secrets only those the process uses
        proc.env = {**settings.to_env(secrets=proc.secrets), **extra, **proc.env}
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
            dsn = postgres_dsn(url)
        except ValueError as exc:
            raise ServiceError(f"STREAMRAG_{setting} is not a database URL: {exc}") from None
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = psycopg.conninfo.conninfo_to_dict(dsn)
            raise ServiceError(
                f"Postgres at {where.get('host', 'localhost')}:{where.get('port', 5432)} is not reachable ({reason}); "
                f"check STREAMRAG_{setting}"
            ) from None
    if settings.s3_endpoint_url and (settings.embedded_kafka or settings.delta_on_s3):
        try:
            httpx.get(settings.s3_endpoint_url, timeout=3)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"S3 at {settings.s3_endpoint_url} is not reachable ({type(exc).__name__}); "
                "check STREAMRAG_S3_ENDPOINT_URL"
            ) from None


def migrate_documents(settings: Settings) -> None:
    from streamrag_assets.documents.migrate import upgrade

    try:
        upgrade(settings.app_database_url)
    except Exception as exc:
        raise ServiceError(f"migrating the documents schema failed: {str(exc).splitlines()[0]}") from None


class SchemaMigration:
    """`streamrag migrate` in a child process, beside ingest's start (which does not need the schema). In the
    supervisor, Alembic and SQLAlchemy would stay loaded for the whole run (~20 MiB, measured) for a few hundred
    milliseconds of work."""

    def __init__(self, settings: Settings):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamrag_assets.cli", "migrate"],
            env={**os.environ, **settings.to_env(secrets={"database_url"})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait(self, timeout_s: float) -> None:
        try:
            output, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise ServiceError(f"migrating the documents schema took over {timeout_s:.0f} s") from None
        if self.proc.returncode:
            lines = [line.strip() for line in output.splitlines() if line.strip()]
            reason = lines[-1].removeprefix("error: ") if lines else f"exit code {self.proc.returncode}"
            raise ServiceError(reason)

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


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


# The supervisor's view of each service, for `streamrag status` in another process (written atomically).
def _state_file(settings: Settings) -> Path:
    return settings.state_dir / "run" / "supervisor.json"


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not start"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class ServiceHealth:
    """What the supervisor knows of one service. ``state``: starting, up, backing-off (failed, waiting to restart),
    crashing (failed ``crashing_after`` times in a row), hung (killed after its liveness probe kept failing)."""

    state: str = "starting"
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_reason: str | None = None
    last_exit_at: float | None = None  # Unix time
    next_attempt_at: float | None = None  # Unix time, while waiting to restart
    # Not persisted: monotonic clock readings and the probe in flight.
    failures: int = 0  # failed runs in a row: the backoff's attempt number; reset once up for `stable_after_s`
    failure_kind: str = ""
    started: float = 0.0
    ready_since: float | None = None
    next_attempt: float = 0.0
    probe: Future[bool] | None = None
    probe_started: float = 0.0
    upkeep: Future[None] | None = None
    next_upkeep: float = 0.0
    last_probe: float = 0.0
    probe_failures: list[float] = field(default_factory=list)
    probe_error: str = ""

    def public(self) -> dict[str, object]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit_code,
            "last_exit_reason": self.last_exit_reason,
            "last_exit_at": self.last_exit_at,
            "next_attempt_at": self.next_attempt_at,
        }


@dataclass
class Supervisor:
    """Starts the stack (fail-fast), then heals it forever: a child that exits, hangs (its liveness probe fails
    ``hung_after_failures`` times over at least ``hung_after_s``) or cannot be started again is restarted after an
    exponential backoff with jitter (``backoff_base_s`` doubling up to ``backoff_cap_s``); it is never given up."""

    settings: Settings
    progress: Progress = print
    with_prometheus: bool = False
    services: list[ManagedProcess] | None = None  # what to run; absent: `build_stack(settings)`
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    probe_interval_s: float = 5.0
    probe_timeout_s: float = 10.0
    hung_after_failures: int = 3
    hung_after_s: float = 30.0
    stable_after_s: float = 60.0
    crashing_after: int = 3
    log_check_s: float = 30.0

    def __post_init__(self) -> None:
        self.stack: list[ManagedProcess] = []
        self.health: dict[str, ServiceHealth] = {}
        self._stop = False
        self._backoff = wait_exponential_jitter(
            multiplier=self.backoff_base_s, max=self.backoff_cap_s, jitter=self.backoff_base_s
        )
        self._probes: ThreadPoolExecutor | None = None
        self._metrics_server: WSGIServer | None = None
        self._written = ""
        self._space_checked = -1e9
        self._logs_checked = -1e9

    def request_stop(self, *_: object) -> None:
        self._stop = True

    def start(self) -> None:
        """Start every process; on any failure stop what was started and raise."""
        ensure_state_dir(self.settings)
        other = running_supervisor(self.settings)
        if other is not None:
            raise ServiceError(f"streamrag is already running here (pid {other}); `streamrag down` stops it")
        check_external(self.settings)
        problem = self.settings.api_auth_problem()
        if problem:
            raise ServiceError(problem)
        if self.settings.embedded_postgres:  # made before the processes, whose settings carry their roles' URLs
            for role in ROLES:
                ensure_password(self.settings.postgres_secrets_path, role)
        self.stack = self.services if self.services is not None else build_stack(self.settings, self.with_prometheus)
        self.health = {proc.name: ServiceHealth() for proc in self.stack}
        for proc in self.stack:  # every port checked before anything starts
            proc.check_ports()
        if self.settings.supervisor_metrics_port:
            ensure_port_free(
                self.settings.bind_host,
                self.settings.supervisor_metrics_port,
                "supervisor metrics",
                "STREAMRAG_SUPERVISOR_METRICS_PORT",
            )
        _pid_file(self.settings).write_text(str(os.getpid()))
        # Secrets (and URLs that may carry them) stay out of the file; the rest lets `status` describe this run.
        public = self.settings.model_dump(mode="json", exclude=set(SECRET_FIELDS))
        _settings_file(self.settings).write_text(json.dumps(public))
        migration: SchemaMigration | None = None  # while it runs
        try:
            self._serve_metrics()
            for proc in self.stack:
                if self._stop:
                    raise ServiceError("start-up interrupted")
                if migration is not None:  # what starts after ingest reads the documents tables
                    migration.wait(self.settings.startup_timeout_s)
                    migration = None
                if proc.name == "ingest":
                    self.progress("migrating the documents schema …")
                    migration = SchemaMigration(self.settings)
                began = time.monotonic()
                self.progress(f"starting {proc.name} …")
                proc.start()
                proc.wait_ready(self.settings.startup_timeout_s)
                self._became_ready(proc, time.monotonic())
                self._write_state()
                self.progress(f"{proc.name} ready at {proc.address} ({time.monotonic() - began:.1f} s)")
            if migration is not None:  # ingest started last
                migration.wait(self.settings.startup_timeout_s)
        except BaseException:
            if migration is not None:
                migration.cancel()
            self.stop()
            raise

    def _serve_metrics(self) -> None:
        for proc in self.stack:  # every series exists from the start, so rate() and alerts see the first restart
            SERVICE_UP.labels(proc.name).set(0)
            SERVICE_CRASHING.labels(proc.name).set(0)
            for reason in ("exited", "hung", "not_ready", "start_failed"):
                SERVICE_RESTARTS.labels(proc.name, reason)
        if self.settings.supervisor_metrics_port:
            self._metrics_server, _ = start_http_server(
                self.settings.supervisor_metrics_port, addr=self.settings.bind_host
            )

    def watch(self, poll_s: float = 1.0) -> None:
        """Block until asked to stop, healing every child; one service's trouble never stops the others'."""
        self._probes = ThreadPoolExecutor(max_workers=2 * len(self.stack) + 2, thread_name_prefix="probe")
        while not self._stop:
            for proc in self.stack:
                if self._stop:
                    break
                try:
                    self._tend(proc, self.health[proc.name], time.monotonic())
                except Exception:  # a bug or a surprise in one service's handling must not stop the others'
                    log.exception("supervising %s failed; carrying on", proc.name)
            self._write_state()
            self._check_space()
            self._rotate_logs()
            self._start_upkeep()
            time.sleep(poll_s)

    def _start_upkeep(self) -> None:
        """Start each up service's due housekeeping (`ManagedProcess.upkeep`) in the probe threads."""
        assert self._probes is not None
        now = time.monotonic()
        for proc in self.stack:
            health = self.health[proc.name]
            if proc.upkeep is None or health.state != "up" or now < health.next_upkeep:
                continue
            if health.upkeep is not None and not health.upkeep.done():
                continue
            health.next_upkeep = now + proc.upkeep_every_s
            health.upkeep = self._probes.submit(self._upkeep, proc)

    @staticmethod
    def _upkeep(proc: ManagedProcess) -> None:
        assert proc.upkeep is not None
        try:
            proc.upkeep()
        except Exception as exc:  # the service runs on; the next turn tries again
            log.warning("%s's housekeeping failed: %s", proc.name, exc)

    def _rotate_logs(self) -> None:
        """Keep each service's log near `Settings.log_max_mb`, looked at every ``log_check_s`` (`runtime.logs`)."""
        now = time.monotonic()
        if not self.settings.log_max_mb or now - self._logs_checked < self.log_check_s:
            return
        self._logs_checked = now
        for proc in self.stack:
            try:
                if rotate_if_large(proc.log_path, int(self.settings.log_max_mb * 2**20), self.settings.log_keep):
                    log.info("rotated %s's log (%s.1 holds the previous lines)", proc.name, proc.log_path.name)
            except OSError as exc:  # a full disk, say: the log goes on growing until there is room
                log.warning("could not rotate %s: %s", proc.log_path, exc)

    def _check_space(self, every_s: float = 60.0) -> None:
        """Say so, once a minute, while the state directory's disk is full: every writer fails then."""
        now = time.monotonic()
        if now - self._space_checked < every_s:
            return
        full = space_problem(self.settings.state_dir)
        if full:
            log.error("%s", full)
            self._space_checked = now
        else:
            self._space_checked = now - every_s + 5.0  # cheap: look again in a few seconds

    def _tend(self, proc: ManagedProcess, health: ServiceHealth, now: float) -> None:
        if health.state in ("backing-off", "crashing", "hung"):
            if now >= health.next_attempt:
                self._restart(proc, health, now)
            return
        if not proc.running():
            code = proc.proc.returncode if proc.proc is not None else None
            proc.stop()  # reaps what the leader left in its group, removes its pid file
            self._failed(proc, health, now, "exited", code, describe_exit(code))
            return
        if health.state == "starting":
            if self._probe_result(proc, health, now, proc.ready):
                if proc.after_ready is not None:
                    try:
                        proc.after_ready()
                    except Exception as exc:
                        proc.kill()
                        self._failed(proc, health, now, "start_failed", -signal.SIGKILL, f"after start: {exc}")
                        return
                self._became_ready(proc, now)
                log.warning("%s is up again (restart %d)", proc.name, health.restarts)
            elif now - health.started > self.settings.startup_timeout_s:
                proc.kill()
                self._failed(
                    proc,
                    health,
                    now,
                    "not_ready",
                    -signal.SIGKILL,
                    f"not ready after {self.settings.startup_timeout_s:.0f} s: killed",
                )
            return
        # up
        assert health.ready_since is not None
        if health.failures and now - health.ready_since >= self.stable_after_s:
            health.failures = 0  # healed: the next failure starts the backoff from the beginning
            SERVICE_CRASHING.labels(proc.name).set(0)
        if now - health.ready_since < proc.liveness_grace_s:
            return
        outcome = self._probe_result(proc, health, now, proc.is_live)
        if outcome is None:
            return
        if outcome:
            health.probe_failures.clear()
            SERVICE_UP.labels(proc.name).set(1)
            return
        health.probe_failures.append(now)
        SERVICE_UP.labels(proc.name).set(0)
        failing_for = now - health.probe_failures[0]
        if len(health.probe_failures) >= self.hung_after_failures and failing_for >= self.hung_after_s:
            proc.kill()  # SIGKILL to the whole group: a stopped or deadlocked process ignores anything gentler
            reason = (
                f"hung: liveness probe failed {len(health.probe_failures)} times over {failing_for:.0f} s "
                f"({health.probe_error or 'no answer'}): killed"
            )
            self._failed(proc, health, now, "hung", -signal.SIGKILL, reason, state="hung")

    def _probe_result(
        self, proc: ManagedProcess, health: ServiceHealth, now: float, probe: Callable[[], bool]
    ) -> bool | None:
        """Run ``probe`` in the background (a probe of a hung server may wait for its timeout; the others' must not
        wait with it): True/False once it answered, False if it is overdue, None while in flight or not yet due."""
        if health.probe is None:
            interval = 0.0 if health.state == "starting" else self.probe_interval_s
            if now - health.last_probe < interval:
                return None
            assert self._probes is not None
            health.probe, health.probe_started, health.last_probe = self._probes.submit(probe), now, now
            return None
        if not health.probe.done():
            if now - health.probe_started < self.probe_timeout_s:
                return None
            health.probe, health.probe_error = None, f"no answer within {self.probe_timeout_s:.0f} s"
            return False
        future, health.probe = health.probe, None
        try:
            ok = bool(future.result())
        except Exception as exc:  # a probe failing is an answer: "not ready" or "not live"
            ok, health.probe_error = False, f"{type(exc).__name__}: {str(exc)[:120]}".rstrip(": ")
        else:
            health.probe_error = "" if ok else "probe said no"
        return ok

    def _became_ready(self, proc: ManagedProcess, now: float) -> None:
        health = self.health[proc.name]
        health.state, health.ready_since, health.next_attempt_at = "up", now, None
        health.probe, health.last_probe = None, now
        health.probe_failures.clear()
        SERVICE_UP.labels(proc.name).set(1)

    def _failed(
        self,
        proc: ManagedProcess,
        health: ServiceHealth,
        now: float,
        kind: str,
        code: int | None,
        reason: str,
        state: str | None = None,
    ) -> None:
        health.failures += 1
        health.failure_kind = kind
        full = space_problem(self.settings.state_dir)
        if full:  # the likeliest cause, and the service's own log may be on the full disk too
            reason = f"{reason}; {full}"
        health.last_exit_code, health.last_exit_reason, health.last_exit_at = code, reason, time.time()
        delay = self._backoff(_attempt(health.failures))
        health.next_attempt = now + delay
        health.next_attempt_at = time.time() + delay
        crashing = health.failures >= self.crashing_after
        health.state = state or ("crashing" if crashing else "backing-off")
        health.probe, health.ready_since = None, None
        health.probe_failures.clear()
        SERVICE_UP.labels(proc.name).set(0)
        SERVICE_CRASHING.labels(proc.name).set(1 if crashing else 0)
        log.warning(
            "%s %s; restarting in %.1f s (failure %d in a row). Log %s: %s",
            proc.name,
            reason,
            delay,
            health.failures,
            proc.log_path,
            proc.tail_log(),
        )

    def _restart(self, proc: ManagedProcess, health: ServiceHealth, now: float) -> None:
        health.restarts += 1
        SERVICE_RESTARTS.labels(proc.name, health.failure_kind or "exited").inc()
        try:
            proc.start()
        except Exception as exc:  # ports taken, files unwritable, a bug: counted, backed off, tried again
            with contextlib.suppress(Exception):
                proc.stop()
            self._failed(proc, health, now, "start_failed", None, f"could not start: {exc}")
            return
        health.state, health.started, health.next_attempt_at = "starting", now, None
        health.probe, health.last_probe = None, 0.0

    def _write_state(self) -> None:
        text = json.dumps(
            {"pid": os.getpid(), "services": {name: health.public() for name, health in self.health.items()}},
            indent=1,
        )
        if text != self._written:
            with contextlib.suppress(OSError):  # `status` shows less; supervising goes on
                _write_atomically(_state_file(self.settings), text)
                self._written = text

    def stop(self) -> None:
        self._stop = True
        if self._probes is not None:
            self._probes.shutdown(wait=False, cancel_futures=True)
        for proc in reversed(self.stack):
            self.progress(f"stopping {proc.name} …")
            try:
                proc.stop()
            except Exception as exc:  # the others still have to stop
                log.error("stopping %s failed: %s", proc.name, exc)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        for path in (_pid_file(self.settings), _state_file(self.settings)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            self.start()
            self.watch()
        finally:
            self.stop()


def _attempt(number: int) -> RetryCallState:
    """tenacity's wait strategies read the attempt number from a retry state."""
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = number
    return state


def supervisor_state(settings: Settings) -> dict[str, dict]:
    """Per service, what the running supervisor last wrote (state, restarts, last exit, next attempt); {} if none."""
    if running_supervisor(settings) is None:
        return {}
    try:
        return json.loads(_state_file(settings).read_text()).get("services", {})
    except (FileNotFoundError, ValueError):
        return {}


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
    # From the running supervisor (absent without one): starting, up, backing-off, crashing, hung.
    state: str | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_reason: str | None = None
    last_exit_at: float | None = None  # Unix time
    next_attempt_at: float | None = None  # Unix time


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
    supervised = supervisor_state(settings)
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
        known = supervised.get(proc.name, {})
        rows.append(
            ServiceStatus(
                proc.name,
                is_up,
                proc.address,
                pid if alive else None,
                data_size_bytes(proc.data_dir),
                state=known.get("state"),
                restarts=int(known.get("restarts") or 0),
                last_exit_code=known.get("last_exit_code"),
                last_exit_reason=known.get("last_exit_reason"),
                last_exit_at=known.get("last_exit_at"),
                next_attempt_at=known.get("next_attempt_at"),
            )
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


__all__ = ["Supervisor", "down", "status", "supervisor_state"]
