"""Benchmark: what a Delta append costs as a table ages, with and without the stream's table maintenance.

    .venv/bin/python -m benchmarks.delta_append --appends 3000 --every 0 100

The stream appends one small batch per micro-batch to each table (~0.75 per second at 50 events/s: 2,700 an hour).
Each run here appends ``--rows`` Silver rows ``--appends`` times to a fresh table through `DeltaTables`, as the
stream does (transaction check, append, version read), maintaining it every ``--every`` appends (0 = never) with
``--retention-minutes`` as the tables' retention, and reports each window's p50/p99 wall time and mean CPU time per
append, and maintenance's own time.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from streamrag_assets.streaming.delta import DeltaTables
from streamrag_tests.harness import TODAY, silver_rows


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(appends: int, rows: int, every: int, window: int, retention_minutes: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="delta-append-"))
    delta = DeltaTables(root, maintain_every=every, retention_minutes=retention_minutes)
    walls: list[float] = []
    cpus: list[float] = []
    maintenance: list[float] = []
    windows = []
    for batch in range(1, appends + 1):
        data = silver_rows([f"e{batch}-{i}" for i in range(rows)], TODAY, batch)
        began, cpu = time.perf_counter(), cpu_seconds()
        delta.write_once("silver", data, "bench-silver", batch)
        delta.version("silver")
        walls.append(time.perf_counter() - began)
        cpus.append(cpu_seconds() - cpu)
        if delta.maintenance_due("silver"):
            began = time.perf_counter()
            delta.maintain("silver")
            maintenance.append(time.perf_counter() - began)
        if batch % window == 0:
            last = sorted(walls[-window:])
            windows.append(
                {
                    "appends": batch,
                    "p50_ms": round(last[len(last) // 2] * 1000, 1),
                    "p99_ms": round(last[int(len(last) * 0.99)] * 1000, 1),
                    "cpu_ms": round(statistics.fmean(cpus[-window:]) * 1000, 1),
                }
            )
            print(json.dumps({"every": every, **windows[-1]}), flush=True)
    return {
        "every": every,
        "retention_minutes": retention_minutes,
        "windows": windows,
        "maintenance_s": {
            "runs": len(maintenance),
            "mean": round(statistics.fmean(maintenance), 3) if maintenance else None,
            "max": round(max(maintenance), 3) if maintenance else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=3000, help="appends per run")
    parser.add_argument("--rows", type=int, default=60, help="rows per append (a micro-batch at 50 events/s)")
    parser.add_argument("--every", type=int, nargs="+", default=[0, 100], help="maintenance intervals to compare")
    parser.add_argument("--retention-minutes", type=int, default=10, help="the tables' retention (the setting)")
    parser.add_argument("--window", type=int, default=500, help="appends per reported window")
    args = parser.parse_args()
    results = [run(args.appends, args.rows, every, args.window, args.retention_minutes) for every in args.every]
    print(json.dumps({"rows": args.rows, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
