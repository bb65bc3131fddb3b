"""Benchmark: search and indexing as the documents table grows (issue 26, item 1).

    make bench-scale                                    # 1M, 5M and 10M documents
    PYTHONPATH=. .venv/bin/python -m benchmarks.scale --sizes 20000 40000 --seconds 10

One embedded Postgres (pgvector) and the API as `up` runs it. For each size, smallest first, the table is grown to
that many documents and then measured:
1. corpus (`api_latency.build_corpus`): ``--real-docs`` documents embedded with the real model, the rest variants of
   them (another title, time, size and ids). A variant's vector (``--variants``): by default a blend of its real
   document's vector (weight 0.5-1) and another's, plus N(0, ``--noise``) per dimension, normalised — variants fill
   the space between real documents as edits mixing one page's title with another's summary do; or ``copies``, the
   real vector plus noise only, which makes each real document a tight cloud of size / real-docs near-copies (a bot
   run over many alike pages; HNSW's hardest case, reported beside). The HNSW index is built again after each
   growth (its time is reported).
2. recall@10 of the vector search as the API runs it (HNSW with the API's `SEARCH_CONNECT_OPTIONS`: ef_search,
   iterative scans) against exact search (every live row's distance, all queries in one read of the table:
   `exact_top10`) over ``--recall-queries`` queries: the question list embedded, and real documents' vectors with
   fresh noise (a query near one cloud). With ``--home``, a kept table already of the size asked is measured as it
   is (nothing copied or rebuilt).
3. /search at 1 and ``--clients`` clients per mode (hybrid, vector, keyword), as `make bench-api` measures it.
4. indexing while searching: new real documents indexed through `DocumentIndex` (embedding included, batches of 32)
   for ``--insert-seconds`` while ``--clients`` clients run hybrid /search; documents/s and the search latency.
5. PSS of Postgres and the API, the table's and its indexes' size on disk, and per million documents.
6. at the largest size only, a day of retention: the oldest of the seven days pruned as the daily schedule prunes
   it, and VACUUM once no transaction older than the delete remains (so that it can remove the rows; the dead
   tuples before and after say whether it did; cancelled after ``--vacuum-timeout``), while ``--clients`` clients
   run hybrid /search (its latency per 5-s window).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg

from benchmarks.api_latency import (
    BUILD_MEMORY_FRACTION,
    QUESTIONS,
    VARIANT_KINDS,
    _keyword_index_ready,
    _summary_ms,
    _vector_literal,
    build_corpus,
    run_phase,
)
from benchmarks.stack_footprint import _tree, usage
from streamrag_api.search import SEARCH_CONNECT_OPTIONS
from streamrag_assets.documents.retention import prune
from streamrag_assets.documents.store import DocumentIndex
from streamrag_assets.embedding.embedder import get_embedder
from streamrag_assets.runtime.api import api_process
from streamrag_assets.runtime.postgres import admin_connect
from streamrag_tests.harness import EmbeddedStack, gold_documents, isolated_settings, release, scratch_dir

VECTOR_QUERY = (
    "SELECT ctid::text, embedding <=> %(q)s::vector FROM documents WHERE NOT deleted "
    "ORDER BY embedding <=> %(q)s::vector LIMIT 10"
)
# One row of `COPY (SELECT ctid, embedding ...) TO STDOUT (FORMAT binary)`: the field count, then each field's length
# and value, big-endian — the tid (block, offset) and pgvector's halfvec (dimensions, unused, float16 values).
_SCAN_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("tid_len", ">i4"),
        ("block", ">u4"),
        ("offset", ">u2"),
        ("vec_len", ">i4"),
        ("dim", ">i2"),
        ("unused", ">i2"),
        ("value", ">f2", (384,)),
    ]
)
_COPY_HEADER = 19  # PGCOPY signature (11), flags (4), header extension length (4)


def _conninfo(settings) -> str:
    return settings.app_database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def query_vectors(settings, count: int, noise: float, seed: int) -> list[np.ndarray]:
    """The questions embedded, then real documents' vectors with fresh noise, ``count`` in all."""
    embedder = get_embedder()
    vectors = [v for v in embedder.embed(QUESTIONS[:count])]
    rng = np.random.default_rng(seed + 1)
    with psycopg.connect(_conninfo(settings)) as conn:
        real = conn.execute(
            "SELECT embedding::text FROM documents WHERE doc_id NOT LIKE %s ORDER BY doc_id LIMIT %s",
            ("%:9_________", max(1, count - len(vectors))),
        ).fetchall()
    for (literal,) in real[: count - len(vectors)]:
        vector = np.asarray(json.loads(literal)) + rng.normal(0.0, noise, 384)
        vectors.append(vector / np.linalg.norm(vector))
    return [np.asarray(v, dtype=np.float64) for v in vectors]


