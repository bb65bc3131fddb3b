"""Benchmark: the vector index stage (issue #5).

    .venv/bin/python -m benchmarks.index_freshness --docs 1500 --rate 50 --seconds 120

In one run, on an embedded broker, object store and Postgres:
1. throughput: the raw model (`Embedder.embed`) vs. the whole index stage (`DocumentIndex.index`: hash
   lookup, embed, upsert in one transaction) on the same Gold documents, in micro-batches of ``--stage-batch``
   documents, into an emptied table, ``--rounds`` times in turn (the median ratio is reported): by default the
   replayed recording's documents, which the freshness run indexes (``--texts synthetic``: generated ones; both
   average ~55 model tokens);
2. freshness: `streamrag ingest --source recording --rate R` and `streamrag stream` (continuous) run as `up` runs them;
   the producer starts once the stream's query has run its first trigger (a sustained rate; ``--cold-start`` starts
   both at once, and the first minutes then include the events that waited for Spark to start); Postgres is polled
   every 50 ms for documents committed since the last poll, and each document's ingested -> searchable delay is the
   time it was first seen minus its `ingested_at` (the producer's timestamp). Searchable means committed and visible
   to a vector query (the API's /search reads the same table).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from streamrag_assets.credentials import OWNER_ROLE
from streamrag_assets.documents.migrate import upgrade
from streamrag_assets.documents.queries import document_count
from streamrag_assets.documents.store import DocumentIndex
from streamrag_assets.embedding.embedder import get_embedder
from streamrag_assets.runtime.ingest import ingest_process
from streamrag_assets.runtime.postgres import admin_connect
from streamrag_assets.runtime.stream import stream_process
from streamrag_assets.runtime.supervisor import migrate_documents
from streamrag_assets.streaming.pipeline import tables
from streamrag_tests.harness import (
    EmbeddedStack,
    gold_documents,
    isolated_settings,
    release,
    running,
    scratch_dir,
    stream_triggers,
)


def throughput(settings, count: int, stage_batch: int, texts: str, rounds: int) -> dict:
    """Raw model vs. whole stage on the same documents, ``rounds`` times in turn (each stage round into an emptied
    table): on a shared two-core machine one pair of two-second windows moves by ±15%, so the ratio reported is the
    median of the rounds' ratios."""
    with admin_connect(settings) as conn:
        conn.execute(f"CREATE DATABASE bench_index OWNER {OWNER_ROLE}")
    url = settings.app_database_url.rsplit("/", 1)[0] + "/bench_index"
    upgrade(url)
    embedder = get_embedder()
    docs = gold_documents(count, texts)
    embedder.embed([d["text"] for d in docs[:64]])  # load and warm the model
    index = DocumentIndex(url, embedder)
    raws, stages = [], []
    for _ in range(rounds):
        began = time.perf_counter()
        embedder.embed([d["text"] for d in docs])
        raws.append(len(docs) / (time.perf_counter() - began))
        with index.engine.begin() as conn:
            conn.execute(text("TRUNCATE documents"))
        began = time.perf_counter()
        for start in range(0, len(docs), stage_batch):
            index.index(docs[start : start + stage_batch])
        stages.append(len(docs) / (time.perf_counter() - began))
        with index.engine.connect() as conn:
            stored = document_count(conn)
        assert stored == len(docs), f"{stored} of {len(docs)} stored"
    index.engine.dispose()
    ratios = [stage / raw for raw, stage in zip(raws, stages, strict=True)]
    return {
        "docs": len(docs),
        "rounds": rounds,
        "raw_docs_per_s": round(statistics.median(raws), 1),
        "stage_docs_per_s": round(statistics.median(stages), 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_by_round": [round(r, 3) for r in ratios],
        "stage_batch": stage_batch,
        "texts": texts,
    }


def freshness(settings, seconds: float, warmup_s: float, cold_start: bool) -> dict:
    migrate_documents(settings)
    engine = create_engine(settings.app_database_url)
    ingest, stream = ingest_process(settings), stream_process(settings)
    processes = [ingest, stream]
    query_ready_s = None
    delays: list[float] = []
    by_minute: dict[int, list[float]] = {}  # a sustained rate shows no drift from one minute to the next
    measured: dict[tuple[int, int], tuple[datetime, datetime]] = {}
    seen: set[str] = set()
    try:
        with ExitStack() as running_processes:
            if cold_start:  # as `up` starts them: events arrive while Spark starts, and wait for it
                running_processes.enter_context(running(settings, processes, timeout_s=180))
            else:  # a sustained rate: the producer starts once the continuous query runs
                began = time.monotonic()
                running_processes.enter_context(running(settings, [stream], timeout_s=180))
                _wait_for_query(settings)
                query_ready_s = round(time.monotonic() - began, 1)
                running_processes.enter_context(running(settings, [ingest], timeout_s=180))
            deadline = time.monotonic() + 300
            with engine.connect() as conn:
                while not document_count(conn):
                    assert time.monotonic() < deadline, "no document became searchable within 300 s"
                    time.sleep(0.5)
                    conn.rollback()
            started = time.monotonic()
            measuring_from = None
            stages_before = None
            previous = None  # the snapshot taken before the last poll: rows it saw are not fetched again
            with engine.connect() as conn:
                while time.monotonic() - started < warmup_s + seconds:
                    snapshot = conn.execute(text("SELECT pg_current_snapshot()::text")).scalar()
                    conn.commit()
                    # Only rows committed since the previous snapshot cross the wire: at 50 docs/s the whole
                    # window is ~3,000 rows, and fetching them 20 times a second took a sixth of a core.
                    rows = conn.execute(
                        text(
                            'SELECT doc_id, ingested_at, "partition", "offset" FROM documents '
                            "WHERE indexed_at > now() - interval '60 seconds' AND (CAST(:previous AS pg_snapshot) "
                            "IS NULL OR NOT pg_visible_in_snapshot(xmin::text::xid8, CAST(:previous AS pg_snapshot)))"
                        ),
                        {"previous": previous},
                    ).all()
                    conn.rollback()  # a fresh snapshot each poll
                    previous = snapshot
                    now = datetime.now(UTC)
                    if measuring_from is None and time.monotonic() - started >= warmup_s:
                        measuring_from = now
                        stages_before = _stage_sums(settings)
                    for doc_id, ingested_at, partition, offset in rows:
                        if doc_id in seen:
                            continue
                        seen.add(doc_id)
                        if measuring_from is not None and ingested_at is not None and ingested_at >= measuring_from:
                            delays.append((now - ingested_at).total_seconds())
                            measured[(partition, offset)] = (ingested_at, now)
                            minute = int((ingested_at - measuring_from).total_seconds() // 60)
                            by_minute.setdefault(minute, []).append(delays[-1])
                    time.sleep(0.05)
            rss = {p.name: _rss_mib(p) for p in processes}
            stages = _stage_means(stages_before, _stage_sums(settings))
            split = _split_at_batch_start(settings, measured)
    finally:
        engine.dispose()
    delays.sort()
    return {
        "cold_start": cold_start,
        "stream_query_ready_s": query_ready_s,
        "docs_measured": len(delays),
        "docs_per_s": round(len(delays) / seconds, 1),
        "p50_s": round(statistics.median(delays), 3),
        "p95_s": round(delays[int(0.95 * (len(delays) - 1))], 3),
        "p99_s": round(delays[int(0.99 * (len(delays) - 1))], 3),
        "max_s": round(delays[-1], 3),
        "rss_mib": rss,
        "split_at_batch_start": split,
        "p50_p95_by_minute_s": [
            [round(statistics.median(v), 2), round(sorted(v)[int(0.95 * (len(v) - 1))], 2)]
            for _, v in sorted(by_minute.items())
        ],
        "stream_stages": stages,
    }


def _wait_for_query(settings, timeout_s: float = 300) -> None:
    """Until Spark has finished the continuous query's first trigger (its first read of the topic's offsets, seconds
    on a cold JVM): with events or idle, the query then runs."""
    deadline = time.monotonic() + timeout_s
    while not stream_triggers(settings):
        assert time.monotonic() < deadline, f"the streaming query was not running within {timeout_s:.0f} s"
        time.sleep(0.5)


def _split_at_batch_start(settings, measured: dict[tuple[int, int], tuple[datetime, datetime]]) -> dict:
    """Each measured document's delay cut in two at its micro-batch's start (Bronze's ``written_at`` is Spark's
    batch timestamp): waiting to be picked up by a batch, then the batch and the index until searchable."""
    bronze = tables(settings).read("bronze", ["partition", "offset", "written_at"])
    started = {
        (p, o): w
        for p, o, w in zip(*(bronze[c].to_pylist() for c in ("partition", "offset", "written_at")), strict=True)
    }
    waiting, processing = [], []
    for key, (ingested_at, seen_at) in measured.items():
        batch_start = started.get(key)
        if batch_start is not None:
            batch_start = batch_start if batch_start.tzinfo else batch_start.replace(tzinfo=UTC)
            waiting.append((batch_start - ingested_at).total_seconds())
            processing.append((seen_at - batch_start).total_seconds())
    if not waiting:
        return {}
    return {
        "docs": len(waiting),
        "ingested_to_batch_start_p50_s": round(statistics.median(waiting), 3),
        "batch_start_to_searchable_p50_s": round(statistics.median(processing), 3),
    }


# Where a document's time goes: the producer's round trip, Spark's trigger phases, our foreachBatch stages, and the
# index's embedding and database parts.
STAGE_HISTOGRAMS = {
    "ingest": ("streamrag_ingest_produce_latency_seconds",),
    "stream": (
        "streamrag_stream_trigger_phase_seconds",
        "streamrag_stream_batch_duration_seconds",
        "streamrag_index_embed_duration_seconds",
        "streamrag_index_db_duration_seconds",
    ),
}


def _stage_sums(settings) -> dict[tuple[str, str], list[float]]:
    """[sum, count] of each stage histogram of the ingest and stream processes."""
    ports = {"ingest": settings.ingest_metrics_port, "stream": settings.stream_metrics_port}
    sums: dict[tuple[str, str], list[float]] = {}
    for process, names in STAGE_HISTOGRAMS.items():
        body = httpx.get(f"http://127.0.0.1:{ports[process]}/metrics", timeout=5).text
        for family in text_string_to_metric_families(body):
            if family.name not in names:
                continue
            short = family.name.removeprefix("streamrag_").removesuffix("_seconds")
            for sample in family.samples:
                kind = sample.name.rsplit("_", 1)[-1]
                if kind in ("sum", "count"):
                    key = (short, next(iter(sample.labels.values()), "all"))
                    sums.setdefault(key, [0.0, 0.0])[kind == "count"] = sample.value
    return sums


def _stage_means(before, after) -> dict[str, dict[str, float]]:
    """Mean seconds and count per stage over the measured window, e.g. ``"0.176 s x 53"``."""
    means: dict[str, dict[str, str]] = {}
    for (family, stage), (total, count) in sorted(after.items()):
        total0, count0 = (before or {}).get((family, stage), (0.0, 0.0))
        if count > count0:
            n = int(count - count0)
            means.setdefault(family, {})[stage] = f"{(total - total0) / n:.3f} s x {n}"
    return means


def _rss_mib(proc) -> int:
    try:
        root = psutil.Process(proc.proc.pid)
        return int(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20)
    except psutil.Error:
        return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1500, help="Documents for the throughput comparison.")
    parser.add_argument(
        "--texts",
        choices=["recording", "synthetic"],
        default="recording",
        help="Documents for the throughput comparison.",
    )
    parser.add_argument("--stage-batch", type=int, default=64, help="Documents per index transaction.")
    parser.add_argument("--rounds", type=int, default=5, help="Raw/stage throughput pairs (the median ratio counts).")
    parser.add_argument("--rate", type=float, default=50, help="Replay rate (events/s) for the freshness run.")
    parser.add_argument("--seconds", type=float, default=120, help="Measured seconds of the freshness run.")
    parser.add_argument("--warmup", type=float, default=20, help="Seconds ignored after the first document.")
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="Start the producer with the stream, as `up` does (its first minutes then work off the events that "
        "arrived while Spark started); by default the producer starts once the continuous query runs.",
    )
    parser.add_argument("--keep-logs", type=Path, help="Copy the processes' logs here before the stack is removed.")
    args = parser.parse_args()
    home = scratch_dir("streamrag-bench-")
    settings = isolated_settings(home / ".streamrag", ingest_source="recording", ingest_rate=args.rate)
    stack = EmbeddedStack(settings)
    try:
        stack.start_all()
        result = {"throughput": throughput(settings, args.docs, args.stage_batch, args.texts, args.rounds)}
        print(json.dumps(result), flush=True)
        result["freshness"] = freshness(settings, args.seconds, args.warmup, args.cold_start) | {"rate": args.rate}
        result["load_avg"] = [round(x, 2) for x in psutil.getloadavg()]
        print(json.dumps(result, indent=2))
    finally:
        stack.stop_all()
        if args.keep_logs:
            shutil.copytree(settings.state_dir / "logs", args.keep_logs, dirs_exist_ok=True)
        release(home)


if __name__ == "__main__":
    main()
