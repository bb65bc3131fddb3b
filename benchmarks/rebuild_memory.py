"""`streamrag replay rebuild` over a large Bronze: wall time and peak memory of the driver (Python) and of Spark's JVM.

Bronze is written directly (synthetic recentchange events, 1 % malformed, in micro-batches of 500), then the rebuild
runs as a user runs it, as a subprocess; its process tree's RSS is sampled every 0.5 s. ``--chunk-rows`` larger than
Bronze gives the one-chunk rebuild (all of Bronze in the driver at once), for comparison.

    PYTHONPATH=. .venv/bin/python -m benchmarks.rebuild_memory --events 1000000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from datetime import UTC, datetime

import psutil
import pyarrow as pa

from streamrag_assets.ingest.sources import synthetic_event
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.schemas import BRONZE_SCHEMA
from streamrag_tests.harness import VENV_BIN, clean_env, isolated_settings, release, scratch_dir

BATCH = 500
WRITE_ROWS = 50_000


def fill_bronze(delta: DeltaTables, events: int) -> None:
    now = datetime.now(UTC)
    for start in range(0, events, WRITE_ROWS):
        seqs = range(start, min(events, start + WRITE_ROWS))
        rows = {
            "topic": ["raw"] * len(seqs),
            "partition": [seq % 4 for seq in seqs],
            "offset": [seq // 4 for seq in seqs],
            "kafka_timestamp": [now] * len(seqs),
            "key": [None] * len(seqs),
            "value": [synthetic_event(seq, seed=3, malformed_fraction=0.01) for seq in seqs],
            "sse_id": [str(seq) for seq in seqs],
            "ingested_at": [now] * len(seqs),
            "batch_id": [seq // BATCH for seq in seqs],
            "written_at": [now] * len(seqs),
        }
        delta.write_once("bronze", pa.table(rows, schema=BRONZE_SCHEMA), "bench-fill", start // WRITE_ROWS)


def rebuild(settings, chunk_rows: int) -> dict:
    env = {**clean_env(), **settings.model_copy(update={"rebuild_chunk_rows": chunk_rows}).to_env()}
    began = time.monotonic()
    proc = subprocess.Popen(
        [str(VENV_BIN / "streamrag"), "replay", "rebuild"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    driver = psutil.Process(proc.pid)
    peak = {"driver": 0, "jvm": 0, "total": 0}
    while proc.poll() is None:
        try:
            tree = [driver, *driver.children(recursive=True)]
            rss = {p.pid: p.memory_info().rss for p in tree}
            jvm = sum(rss[p.pid] for p in tree if p.name() == "java")
        except psutil.Error:
            time.sleep(0.5)
            continue
        peak["driver"] = max(peak["driver"], rss[driver.pid])
        peak["jvm"] = max(peak["jvm"], jvm)
        peak["total"] = max(peak["total"], sum(rss.values()))
        time.sleep(0.5)
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return {
        "chunk_rows": chunk_rows,
        "seconds": round(time.monotonic() - began, 1),
        "peak_rss_mib": {name: round(value / 2**20) for name, value in peak.items()},
        "counts": json.loads(out.decode().strip().splitlines()[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[50_000], help="One rebuild per value.")
    parser.add_argument("--keep-state", action="store_true")
    args = parser.parse_args()
    home = scratch_dir("streamrag-rebuild-")
    try:
        settings = isolated_settings(home / ".streamrag")
        delta = DeltaTables.from_settings(settings)
        began = time.monotonic()
        fill_bronze(delta, args.events)
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu": platform.processor() or platform.machine(),
            "events": args.events,
            "fill_seconds": round(time.monotonic() - began, 1),
            "rebuilds": [rebuild(settings, rows) for rows in args.chunk_rows],
        }
        print(json.dumps(result, indent=2), flush=True)
    finally:
        release(home, keep=args.keep_state)


if __name__ == "__main__":
    main()