def exact_top10(settings, queries: list[np.ndarray], chunk_rows: int = 100_000) -> tuple[list[dict], float]:
    """Each query's exact ten nearest (tid -> cosine distance), from one sequential read of every live row's stored
    halfvec: the distances computed here in float32 as pgvector computes them (the query rounded to halfvec, as the
    column's operator casts it). One scan for all queries instead of one per query — at 10M documents a scan of the
    table takes tens of seconds, more than the whole HNSW phase. Returns the tops and the scan's seconds."""
    q = np.stack([np.asarray(v, dtype=np.float16).astype(np.float32) for v in queries])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    best_d = np.full((10, len(queries)), np.inf, dtype=np.float32)
    best_tid = np.zeros((10, len(queries)), dtype=np.uint64)

    def fold(rows: np.ndarray) -> None:
        assert ((rows["fields"] == 2) & (rows["dim"] == 384) & (rows["vec_len"] == 772)).all(), (
            "a row of the COPY stream is not (tid, halfvec(384))"
        )
        vectors = rows["value"].astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = np.inf  # a zero vector is at distance 1 (pgvector says NaN; never nearest either way)
        distances = 1.0 - (vectors @ q.T) / norms[:, None]
        tids = (rows["block"].astype(np.uint64) << np.uint64(16)) | rows["offset"].astype(np.uint64)
        k = min(10, len(rows))
        nearest = np.argpartition(distances, k - 1, axis=0)[:k]
        both_d = np.concatenate([best_d, np.take_along_axis(distances, nearest, axis=0)])
        both_tid = np.concatenate([best_tid, tids[nearest]])
        keep = np.argsort(both_d, axis=0, kind="stable")[:10]
        best_d[:] = np.take_along_axis(both_d, keep, axis=0)
        best_tid[:] = np.take_along_axis(both_tid, keep, axis=0)

    began = time.perf_counter()
    pending = bytearray()
    header_seen = False
    step = chunk_rows * _SCAN_ROW.itemsize
    with psycopg.connect(_conninfo(settings)) as conn, conn.cursor() as cur:
        sql = "COPY (SELECT ctid, embedding FROM documents WHERE NOT deleted) TO STDOUT (FORMAT binary)"
        with cur.copy(sql) as copy:
            for data in copy:
                pending += data
                if not header_seen and len(pending) >= _COPY_HEADER:
                    assert pending[:11] == b"PGCOPY\n\xff\r\n\x00", "not a binary COPY stream"
                    del pending[:_COPY_HEADER]
                    header_seen = True
                if header_seen and len(pending) >= step:
                    fold(np.frombuffer(bytes(pending[:step]), dtype=_SCAN_ROW))
                    del pending[:step]
    assert pending[-2:] == b"\xff\xff", "the COPY stream did not end with its trailer"
    rest = np.frombuffer(bytes(pending[:-2]), dtype=_SCAN_ROW)
    if len(rest):
        fold(rest)
    tops = []
    for column in range(len(queries)):
        tops.append(
            {
                f"({int(t) >> 16},{int(t) & 0xFFFF})": float(d)
                for t, d in zip(best_tid[:, column], best_d[:, column], strict=True)
                if np.isfinite(d)
            }
        )
    return tops, time.perf_counter() - began


