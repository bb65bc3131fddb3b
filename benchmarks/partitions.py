"""Experiment (issue 26): the documents table partitioned by day of `event_time`, against the one table `streamrag`
keeps — what a search costs, and what retention and VACUUM cost — on a table `make bench-scale --keep-state` left.

    PYTHONPATH=. .venv/bin/python -m benchmarks.partitions --home /tmp/streamrag-scale-XXXX

1. build (skipped when it is there): `documents_by_day`, the same columns and indexes as `documents` (the HNSW graph
   with the same m / ef_construction), one partition per UTC day, filled with the table's rows.
2. vector search as the API's hybrid /search asks it (`queries.nearest_candidates`: 40 nearest live, non-probe
   documents; `hnsw.ef_search` and the relaxed iterative scan of its connections): at 1 client, latency per query over
   ``--queries`` questions and near-document vectors (a second pass is timed; the first warms the cache), recall@10
   of each table against the exact top 10, and the plan; at ``--clients`` clients for ``--seconds``, queries/s and
   p50/p95.
3. the cost of ordinary edits to VACUUM: ``--edit-fraction`` of the largest day's rows updated (``--edit update``,
   as a tombstone or a rename updates them: the vector stays) or deleted (``--edit delete``), then VACUUM of that
   day's partition alone, index cleanup forced — against the whole table's VACUUM measured in RESULTS.md.
4. retention: the oldest day's partition detached (CONCURRENTLY: searches go on) and dropped, while ``--clients``
   clients search it; the time and the search latency meanwhile. The copy's rows only: `documents` is not touched.

The copy stays in the database for another run (``--drop`` removes it first).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import psycopg

from benchmarks.api_latency import _summary_ms
from benchmarks.scale import _conninfo, _vector_literal, exact_top10, query_vectors
from streamrag_api.search import SEARCH_CONNECT_OPTIONS, search_connect_options
from streamrag_assets.documents.queries import NOT_A_PROBE
from streamrag_assets.runtime.postgres import admin_connect
from streamrag_tests.harness import EmbeddedStack, isolated_settings

COPY = "documents_by_day"
NEAREST = (
    "SELECT doc_id, event_time, 1 - (embedding <=> %(q)s::halfvec) AS score FROM {table} "
    f"WHERE NOT deleted AND {NOT_A_PROBE} ORDER BY embedding <=> %(q)s::halfvec LIMIT 40"
)


def build(settings, admin: psycopg.Connection, build_memory_mb: int) -> dict:
    """`documents_by_day` with a partition per day the table's rows fall in, filled, then indexed as `documents` is."""
    began = time.perf_counter()
    first, last = admin.execute("SELECT min(event_time), max(event_time) FROM documents").fetchone()
    columns = [
        name
        for (name,) in admin.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'documents'::regclass AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum"
        )
    ]
    quoted = ", ".join(f'"{c}"' for c in columns)
    admin.execute(
        f"CREATE TABLE {COPY} (LIKE documents INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING STORAGE) "
        "PARTITION BY RANGE (event_time)"
    )
    day = first.astimezone(UTC).date()
    days = 0
    while day <= (last.astimezone(UTC) + timedelta(days=1)).date():
        admin.execute(
            f"CREATE TABLE {COPY}_{day:%Y%m%d} PARTITION OF {COPY} "
            f"FOR VALUES FROM ('{day} 00:00+00') TO ('{day + timedelta(days=1)} 00:00+00') "
            "WITH (toast_tuple_target = 8160)"
        )
        day += timedelta(days=1)
        days += 1
    t = time.perf_counter()
    admin.execute(f"INSERT INTO {COPY} ({quoted}) SELECT {quoted} FROM documents")
    timings = {"partitions": days, "copy_s": round(time.perf_counter() - t, 1)}
    admin.execute(f"SET maintenance_work_mem = '{build_memory_mb}MB'")
    # The indexes of `documents` (models.Document), each built partition by partition; the key holds the day.
    t = time.perf_counter()
    admin.execute(f"ALTER TABLE {COPY} ADD CONSTRAINT {COPY}_pkey PRIMARY KEY (doc_id, event_time)")
    timings["index_pkey_s"] = round(time.perf_counter() - t, 1)
    for name, definition in {
        "hnsw": "USING hnsw (embedding halfvec_cosine_ops) WITH (m = 24, ef_construction = 96)",
        "gin": "USING gin (search)",
        "wiki_title": "(wiki, title)",
        "event_time": "(event_time)",
        "filters": "(lang, namespace, type, bot)",
        "indexed_at": "(indexed_at)",
        "written_xid": "(written_xid)",
    }.items():
        t = time.perf_counter()
        admin.execute(f"CREATE INDEX {COPY}_{name} ON {COPY} {definition}")
        timings[f"index_{name}_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps({name: timings[f"index_{name}_s"]}), flush=True)
    admin.execute(f"VACUUM ANALYZE {COPY}")
    timings["build_s"] = round(time.perf_counter() - began, 1)
    return timings


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used: a backend's cost, whatever else the machine runs."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _recall(tops: list[set[str]], exact: list[set[str]]) -> dict:
    overlaps = [len(t & e) / max(1, len(e)) for t, e in zip(tops, exact, strict=True)]
    return {"recall_at_10": round(statistics.fmean(overlaps), 4), "recall_min": round(min(overlaps), 2)}


def one_client(
    settings, queries: list[np.ndarray], table: str, options: str = SEARCH_CONNECT_OPTIONS
) -> tuple[dict, list[set[str]], str]:
    """Each query once to warm, once timed; the timed pass's latency and its backend's CPU ms per query, each query's
    top 10 ids, and the plan."""
    statement = NEAREST.format(table=table)
    with psycopg.connect(_conninfo(settings), autocommit=True, prepare_threshold=None, options=options) as conn:
        for query in queries:
            conn.execute(statement, {"q": _vector_literal(query)}).fetchall()
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        cpu = _cpu_s(backend)
        latencies, tops = [], []
        for query in queries:
            began = time.perf_counter()
            rows = conn.execute(statement, {"q": _vector_literal(query)}).fetchall()
            latencies.append((time.perf_counter() - began) * 1000)
            rows.sort(key=lambda r: r[2], reverse=True)
            tops.append({r[0] for r in rows[:10]})
        cpu_ms = (_cpu_s(backend) - cpu) * 1000 / len(queries)
        plan = "\n".join(
            re.sub(r"'\[[^']*\]'", "'[...]'", r[0])
            for r in conn.execute(
                f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {statement}", {"q": _vector_literal(queries[0])}
            )
        )
    return _summary_ms(latencies) | {"backend_cpu_ms_per_query": round(cpu_ms, 2)}, tops, plan


def many_clients(settings, queries: list[np.ndarray], table: str, clients: int, seconds: float) -> dict:
    statement = NEAREST.format(table=table)
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(n: int) -> None:
        with psycopg.connect(
            _conninfo(settings), autocommit=True, prepare_threshold=None, options=SEARCH_CONNECT_OPTIONS
        ) as conn:
            i = n
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                conn.execute(statement, {"q": _vector_literal(queries[i % len(queries)])}).fetchall()
                with lock:
                    latencies.append((time.perf_counter() - began) * 1000)
                i += clients

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"queries": len(latencies), "per_s": round(len(latencies) / seconds, 1)} | _summary_ms(latencies)


