"""A Spark standalone cluster on this machine: a master and workers as separate processes, from the Spark that the
pyspark wheel installs (``bin/spark-class`` runs the deploy classes). `up` starts one when
``STREAMRAG_SPARK_LOCAL_WORKERS`` > 0, and the stream's driver then runs its micro-batches on the workers' executors
— the shape of a real cluster, where the master URL is all that changes."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from streamrag_assets.runtime.process import ManagedProcess, PortClaim, ServiceError, http_answers, local_http
from streamrag_assets.settings import Settings

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def spark_home() -> Path:
    # Found, not imported: the supervisor needs only the path (importing pyspark alone costs ~20 MiB RSS; the
    # supervisor's PSS in a whole-platform run did not change measurably, ~112 MiB either way).
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise ServiceError("pyspark is not installed; reinstall the project")
    return Path(spec.origin).parent


def _env(settings: Settings) -> dict[str, str]:
    return {
        "SPARK_HOME": str(spark_home()),
        # The daemons only coordinate; 1 GiB of heap each (Spark's default) is memory the executors need more.
        "SPARK_DAEMON_MEMORY": settings.spark_daemon_memory,
        # Executors start their Python workers with this venv's interpreter (it has streamrag_assets installed).
        "PYSPARK_PYTHON": sys.executable,
    }


def master_json(settings: Settings, timeout: float = 2.0) -> dict:
    """The master's view of the cluster: its workers (state, cores, memory used) and applications."""
    return local_http().get(f"http://127.0.0.1:{settings.spark_master_ui_port}/json/", timeout=timeout).json()


def alive_worker_ports(settings: Settings) -> set[int]:
    return {w["port"] for w in master_json(settings)["workers"] if w["state"] == "ALIVE"}


def master_command(settings: Settings, host: str) -> list[str]:
    argv = [str(spark_home() / "bin" / "spark-class"), MASTER_CLASS, "--host", host]
    return argv + ["--port", str(settings.spark_master_port), "--webui-port", str(settings.spark_master_ui_port)]


def worker_command(
    settings: Settings, master_url: str, host: str, port: int, ui_port: int, work_dir: Path
) -> list[str]:
    argv = [str(spark_home() / "bin" / "spark-class"), WORKER_CLASS, "--host", host, "--port", str(port)]
    argv += ["--webui-port", str(ui_port), "--cores", str(settings.spark_worker_cores)]
    return argv + ["--memory", settings.spark_worker_memory, "--work-dir", str(work_dir), master_url]


def exec_daemon(argv: list[str], settings: Settings) -> None:
    """Become the Spark daemon (`streamrag spark master|worker`: a container's or a machine's one process)."""
    os.execve(argv[0], argv, {**os.environ, **_env(settings)})


def spark_master_process(settings: Settings) -> ManagedProcess:
    host = settings.spark_cluster_host
    argv = master_command(settings, host)
    ui = f"http://127.0.0.1:{settings.spark_master_ui_port}/json/"
    return ManagedProcess(
        name="spark-master",
        argv=argv,
        log_path=settings.state_dir / "logs" / "spark-master.log",
        pid_path=settings.state_dir / "run" / "spark-master.pid",
        ready=lambda: http_answers(ui),
        address=settings.spark_master_url,
        ports=[
            PortClaim(settings.spark_master_port, "the Spark master", "STREAMRAG_SPARK_MASTER_PORT"),
            PortClaim(settings.spark_master_ui_port, "the Spark master's web UI", "STREAMRAG_SPARK_MASTER_UI_PORT"),
        ],
        bind_host=host,
        env=_env(settings),
    )


def spark_worker_process(settings: Settings, number: int) -> ManagedProcess:
    """Worker ``number`` (1-based): RPC port master port + number, web UI port master UI port + number."""
    host = settings.spark_cluster_host
    port, ui_port = settings.spark_master_port + number, settings.spark_master_ui_port + number
    work_dir = settings.state_dir / "spark" / f"worker-{number}"
    argv = worker_command(settings, settings.spark_master_url, host, port, ui_port, work_dir)
    return ManagedProcess(
        name=f"spark-worker-{number}",
        argv=argv,
        log_path=settings.state_dir / "logs" / f"spark-worker-{number}.log",
        pid_path=settings.state_dir / "run" / f"spark-worker-{number}.pid",
        # Ready once the master has it: a worker that runs but never registered gets no executors.
        ready=lambda: port in alive_worker_ports(settings),
        live=lambda: http_answers(f"http://127.0.0.1:{ui_port}/json/"),
        address=f"{host}:{port}",
        ports=[
            PortClaim(port, f"Spark worker {number}", "STREAMRAG_SPARK_MASTER_PORT"),
            PortClaim(ui_port, f"Spark worker {number}'s web UI", "STREAMRAG_SPARK_MASTER_UI_PORT"),
        ],
        bind_host=host,
        data_dir=work_dir,
        prepare=lambda: work_dir.mkdir(parents=True, exist_ok=True),
        env=_env(settings),
        secrets=frozenset({"kafka_sasl_password"}),  # its executors read the topic
    )


def spark_cluster_processes(settings: Settings) -> list[ManagedProcess]:
    """The master and ``spark_local_workers`` workers, in start order (none without a local cluster)."""
    if not settings.local_spark_cluster:
        return []
    workers = [spark_worker_process(settings, n) for n in range(1, settings.spark_local_workers + 1)]
    return [spark_master_process(settings), *workers]