def recall_at_10(settings, queries: list[np.ndarray]) -> dict:
    """Mean overlap of the HNSW top 10 (the API's search settings) with the exact top 10, and the HNSW queries'
    latency. The variants of one real document lie at almost the same distance from a query near it, so which ten of
    them are "the" exact top 10 is close to a tie; ``recall_at_10_by_distance`` also counts a hit as found when it is
    no farther than the exact tenth (what a user sees: results as near as the best ones)."""
    approximate_ms, found_all = [], []
    with psycopg.connect(
        _conninfo(settings), autocommit=True, prepare_threshold=None, options=SEARCH_CONNECT_OPTIONS
    ) as conn:
        for query in queries:
            began = time.perf_counter()
            found_all.append(dict(conn.execute(VECTOR_QUERY, {"q": _vector_literal(query)}).fetchall()))
            approximate_ms.append((time.perf_counter() - began) * 1000)
        ef_search = conn.execute("SHOW hnsw.ef_search").fetchone()[0]
    exact_all, scan_s = exact_top10(settings, queries)
    overlaps, by_distance = [], []
    for found, exact in zip(found_all, exact_all, strict=True):
        overlaps.append(len(found.keys() & exact.keys()) / max(1, len(exact)))
        tenth = max(exact.values(), default=0.0) + 2e-5  # float32 sums in another order than pgvector's
        by_distance.append(min(1.0, sum(1 for d in found.values() if d <= tenth) / max(1, len(exact))))
    return {
        "queries": len(queries),
        "recall_at_10": round(statistics.fmean(overlaps), 4),
        "recall_min": round(min(overlaps), 2),
        "recall_at_10_by_distance": round(statistics.fmean(by_distance), 4),
        "recall_by_distance_min": round(min(by_distance), 2),
        "hnsw_ef_search": int(ef_search),
        "hnsw_query_ms": _summary_ms(approximate_ms),
        "exact_scan_s": round(scan_s, 1),
    }


def search_load(settings, clients: int, warmup_s: float, seconds: float, pids: dict[str, int]) -> dict:
    """/search per mode at 1 and ``clients`` clients (client-side latency, ms)."""
    out = {}
    for mode in ("hybrid", "vector", "keyword"):

        def body(i: int, mode: str = mode) -> dict:
            return {"query": QUESTIONS[i % len(QUESTIONS)], "top_k": 10, "mode": mode}

        for n in (1, clients):
            result, _, _, _ = run_phase(settings.api_url, "/search", body, n, warmup_s, seconds, lambda data: {}, pids)
            out[f"{mode}_{n}_clients"] = {
                "requests": result["requests"],
                "errors": result["errors"],
                "latency_ms": result["latency_ms"],
            }
    return out


def index_while_searching(settings, clients: int, seconds: float, seed: int, pids: dict[str, int]) -> dict:
    """New real documents indexed (embedded and written) for ``seconds`` while ``clients`` clients search."""
    docs = gold_documents(20_000, texts="synthetic")
    random.Random(seed).shuffle(docs)
    for n, doc in enumerate(docs):  # not yet in the table: the corpus' real documents are the first ones
        doc["doc_id"] = f"{doc['doc_id']}:scale{n}"
    index = DocumentIndex(settings.app_database_url, get_embedder())
    indexed = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal indexed
        for start in range(0, len(docs), 32):
            if stop.is_set():
                return
            indexed += index.index(docs[start : start + 32]).upserted

    thread = threading.Thread(target=writer, daemon=True)
    began = time.perf_counter()
    thread.start()

    def body(i: int) -> dict:
        return {"query": QUESTIONS[i % len(QUESTIONS)], "top_k": 10, "mode": "hybrid"}

    result, _, _, _ = run_phase(settings.api_url, "/search", body, clients, 0.0, seconds, lambda data: {}, pids)
    stop.set()
    thread.join()
    elapsed = time.perf_counter() - began
    index.engine.dispose()
    return {
        "documents_indexed": indexed,
        "documents_per_s": round(indexed / elapsed, 1),
        "hybrid_search_latency_ms": result["latency_ms"],
        "search_errors": result["errors"],
    }