def exact_ids(settings, admin: psycopg.Connection, queries: list[np.ndarray]) -> list[set[str]]:
    """Each query's exact ten nearest live documents of `documents`, by id (probes are none of them here)."""
    tops, _ = exact_top10(settings, queries)
    out = []
    for top in tops:
        tids = list(top)
        out.append({r[0] for r in admin.execute("SELECT doc_id FROM documents WHERE ctid = ANY(%s::tid[])", (tids,))})
    return out


def vacuum_after_edits(admin: psycopg.Connection, fraction: float, edit: str) -> dict:
    """``fraction`` of the largest day's rows updated (the vector kept) or deleted, then VACUUM of that partition
    (index cleanup forced: Postgres may skip it when few pages hold dead rows); its time, and the CPU of the backend
    (pgvector's graph repair runs in parallel vacuum workers, not counted there)."""
    largest = admin.execute(
        f"SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        f"WHERE i.inhparent = '{COPY}'::regclass ORDER BY c.reltuples DESC LIMIT 1"
    ).fetchone()[0]
    rows = admin.execute(f"SELECT count(*) FROM {largest}").fetchone()[0]
    which = f"doc_id IN (SELECT doc_id FROM {largest} TABLESAMPLE BERNOULLI (%s))"
    statement = (
        f"DELETE FROM {largest} WHERE "
        if edit == "delete"
        else f"UPDATE {largest} SET title = title || ' (moved)' WHERE "
    )
    t = time.perf_counter()
    edited = admin.execute(statement + which, (fraction * 100,)).rowcount
    edit_s = time.perf_counter() - t
    backend = admin.execute("SELECT pg_backend_pid()").fetchone()[0]
    cpu = _cpu_s(backend)
    t = time.perf_counter()
    admin.execute(f"VACUUM (INDEX_CLEANUP ON) {largest}")
    return {
        "edit": edit,
        "partition": largest,
        "partition_rows": rows,
        "rows_edited": edited,
        "edit_s": round(edit_s, 1),
        "vacuum_s": round(time.perf_counter() - t, 1),
        "vacuum_backend_cpu_s": round(_cpu_s(backend) - cpu, 1),
    }


