"""Benchmark: /search and indexing on one kept documents table under several Postgres buffer-cache sizes.

    PYTHONPATH=. .venv/bin/python -m benchmarks.scale --sizes 200000 --keep-state     # makes the table once
    PYTHONPATH=. .venv/bin/python -m benchmarks.postgres_cache --home /tmp/streamrag-scale-XXXX \\
        --configs 512MB 256MB 128MB 128MB:sync

For each ``--configs`` entry (``shared_buffers`` or ``shared_buffers:io_method``), one after another on the same
table: Postgres started with it (the rest as `up` runs it), the API started on it, then `benchmarks.scale`'s /search
load (hybrid, vector and keyword at 1 and ``--clients`` clients) and its indexing while searching (new documents
embedded and upserted for ``--insert-seconds`` while ``--clients`` clients search), Postgres' PSS after, and the
relation pages its client backends read from the OS (`pg_stat_io`: a buffer-cache miss) during the measurement.
Each entry restarts Postgres, so its cache starts empty and the OS' file cache warm: what a restarted platform
meets. The table grows by the documents indexed in each entry (a few thousand).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from benchmarks.cpu import cpu_kind
from benchmarks.scale import _conninfo, api_on, footprint, index_while_searching, search_load
from streamrag_tests.harness import EmbeddedStack, isolated_settings

IO_METHOD_LINE = "io_method"


def client_reads(settings) -> int:
    """Relation pages Postgres' client backends have read from the OS (not found in the buffer cache), so far."""
    with psycopg.connect(_conninfo(settings)) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(reads), 0) FROM pg_stat_io "
            "WHERE backend_type = 'client backend' AND object = 'relation'"
        ).fetchone()
    return int(row[0])


def set_io_method(data_dir: Path, io_method: str | None) -> None:
    """Postgres' `io_method` for its next start (None: its default), through postgresql.auto.conf."""
    conf = data_dir / "postgresql.auto.conf"
    lines = [line for line in conf.read_text().splitlines() if not line.startswith(IO_METHOD_LINE)]
    if io_method:
        lines.append(f"{IO_METHOD_LINE} = '{io_method}'")
    conf.write_text("\n".join(lines) + "\n")


def measure(home: Path, shared_buffers: str, io_method: str | None, args, seed: int) -> dict:
    settings = isolated_settings(home / ".streamrag", postgres_shared_buffers=shared_buffers)
    set_io_method(settings.state_dir / "postgres", io_method)
    stack = EmbeddedStack(settings)
    stack.start(stack.postgres)
    out: dict = {"shared_buffers": shared_buffers, "io_method": io_method or "default", "seed": seed}
    try:
        with psycopg.connect(_conninfo(settings)) as conn:
            out["documents"] = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        with api_on(settings, out["documents"]) as (api, _, _):
            pids = {"api": api.proc.pid, "postgres": stack.postgres.proc.pid}
            reads = client_reads(settings)
            out["search"] = search_load(settings, args.clients, args.warmup, args.seconds, pids)
            out["indexing_while_searching"] = index_while_searching(
                settings, args.clients, args.insert_seconds, seed, pids
            )
            out["client_reads"] = client_reads(settings) - reads
            out["postgres_pss_mib"] = footprint(settings, pids, out["documents"])["pss_mib"]["postgres"]
    finally:
        stack.stop_all()
        set_io_method(settings.state_dir / "postgres", None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="A `benchmarks.scale --keep-state` run's folder.")
    parser.add_argument(
        "--configs", nargs="+", default=["512MB", "256MB", "128MB"], help="shared_buffers[:io_method], in order."
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15, help="Measured seconds per mode and client count.")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--insert-seconds", type=float, default=40)
    parser.add_argument(
        "--seed",
        type=int,
        default=int(time.time()),
        help="Which new documents the first entry indexes (the next entries: seed + 1, ...). The default changes "
        "with every run: documents already in the table would be upserted unchanged, not indexed.",
    )
    args = parser.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')}  {cpu_kind()}", flush=True)
    for n, config in enumerate(args.configs):
        shared_buffers, _, io_method = config.partition(":")
        result = measure(args.home, shared_buffers, io_method or None, args, seed=args.seed + n)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