def footprint(settings, pids: dict[str, int], documents: int) -> dict:
    with psycopg.connect(_conninfo(settings)) as conn:
        table, indexes = conn.execute("SELECT pg_table_size('documents'), pg_indexes_size('documents')").fetchone()
        database = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    pss = {name: round(usage(_tree(pid))["pss_mib"]) for name, pid in pids.items()}
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pids['api']}/status").read_text().splitlines() if ":" in line
    )
    keyword_dir = settings.keyword_index_path
    return {
        "pss_mib": pss,
        # The API's own memory (heap, model) apart from the file pages it maps (the keyword index' segments).
        "api_rss_anon_mib": round(int(status["RssAnon"].split()[0]) / 1024),
        "api_rss_file_mib": round(int(status["RssFile"].split()[0]) / 1024),
        "keyword_index_disk_mib": round(sum(f.stat().st_size for f in keyword_dir.rglob("*") if f.is_file()) / 2**20),
        "table_mib": round(table / 2**20),
        "indexes_mib": round(indexes / 2**20),
        "database_mib": round(database / 2**20),
        "database_mib_per_million": round(database / 2**20 / (documents / 1e6)),
    }


def _transactions_begun_before(admin: psycopg.Connection, when: datetime) -> int:
    """Other sessions whose transaction began before ``when`` (their snapshots may predate what committed since)."""
    return admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND xact_start < %s", (when,)
    ).fetchone()[0]


def _dead_tuples(admin: psycopg.Connection) -> int:
    return admin.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'documents'").fetchone()[0]


def prune_and_vacuum(settings, vacuum_timeout_s: float) -> dict:
    """The oldest of the corpus' seven days deleted as `streamrag`'s schedule deletes it (one statement; the removal
    log's trigger included), then VACUUM once no transaction older than the delete remains: a VACUUM decides what it
    may remove at its start, from the oldest snapshot still held, and one started the instant the delete committed,
    with searches in flight, removed none of 1.5M rows at 10M (benchmarks/RESULTS.md). The dead tuples before and
    after say whether it did; a VACUUM still running after ``vacuum_timeout_s`` is cancelled and said so."""
    timings: dict = {}
    began = time.perf_counter()
    timings["rows_deleted"] = prune(settings.app_database_url, older_than_days=6)
    timings["delete_s"] = round(time.perf_counter() - began, 1)
    deleted_at = datetime.now(UTC)
    # As the superuser: pg_stat_activity shows it every role's transactions.
    with admin_connect(settings, settings.postgres_db) as admin:
        began = time.perf_counter()
        while _transactions_begun_before(admin, deleted_at) and time.perf_counter() - began < 600:
            time.sleep(0.05)
        timings["older_transactions_wait_s"] = round(time.perf_counter() - began, 2)
        timings["dead_tuples_before"] = _dead_tuples(admin)
        admin.execute(f"SET statement_timeout = {int(vacuum_timeout_s * 1000)}")
        began = time.perf_counter()
        try:
            admin.execute("VACUUM documents")
            timings["vacuum_s"] = round(time.perf_counter() - began, 1)
        except psycopg.errors.QueryCanceled:
            timings["vacuum_s"] = None
            timings["vacuum_cancelled_after_s"] = round(time.perf_counter() - began, 1)
        timings["dead_tuples_after"] = _dead_tuples(admin)
    return timings


def retention_day(settings, clients: int, pids: dict[str, int], vacuum_timeout_s: float) -> dict:
    """The daily retention prune at this size and its VACUUM (`prune_and_vacuum`) while ``clients`` run hybrid
    /search; its time, the rows, and the search latency meanwhile. Rows are gone afterwards: run last."""
    done = threading.Event()
    timings: dict = {}

    def prune_then_vacuum() -> None:
        try:
            timings.update(prune_and_vacuum(settings, vacuum_timeout_s))
        finally:
            done.set()

    def body(i: int) -> dict:
        return {"query": QUESTIONS[i % len(QUESTIONS)], "top_k": 10, "mode": "hybrid"}

    worker = threading.Thread(target=prune_then_vacuum)
    began = time.perf_counter()
    worker.start()
    windows = []  # hybrid /search in 5-s windows until the prune and its VACUUM are done
    while not done.is_set():
        result, _, _, _ = run_phase(settings.api_url, "/search", body, clients, 0.0, 5.0, lambda data: {}, pids)
        windows.append({k: result["latency_ms"].get(k) for k in ("p50", "p95")} | {"requests": result["requests"]})
    worker.join()
    return {**timings, "total_s": round(time.perf_counter() - began, 1), "hybrid_search_ms_per_5s": windows}


