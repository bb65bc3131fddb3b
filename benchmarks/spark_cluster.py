"""Benchmark: the medallion on a Spark standalone cluster of separate processes, 1 worker against 2 (issue #24).

    .venv/bin/python -m benchmarks.spark_cluster --events 60000

Fills a 2-partition topic on an embedded broker with synthetic events (1% malformed), then for each shape — Spark
inside the driver (`local[2]`), a standalone master with 1 worker, with 2 workers (1 core, 1 GiB each) — runs a
bounded query (`availableNow`, 20,000 events per micro-batch, indexing off: the Spark side alone) over the whole
topic into fresh Delta tables, and prints events/s with and without the query's start, the driver's CPU seconds and
the whole machine's (executors included) during the run.
"""

from __future__ import annotations

import argparse

import psutil

from benchmarks.cpu import busy_cpu_seconds, cpu_seconds
from streamrag_assets.runtime.spark_cluster import spark_cluster_processes
from streamrag_tests.harness import (
    PROJECT_ROOT,
    bounded_run,
    broker_with_events,
    clean_env,
    free_port_block,
    isolated_settings,
    release,
    running,
    scratch_dir,
)


def run_shape(base, workers: int) -> dict:
    """One bounded run in a fresh process (a Spark session's master is fixed for the life of its JVM)."""
    import json
    import subprocess
    import sys

    settings = base.model_copy(
        update={
            "spark_local_workers": workers,
            "spark_master_port": free_port_block(workers + 1),
            "spark_master_ui_port": free_port_block(workers + 1),
        }
    )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    cluster = spark_cluster_processes(settings)
    with running(settings, cluster):
        busy_before = busy_cpu_seconds()
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.spark_cluster", "--one-run"],
            env={**clean_env(), **settings.to_env()},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        # Executors (and their Python workers) are gone with the application: count the whole machine's CPU.
        result["machine_cpu_s"] = round(busy_cpu_seconds() - busy_before, 1)
    return result


def one_run() -> None:
    """The driver's side of one shape (settings from the environment)."""
    import json

    from streamrag_assets.settings import Settings

    settings = Settings()
    batches, elapsed, rows = bounded_run(settings)
    refine = sum(b.phases.get("refine", 0.0) for b in batches)
    print(
        json.dumps(
            {
                "master": settings.spark_master_url,
                "events": rows,
                "seconds": round(elapsed, 1),
                "events_per_s": round(rows / elapsed),
                "in_batches_events_per_s": round(rows / sum(b.seconds for b in batches)),
                "refine_s": round(refine, 1),
                "driver_cpu_s": round(cpu_seconds([psutil.Process().pid]), 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        one_run()
        return
    home = scratch_dir("streamrag-bench-cluster-")
    settings = isolated_settings(
        home / "broker" / ".streamrag",
        topic_partitions=2,
        index_enabled=False,
        replay_max_events_per_trigger=20_000,
        dagster_report_interval_s=0,
    )
    try:
        with broker_with_events(settings, args.events):
            for workers in (0, 1, 2):
                shape = settings.model_copy(update={"home": home / f"shape-{workers}" / ".streamrag"})
                result = run_shape(shape, workers)
                print(("in process" if workers == 0 else f"{workers} worker(s)") + f": {result}", flush=True)
        print(f"load average: {psutil.getloadavg()}  cpu cores: {psutil.cpu_count()}")
    finally:
        release(home)


if __name__ == "__main__":
    main()
