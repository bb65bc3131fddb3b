"""Benchmark: the Spark medallion (issue #4).

    .venv/bin/python -m benchmarks.medallion_throughput --events 100000

Fills a topic on an embedded broker with synthetic events (1% malformed), then measures in one process:
1. warm micro-batches of 1,000 events through Bronze+Silver+Gold (maxOffsetsPerTrigger=1000; first 2 batches are
   warm-up);
2. sustained throughput with large batches (availableNow over the rest of the topic);
3. rebuild of Silver+Gold from all of Bronze (`replay rebuild`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import psutil

from streamrag_assets.operations.rebuild import rebuild_from_bronze
from streamrag_assets.streaming.batch_result import BatchResult
from streamrag_assets.streaming.pipeline import start_query
from streamrag_tests.harness import bounded_run, broker_with_events, isolated_settings, release, scratch_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--warm-batches", type=int, default=12)
    args = parser.parse_args()
    home = scratch_dir("streamrag-bench-")
    # The Spark side alone (Bronze, Silver, Gold): indexing is measured by benchmarks.index_freshness.
    settings = isolated_settings(home / ".streamrag", stream_max_events_per_trigger=1000, index_enabled=False)
    try:
        with broker_with_events(settings, args.events):
            _measure(settings, args)
    finally:
        release(home)


def _measure(settings, args) -> None:
    results: list[BatchResult] = []
    query = start_query(settings, on_batch=results.append)
    while len(results) < args.warm_batches + 2:
        time.sleep(0.2)
    query.stop()
    warm = [r.seconds for r in results[2:]]
    from prometheus_client import REGISTRY

    stages = {}
    for metric in REGISTRY.collect():
        if metric.name == "streamrag_stream_batch_duration_seconds":
            for sample in metric.samples:
                key = (sample.labels["stage"], sample.name.rsplit("_", 1)[-1])
                stages[key] = sample.value
    breakdown = {
        stage: round(stages[(stage, "sum")] / stages[(stage, "count")], 3)
        for stage, kind in stages
        if kind == "sum" and stages[(stage, "count")]
    }
    print(f"mean seconds per stage during warm-up + warm batches: {breakdown}")
    print(
        f"warm 1,000-event micro-batches ({len(warm)}): median {statistics.median(warm):.2f} s, max {max(warm):.2f} s"
    )

    big = settings.model_copy(update={"replay_max_events_per_trigger": 20_000})
    sustained, elapsed, rows = bounded_run(big)
    print(
        f"sustained: {rows:,} events in {elapsed:.1f} s = {rows / elapsed:,.0f} events/s through "
        f"Bronze+Silver+Gold ({len(sustained)} batches, query start included)"
    )
    batch_rate = rows / sum(r.seconds for r in sustained)
    print(f"  inside micro-batches: {batch_rate:,.0f} events/s")

    began = time.monotonic()
    counts = rebuild_from_bronze(settings)
    print(f"rebuild of Silver+Gold from {counts['bronze']:,} Bronze rows: {time.monotonic() - began:.1f} s ({counts})")
    print(
        f"load average: {psutil.getloadavg()}  cpu cores: {psutil.cpu_count()}  "
        f"RSS of this process (driver + Python): {psutil.Process().memory_info().rss / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