@contextlib.contextmanager
def api_on(settings, documents: int) -> Iterator[tuple]:
    """The API as `up` runs it, on ``settings``' Postgres, for the block; yields it, the seconds it took to be ready
    and those until its keyword index held ``documents`` documents."""
    api = api_process(settings)
    api.env = {**settings.to_env(), **api.env}
    began = time.perf_counter()
    api.start()
    try:
        api.wait_ready(600)
        ready_s = round(time.perf_counter() - began, 1)
        yield api, ready_s, _keyword_index_ready(settings, documents, began, timeout_s=3600)
    finally:
        api.stop()


def measure(settings, stack: EmbeddedStack, size: int, args) -> dict:
    corpus = build_corpus(
        settings, size, args.real_docs, args.noise, args.seed, kind=args.variants, build_memory=args.build_memory
    )
    result: dict = {"size": size, "corpus": corpus}
    print(json.dumps(result), flush=True)
    with api_on(settings, size) as (api, ready_s, keyword_s):
        result |= {"api_start_s": ready_s, "keyword_index_ready_s": keyword_s}
        pids = {"api": api.proc.pid, "postgres": stack.postgres.proc.pid}
        result["recall"] = recall_at_10(settings, query_vectors(settings, args.recall_queries, args.noise, args.seed))
        print(json.dumps({"recall": result["recall"]}), flush=True)
        result["search"] = search_load(settings, args.clients, args.warmup, args.seconds, pids)
        print(json.dumps({"search": result["search"]}), flush=True)
        result["indexing_while_searching"] = index_while_searching(
            settings, args.clients, args.insert_seconds, args.seed, pids
        )
        result["footprint"] = footprint(settings, pids, size)
        if size == max(args.sizes):
            result["retention_day"] = retention_day(settings, args.clients, pids, args.vacuum_timeout)
            print(json.dumps({"retention_day": result["retention_day"]}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 10_000_000])
    parser.add_argument("--real-docs", type=int, default=5000, help="Documents embedded with the real model.")
    parser.add_argument("--noise", type=float, default=0.015, help="Per-dimension sigma of a variant's vector noise.")
    parser.add_argument(
        "--variants",
        choices=VARIANT_KINDS,
        default="blends",
        help="How variants' vectors are made: blends of two real documents (default) or copies of one (tight clouds).",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30, help="Measured seconds per mode and client count.")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument("--insert-seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--vacuum-timeout",
        type=float,
        default=3600,
        help="Seconds the retention phase's VACUUM may run before it is cancelled (and reported unfinished).",
    )
    parser.add_argument(
        "--build-memory",
        type=float,
        default=BUILD_MEMORY_FRACTION,
        help="At most this fraction of the machine's free memory for the HNSW build (maintenance_work_mem); the "
        "result says whether the graph fit in it.",
    )
    parser.add_argument("--keep-state", action="store_true")
    parser.add_argument(
        "--home",
        type=Path,
        help="Grow the documents table a --keep-state run left there (its path, as printed) instead of a fresh one; "
        "the state is kept. The same --seed, --real-docs, --noise and --variants as the run that made it.",
    )
    args = parser.parse_args()
    home = args.home or scratch_dir("streamrag-scale-")
    args.keep_state = args.keep_state or args.home is not None
    settings = isolated_settings(home / ".streamrag")
    stack = EmbeddedStack(settings)
    cpu = "AVX-512" if "avx512f" in Path("/proc/cpuinfo").read_text() else "AVX2"
    results: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu, "args": vars(args)}
    try:
        stack.start(stack.postgres)  # the API needs Postgres only
        results["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
        results["sizes"] = []
        for size in sorted(args.sizes):
            results["sizes"].append(measure(settings, stack, size, args))
            print(json.dumps(results["sizes"][-1]), flush=True)
        results["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(results, indent=1, ensure_ascii=False, default=str))  # --home is a path
    finally:
        stack.stop_all()
        release(home, keep=args.keep_state)


if __name__ == "__main__":
    main()
