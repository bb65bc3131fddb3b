"""One way to run a server process: spawn, wait until ready, stop cleanly, leave no orphans.

Every embedded service (broker, object store, Postgres, Dagster, API) is a ``ManagedProcess``. Children run in a
session of their own so that stopping one signals its whole process group (Dagster's code servers included), and
carry a parent-death signal so that a SIGKILLed supervisor never leaves them behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"
# How long the rest of a process group has to stop once its leader has exited.
LEFTOVER_GRACE_S = 10.0

_PR_SET_PDEATHSIG = 1


class ServiceError(RuntimeError):
    """A problem a user can fix; the message is one line naming it and what to do."""


def _die_with_parent(niceness: int = 0) -> None:
    # Runs in the child after fork (and after any setuid), so the setting survives into the exec'd server.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if niceness:
        os.nice(niceness)


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def ensure_port_free(host: str, port: int, what: str, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServiceError(
                f"port {port} for {what} is already in use on {host} ({exc.strerror}); "
                f"stop whatever holds it or set {setting} to a free port"
            ) from None


@functools.cache
def local_http() -> httpx.Client:
    """One HTTP client for the probes of local services (the supervisor's of each service every 5 s, the API's
    /health of Dagster) and the supervisor's housekeeping: `httpx.get` makes a client, and with it a TLS context, at
    every call — 27 ms of CPU against 1 ms on a kept client (measured)."""
    return httpx.Client()


def http_answers(url: str, timeout: float = 2.0) -> bool:
    """The server behind ``url`` answered (any status below 500): its process is neither gone nor hung."""
    return local_http().get(url, timeout=timeout).status_code < 500


def postgres_dsn(database_url: str) -> str:
    """A SQLAlchemy URL (``postgresql`` with any driver: ``+psycopg``, ``+psycopg2``) as a libpq connection URI,
    checked by libpq's own parser. Both take the same ``user:password@host:port/db?params`` with percent-escapes, so
    only the scheme changes — without importing SQLAlchemy into the supervisor, which would cost it ~20 MiB of RAM for
    the whole run (measured). Raises `ValueError` for anything else."""
    import psycopg  # here: ingest imports this module and needs no Postgres client (~5 MiB)

    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ValueError("expected postgresql+psycopg://user:password@host:port/database")
    dsn = f"postgresql://{rest}"
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:  # its message quotes the part it could not read, which may be the password
        raise ValueError("libpq cannot read it (are spaces and other special characters percent-escaped?)") from None
    return dsn


def find_executable(name: str, *candidates: Path) -> str:
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ServiceError(f"the '{name}' binary was not found; reinstall the project (make install)")


def java_executable() -> str | None:
    """The `java` Spark's launcher runs: $JAVA_HOME/bin/java when JAVA_HOME is set, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else shutil.which("java")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


@dataclass(frozen=True)
class PortClaim:
    port: int
    what: str
    setting: str


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    pid_path: Path
    ready: Callable[[], bool]
    # Liveness once ready: does the process still do its job, not only exist (an HTTP answer, a heartbeat's age,
    # `select 1`)? Absent: the ready probe. A SIGSTOPped server still accepts TCP connections, so a probe must ask.
    live: Callable[[], bool] | None = None
    # Liveness failures are ignored this long after the process became ready (e.g. a Spark query still starting).
    liveness_grace_s: float = 0.0
    address: str = ""
    ports: list[PortClaim] = field(default_factory=list)
    bind_host: str = LOOPBACK_HOST
    data_dir: Path | None = None
    prepare: Callable[[], None] | None = None
    after_ready: Callable[[], None] | None = None
    # Housekeeping the supervisor runs every ``upkeep_every_s`` while the process is up, in a thread of its own: one
    # run at a time, a failure logged and tried again at the next turn.
    upkeep: Callable[[], None] | None = None
    upkeep_every_s: float = 300.0
    env: dict[str, str] = field(default_factory=dict)
    # The settings in `SECRET_FIELDS` this process uses: `up` gives it those and no other secret.
    secrets: frozenset[str] = frozenset()
    cwd: Path | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 20.0
    # The stop signal goes to the whole process group, or (False) to the leader alone, which stops its children
    # in order itself; what is left of the group is killed once the leader is gone, either way.
    stop_group: bool = True
    # Off the live path (Dagster): a lower CPU priority, so that on a full machine the stream and the API go first.
    niceness: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def check_ports(self) -> None:
        for claim in self.ports:
            ensure_port_free(self.bind_host, claim.port, claim.what, claim.setting)

    def start(self) -> None:
        """Check ports and files (``prepare``), then spawn; does not wait for readiness."""
        self.check_ports()
        if self.prepare is not None:
            self.prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting %s: %s", self.name, " ".join(self.argv))
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Not the parent's own STREAMRAG_* variables: `env` holds the settings, and only the secrets this
                # process uses (`up` itself may have been given every one).
                env={**{k: v for k, v in os.environ.items() if not k.startswith("STREAMRAG_")}, **self.env},
                cwd=self.cwd,
                user=self.user,
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, self.niceness),
            )
        self.pid_path.write_text(str(self.proc.pid))

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {self.proc.returncode} while starting; "
                    f"last log lines: {self.tail_log()}"
                )
            is_ready = False
            with contextlib.suppress(Exception):  # a probe failing just means "not yet"
                is_ready = self.ready()
            if is_ready:
                if self.after_ready is not None:
                    self.after_ready()
                return
            time.sleep(0.2)
        raise ServiceError(f"{self.name} was not ready after {timeout_s:.0f} s; see {self.log_path}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def is_live(self) -> bool:
        return (self.live or self.ready)()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            log.info("stopping %s (pid %s)", self.name, self.proc.pid)
            if self.stop_group:
                _signal_group(self.proc.pid, self.stop_signal)
            else:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout_s)
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Whatever the leader left in its group (a JVM running its shutdown hooks, worker processes) is asked to stop
        # and given a moment: killed at once, a JVM leaves its temporary files (Spark's scratch folders, the native
        # libraries it unpacked) behind at every stop. Then what is still there goes.
        _signal_group(self.proc.pid, signal.SIGTERM)
        if not _group_gone(self.proc.pid, LEFTOVER_GRACE_S):
            log.warning("%s left processes that did not stop in %.0f s; killing them", self.name, LEFTOVER_GRACE_S)
        _signal_group(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash would (used by tests and by `down` for leftovers)."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail_log(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(text[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_gone(pgid: int, timeout_s: float) -> bool:
    """Wait until no process is left in the group (its leader already reaped); False if some still are."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def cli_service(settings: Settings, name: str, command: str, **options: Any) -> ManagedProcess:
    """A service that is one of `streamrag`'s own commands, with its log and pid files named after it."""
    return ManagedProcess(
        name=name,
        argv=[sys.executable, "-m", "streamrag_assets.cli", command],
        log_path=settings.state_dir / "logs" / f"{name}.log",
        pid_path=settings.state_dir / "run" / f"{name}.pid",
        bind_host=settings.bind_host,
        **options,
    )


def metrics_answer(port: int) -> Callable[[], bool]:
    """Liveness of a process by its metrics endpoint (no port: nothing to ask, the process existing is enough)."""
    return lambda: not port or http_answers(f"http://{LOOPBACK_HOST}:{port}/metrics")


def metrics_claim(port: int, what: str, setting: str) -> list[PortClaim]:
    return [PortClaim(port, what, setting)] if port else []
