"""The Spark session: started once per process, tuned for a 2-core machine, using this venv's Python."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from streamrag_assets.kafka.spark_source import KafkaDataSource
from streamrag_assets.runtime.process import java_executable
from streamrag_assets.settings import Settings, get_settings
from streamrag_assets.streaming.spark_internals import jvm

QUIET_LOGGER = "org.apache.spark.sql.execution.streaming.runtime.ProcessingTimeExecutor"

# The module Spark starts its Python worker daemons with (pyspark's daemon without pandas: see the module).
PYTHON_DAEMON_MODULE = "streamrag_assets.streaming.python_daemon"


def scratch_dir(settings: Settings) -> Path:
    """Spark's scratch folders and the driver JVM's temporary files."""
    return settings.state_dir / "spark" / "tmp"


def native_heap_trim_option(interval_s: float) -> str | None:
    """The JVM option that has it hand freed native memory back every ``interval_s`` (glibc keeps what the JVM's
    threads free in its arenas: 25 MiB of the driver after a catch-up, measured); None for 0, or when the JVM that
    Spark starts does not know the option (later updates of Java 17 and 21 have it, 17.0.15 here does; an unknown
    option stops the JVM)."""
    if interval_s <= 0:
        return None
    option = f"-XX:TrimNativeHeapInterval={round(interval_s * 1000)}"
    return option if _jvm_accepts(option) else None


@functools.cache
def _jvm_accepts(option: str) -> bool:
    """Whether the `java` Spark's launcher runs starts with ``option``."""
    java = java_executable()
    if java is None:
        return False
    try:
        done = subprocess.run([java, option, "-version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def spark_conf(settings: Settings, continuous: bool = False) -> dict[str, str]:
    """Spark's configuration; ``continuous``: for the process that runs the continuous query."""
    java_options = settings.spark_driver_java_options
    if continuous:
        java_options = f"{java_options} {settings.stream_driver_java_options}".strip()
        trim = native_heap_trim_option(settings.memory_trim_interval_s)
        if trim:  # before the user's options, so that theirs win
            java_options = f"{trim} {java_options}"
    # The JVM's own temporary files (the native libraries it unpacks, Spark's artifact folders) stay in the state
    # with Spark's scratch folders rather than in the system's temporary folder.
    java_options = f"-Djava.io.tmpdir={scratch_dir(settings)} {java_options}".strip()
    return {
        # 200 shuffle partitions make every micro-batch take seconds on two cores.
        "spark.sql.shuffle.partitions": str(settings.spark_tasks),
        "spark.default.parallelism": str(settings.spark_tasks),
        "spark.sql.session.timeZone": "UTC",
        # Bad data must become a quarantine row, never an exception from a cast.
        "spark.sql.ansi.enabled": "false",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": "2g",
        "spark.driver.extraJavaOptions": java_options,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.python.worker.reuse": "true",
        # pyspark's daemon, without the pandas pyarrow would import into every worker (see the module).
        "spark.python.daemon.module": PYTHON_DAEMON_MODULE,
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        # The default (FileContext) checkpoint manager runs `readlink` and `chmod` as processes for every offset and
        # commit log entry when Hadoop has no native library (here: none): ~4 processes, ~55 ms per log write,
        # 110 ms of each micro-batch. Through the FileSystem API a write takes ~15 ms; a local rename is atomic.
        "spark.sql.streaming.checkpointFileManagerClass": (
            "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"
        ),
        # Executors on a cluster connect back to the driver: it must listen where they can reach it.
        "spark.driver.host": settings.spark_driver_host,
        "spark.driver.bindAddress": settings.spark_driver_bind_address or settings.spark_driver_host,
        "spark.driver.port": str(settings.spark_driver_port),
        "spark.driver.blockManager.port": str(settings.spark_block_manager_port),
        "spark.executor.memory": settings.spark_executor_memory,
        "spark.local.dir": str(scratch_dir(settings)),
        "spark.sql.warehouse.dir": str(settings.state_dir / "spark" / "warehouse"),
    }


def session_conf(settings: Settings, continuous: bool = False) -> dict[str, str]:
    """Everything a session needs, master and name included (what dagster-pyspark's resource is given)."""
    return {
        "spark.master": settings.spark_master_url,
        "spark.app.name": "streamrag",
        # Python workers run this venv's interpreter even when a session is made before our environment is set.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    } | spark_conf(settings, continuous)


def prepare_environment(settings: Settings) -> None:
    """Set before any session starts: executors must run this venv's interpreter, or they import a different
    pyspark/kafka-python."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    scratch_dir(settings).mkdir(parents=True, exist_ok=True)


def get_spark(settings: Settings | None = None, continuous: bool = False) -> SparkSession:
    """The process's Spark session (start-up costs 7-15 s here, so it is made once and reused; a session made
    earlier, e.g. by dagster-pyspark's resource, is the one returned). ``continuous``: the session is made for the
    continuous query (its JVM options, when it is the first)."""
    settings = settings or get_settings()
    prepare_environment(settings)
    builder = SparkSession.builder
    for key, value in session_conf(settings, continuous).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    # On two cores most micro-batches outlast the trigger interval, and Spark warns of each one; the stream logs a
    # slow batch itself, with where its time went.
    log4j = jvm(spark).org.apache.logging.log4j
    log4j.core.config.Configurator.setLevel(QUIET_LOGGER, log4j.Level.ERROR)
    spark.dataSource.register(KafkaDataSource)
    return spark