def drop_oldest(settings, admin: psycopg.Connection, queries: list[np.ndarray], clients: int) -> dict:
    """The oldest populated day's partition detached concurrently and dropped while ``clients`` clients search."""
    oldest, rows = admin.execute(
        f"SELECT c.relname, c.reltuples::bigint FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        f"WHERE i.inhparent = '{COPY}'::regclass AND c.reltuples > 0 ORDER BY c.relname LIMIT 1"
    ).fetchone()
    result: dict = {}
    done = threading.Event()

    def retention() -> None:
        try:
            t = time.perf_counter()
            admin.execute(f"ALTER TABLE {COPY} DETACH PARTITION {oldest} CONCURRENTLY")
            result["detach_s"] = round(time.perf_counter() - t, 2)
            t = time.perf_counter()
            admin.execute(f"DROP TABLE {oldest}")
            result["drop_s"] = round(time.perf_counter() - t, 2)
        finally:
            done.set()

    before = many_clients(settings, queries, COPY, clients, 5.0)
    worker = threading.Thread(target=retention)
    worker.start()
    during = many_clients(settings, queries, COPY, clients, 5.0)
    worker.join()
    return {"partition": oldest, "rows": rows, **result, "search_5s_before": before, "search_5s_during": during}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="A --keep-state home of `make bench-scale`.")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--noise", type=float, default=0.015)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--ef-search",
        type=int,
        nargs="*",
        default=[100, 40, 20],
        help="Also measured at these hnsw.ef_search (1 client).",
    )
    parser.add_argument("--build-memory-mb", type=int, default=4096)
    parser.add_argument("--edit-fraction", type=float, default=0.01)
    parser.add_argument(
        "--edit",
        choices=("update", "delete"),
        default="delete",
        help="What the VACUUM phase does to a day's rows: update them (the vector stays) or delete them.",
    )
    parser.add_argument("--build-only", action="store_true", help="Build the copy and stop.")
    parser.add_argument("--drop", action="store_true", help="Drop a copy left by an earlier run first.")
    parser.add_argument("--retention-only", action="store_true", help="Skip the search measurements.")
    parser.add_argument("--no-retention", action="store_true", help="Leave the copy's partitions as they are.")
    args = parser.parse_args()
    settings = isolated_settings(args.home / ".streamrag")
    stack = EmbeddedStack(settings)
    cpu = "AVX-512" if "avx512f" in Path("/proc/cpuinfo").read_text() else "AVX2"
    out: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu, "args": vars(args)}
    out["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
    try:
        stack.start(stack.postgres)
        with admin_connect(settings, settings.postgres_db) as admin:
            owner = admin.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'documents'").fetchone()[0]
            admin.execute(f'SET ROLE "{owner}"')  # the copy is the app's, as `documents` is
            if args.drop:
                admin.execute(f"DROP TABLE IF EXISTS {COPY}")
            if admin.execute("SELECT to_regclass(%s)", (COPY,)).fetchone()[0] is None:
                out["build"] = build(settings, admin, args.build_memory_mb)
                print(json.dumps({"build": out["build"]}), flush=True)
            if args.build_only:
                return
            out["rows"] = {
                table: admin.execute(f"SELECT count(*) FROM {table} WHERE NOT deleted").fetchone()[0]
                for table in ("documents", COPY)
            }
            queries = query_vectors(settings, args.queries, args.noise, args.seed)
            exact = exact_ids(settings, admin, queries) if not args.retention_only else []
            for table in ("documents", COPY) if not args.retention_only else ():
                latency, tops, plan = one_client(settings, queries, table)
                out[table] = {
                    "one_client_ms": latency,
                    **_recall(tops, exact),
                    f"{args.clients}_clients": many_clients(settings, queries, table, args.clients, args.seconds),
                    "plan": plan,
                }
                print(json.dumps({table: out[table]}), flush=True)
                for ef in args.ef_search:  # the same at other candidate lists: equal recall at what cost
                    latency, tops, _ = one_client(settings, queries, table, search_connect_options(ef))
                    out[table][f"ef_search_{ef}"] = {"one_client_ms": latency, **_recall(tops, exact)}
                    print(json.dumps({table: {ef: out[table][f"ef_search_{ef}"]}}), flush=True)
            if not args.no_retention:
                out["vacuum_after_edits"] = vacuum_after_edits(admin, args.edit_fraction, args.edit)
                print(json.dumps({"vacuum_after_edits": out["vacuum_after_edits"]}), flush=True)
                out["drop_oldest_day"] = drop_oldest(settings, admin, queries, args.clients)
        out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(out, indent=1, default=str))
    finally:
        stack.stop_all()


if __name__ == "__main__":
    main()
