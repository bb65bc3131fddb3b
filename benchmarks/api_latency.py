"""Benchmark: /search and /answer latency on 100,000 documents under 8 concurrent clients (issue #7).

    make bench-api      # or: PYTHONPATH=. .venv/bin/python -m benchmarks.api_latency --docs 100000 --clients 8

In one run, on an embedded Postgres (pgvector) and the API as `up` runs it (`api_process`, one uvicorn process):
1. corpus: ``--real-docs`` synthetic Gold documents (the refine path's `document()` on synthetic events, event times
   spread over the last 7 days) are embedded with the real model and written by `DocumentIndex.index` in batches of
   64; the table is then filled to ``--docs`` rows with variants of them (distinct doc_id, event_id, title, sizes,
   time and text; vector = normalise(original vector + N(0, ``--noise``) per dimension)) written with COPY. The HNSW
   index of the migration is dropped for the bulk load and re-created from its own definition (pg_indexes), then
   VACUUM ANALYZE; EXPLAIN checks that the vector query uses it.
2. load: ``--clients`` closed-loop clients (wrk connections by default, `make bench-api` installs wrk; or, with
   ``--load-generator httpx``, threads with one httpx.Client each; no think time) send questions from a fixed list
   of 50 (a quarter of the requests carry one filter: lang, wiki, type, exclude_bots or the last 24 h) for
   ``--warmup`` s (not measured), then ``--seconds`` s measured, per endpoint: /search hybrid, vector, keyword, and
   /answer (extractive); the load starts once the API's keyword index holds the whole table. Latency is measured
   client-side per request (requests started inside the window).
   The API's own Prometheus histograms (query embedding, database time) are read before and after each window.
3. profile: /answer with "debug": true, first one client (service time without queueing), then all clients, and the
   server's timings_ms (embed / search / llm / total) are summarised; /search with one client per mode; then, with
   the API idle, each question once per mode through the API's `Searcher` (retrieval time alone), with the keyword
   index and with Postgres' full text instead; the index's build time; the share of the table each question's words
   match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import psutil
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text

from benchmarks.cpu import busy_cpu_seconds, cpu_seconds
from streamrag_api.keyword import KeywordIndex
from streamrag_api.schemas import SearchRequest
from streamrag_api.search import Searcher, Timings, query_terms, search_engine
from streamrag_assets.documents.migrate import upgrade
from streamrag_assets.documents.models import Document
from streamrag_assets.documents.queries import document_count
from streamrag_assets.documents.store import DOCUMENT_FIELDS, DocumentIndex
from streamrag_assets.embedding.embedder import get_embedder
from streamrag_assets.runtime.api import api_process
from streamrag_tests.harness import EmbeddedStack, gold_documents, isolated_settings, release, scratch_dir

TARGETS_MS = {"search_p95": 50, "search_p99": 100, "answer_p95": 100}

QUESTIONS = [
    "Who edited the Solar eclipse article recently?",
    "What changed on the Berlin page on dewiki?",
    "Which bot reverted vandalism on Tokyo Tower?",
    "Was the Ada Lovelace article edited today?",
    "Which pages had population figures updated from the 2020 census?",
    "Who created new pages on frwiki this week?",
    "Which pages did ClueBot NG revert?",
    "What did InternetArchiveBot change on enwiki?",
    "Edits to Mount Everest that added citations",
    "Which pages were deleted on zhwiki?",
    "Recent edits by Alice",
    "What happened to the Naive Bayes classifier article?",
    "Largest edits to the Zürich page",
    "Has anyone fixed a typo in the History section of Łódź?",
    "Changes to Category:Living people",
    "Who edited File:Sunset.jpg on Commons?",
    "Edits to Q42 on Wikidata",
    "Protection changes on Talk:Climate change",
    "Which pages were moved recently?",
    "Copyedits to the C++ article",
    "Правки статьи Москва",
    "Who edited القاهرة on arwiki?",
    "北京市 edits on zhwiki",
    "Edits to ירושלים on hewiki",
    "What did the anonymous user 203.0.113.7 edit?",
    "Which edits were reverted because of vandalism?",
    "Show me edits that removed content from Berlin",
    "Who restored a deleted page?",
    "New articles created on jawiki",
    "Edits by Bob on the Café au lait page",
    "What was added to the Tokyo Tower article in the last day?",
    "Which wiki had the most edits to Solar eclipse?",
    "Has Mount Everest been vandalised recently?",
    "Did anyone update the census numbers for Moscow?",
    "Edits with an empty edit summary on enwiki",
    "Which pages did Владимир edit?",
    "What did 编辑者 change on zhwiki?",
    "Recent changes to the Emoji test page",
    "Bot edits on wikidatawiki",
    "Who added a citation to the Ada Lovelace article?",
    "Was there an edit war on the Berlin article?",
    "Pages created with the text x",
    "Minor edits to Naïve Bayes classifier on frwiki",
    "What happened on ruwiki today?",
    "Who is editing articles about Jerusalem?",
    "Large additions of more than 1,000 bytes to Zürich",
    "What is the tallest mountain in the world?",
    "How do I bake sourdough bread?",
    "Latest edits to the Solar eclipse article on enwiki",
    "Which user reverted edits by 203.0.113.7?",
]


# --- corpus ---------------------------------------------------------------------------------------------------------
_WHEN = re.compile(r" at \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC\.")
_SIZE = re.compile(r"\(([+-][\d,]+) bytes, now ([\d,]+) bytes\)")
_SUFFIX = re.compile(r" \(\d+\)$")
_COPY_COLUMNS = ("doc_id", "embedding", *DOCUMENT_FIELDS, "model_name", "indexed_at")


def _retimed(text_: str, when: datetime) -> str:
    return _WHEN.sub(when.strftime(" at %Y-%m-%d %H:%M UTC."), text_, count=1)


def _variant(base: dict, n: int, rng: random.Random, now: datetime) -> dict:
    """A distinct document like ``base``: another page of the same kind, another size, another time."""
    title = f"{_SUFFIX.sub('', base['title'])} ({n})"
    when = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
    body = base["text"].replace(f'"{base["title"]}"', f'"{title}"', 1)
    body = _retimed(body, when)
    if _SIZE.search(body):
        size = rng.randint(100, 200_000)
        delta = rng.randint(-500, 2000)
        body = _SIZE.sub(f"({delta:+,} bytes, now {size:,} bytes)", body, count=1)
    page_url = base["page_url"]
    if page_url and "/wiki/" in page_url:
        page_url = page_url.split("/wiki/", 1)[0] + "/wiki/" + title.replace(" ", "_")
    kind = "log" if base["type"] == "log" else "rev"
    doc_id = f"{base['wiki']}:{kind}:{9_000_000_000 + n}"
    return {
        "doc_id": doc_id,
        "text": body,
        "title": title,
        "page_url": page_url,
        "diff_url": base["diff_url"] and re.sub(r"diff=\d+", f"diff={9_000_000_000 + n}", base["diff_url"]),
        "wiki": base["wiki"],
        "lang": base["lang"],
        "namespace": base["namespace"],
        "type": base["type"],
        "op": base["op"],
        "event_time": when,
        "bot": base["bot"],
        "quality_flags": list(base.get("quality_flags") or []),
        "content_hash": hashlib.sha256(f"{doc_id}\x1f{body}\x1f{title}".encode()).hexdigest(),
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "partition": n % 6,
        "offset": 10_000_000 + n,
        "ingested_at": when + timedelta(seconds=rng.uniform(0.5, 5)),
        "transform_version": base["transform_version"],
    }


def _vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in vector.tolist()) + "]"


VARIANT_KINDS = ("copies", "blends")
GRAPH_BYTES_PER_ROW = 1800  # pgvector's in-memory HNSW element at halfvec(384), m 24: the value and 2m neighbours
BUILD_MEMORY_FRACTION = 0.6  # of the machine's free memory, at most, for the HNSW build (the rest: Postgres' cache)


def _graph_memory_mb(rows: int, fraction: float = BUILD_MEMORY_FRACTION) -> int:
    """Memory for the HNSW build: the whole graph if it fits in ``fraction`` of what the machine has free (pgvector
    builds many times slower once the graph outgrows ``maintenance_work_mem``, and says so only to the client: "hnsw
    graph no longer fits"), and at least the 1 GB the migration uses."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    available_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable"))
    return max(1024, min(int(rows * GRAPH_BYTES_PER_ROW * 1.1) >> 20, int(available_kb * fraction) >> 10))


VARIANT_ID = "doc_id LIKE '%:9_________'"  # `_variant`'s ids (real documents can repeat: the same synthetic text)


def build_corpus(
    settings,
    total: int,
    real: int,
    noise: float,
    seed: int,
    kind: str = "copies",
    build_memory: float = BUILD_MEMORY_FRACTION,
) -> dict:
    """Fill the documents table to ``total`` rows (see the module's doc); a table that already holds some (a
    smaller corpus of the same seed) is grown with further variants, and its HNSW index built again.

    ``kind`` is how a variant's vector is made: ``copies``, the real document's vector plus noise (each real document
    becomes a tight cloud of ``total / real`` near-copies, the harder the more documents); ``blends``, a mix of its
    real document's vector (weight 0.5-1) and another real document's plus the same noise (variants fill the space
    between real documents, as edits that share a title with one page and a summary with another do)."""
    assert kind in VARIANT_KINDS, kind
    url = settings.app_database_url
    upgrade(url)
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        existing, indexed = conn.execute(
            "SELECT count(*), to_regclass('documents_embedding_hnsw') IS NOT NULL FROM documents"
        ).fetchone()
    if existing == total and indexed:  # a kept table already of this size (`--home`): measured as it is
        return {"documents": existing, "reused": True}
    rng = random.Random(seed)
    now = datetime.now(UTC)
    docs = gold_documents(real, texts="synthetic")
    for doc in docs:  # spread over the last 7 days, the text saying the same time as the column
        when = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
        doc["event_time"] = when
        doc["ingested_at"] = when + timedelta(seconds=rng.uniform(0.5, 5))
        doc["text"] = _retimed(doc["text"], when)
    embedder = get_embedder()
    embedder.embed(["warm-up"])
    index = DocumentIndex(url, embedder)
    began = time.perf_counter()
    for start in range(0, len(docs), 64):
        index.index(docs[start : start + 64])
    embed_s = time.perf_counter() - began
    with index.engine.connect() as conn:
        stored = {
            doc_id: np.asarray(vector, dtype=np.float64)
            # the real documents' rows only: a grown table holds millions of variants besides them
            for doc_id, vector in conn.execute(
                select(Document.doc_id, Document.embedding).where(Document.doc_id.in_([d["doc_id"] for d in docs]))
            ).all()
        }
        model_name = conn.execute(select(Document.model_name).limit(1)).scalar()
    index.engine.dispose()
    bases = [d for d in docs if d["doc_id"] in stored]
    assert len(bases) == len(docs), f"{len(bases)} of {len(docs)} real documents stored"

    with psycopg.connect(conninfo, autocommit=True) as conn:
        hnsw_def = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'documents' AND indexname = 'documents_embedding_hnsw'"
        ).fetchone()[0]
        conn.execute("DROP INDEX documents_embedding_hnsw")
        existing = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        began = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY documents ({', '.join(map(_quote, _COPY_COLUMNS))}) FROM STDIN") as copy,
        ):
            for i in range(existing - len(bases), total - len(bases)):
                # Each variant draws from generators of its own (seed, number): a grown table holds the rows a fresh
                # one of that size would, never a repeat of an earlier variant's vector (one shared generator,
                # restarted at each growth, made every variant past the first size a copy of one before it).
                base = bases[i % len(bases)]
                row = _variant(base, i, random.Random(f"{seed}:{i}"), now)
                noise_rng = np.random.default_rng((seed, i))
                vector = stored[base["doc_id"]] + noise_rng.normal(0.0, noise, stored[base["doc_id"]].shape)
                if kind == "blends":
                    weight = noise_rng.uniform(0.5, 1.0)
                    other = stored[bases[int(noise_rng.integers(len(bases)))]["doc_id"]]
                    vector = weight * vector + (1 - weight) * other
                vector /= np.linalg.norm(vector)
                row |= {"embedding": _vector_literal(vector), "model_name": model_name, "indexed_at": now}
                copy.write_row([row[c] for c in _COPY_COLUMNS])
        copy_s = time.perf_counter() - began
        build_mb = _graph_memory_mb(total, build_memory)
        conn.execute(f"SET maintenance_work_mem = '{build_mb}MB'")
        notices: list[str] = []  # pgvector says to the client (only) when the graph outgrew that memory
        conn.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
        began = time.perf_counter()
        conn.execute(hnsw_def)
        hnsw_s = time.perf_counter() - began
        began = time.perf_counter()
        conn.execute("VACUUM ANALYZE documents")
        analyze_s = time.perf_counter() - began
        count = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        spread = conn.execute(
            "SELECT count(DISTINCT wiki), count(DISTINCT lang), count(DISTINCT type), avg(bot::int), "
            "min(event_time), max(event_time), pg_size_pretty(pg_total_relation_size('documents')), "
            "pg_size_pretty(pg_relation_size('documents_embedding_hnsw')), "
            f"count(*) FILTER (WHERE {VARIANT_ID}), count(DISTINCT md5(embedding::text)) FILTER (WHERE {VARIANT_ID}) "
            "FROM documents"
        ).fetchone()
        probe = _vector_literal(stored[bases[0]["doc_id"]])
        plan = conn.execute(
            "EXPLAIN SELECT doc_id FROM documents WHERE NOT deleted ORDER BY embedding <=> %s::vector LIMIT 40",
            (probe,),
        ).fetchall()
        filtered_plan = conn.execute(
            "EXPLAIN SELECT doc_id FROM documents WHERE NOT deleted AND lang = ANY(%s) "
            "ORDER BY embedding <=> %s::vector LIMIT 40",
            (["en", "de"], probe),
        ).fetchall()
    uses_hnsw = any("documents_embedding_hnsw" in line[0] for line in plan)
    if not uses_hnsw:  # expected on a small table only: the planner prefers a sequential scan there
        print(f"warning: the vector query does not use the HNSW index on {count} rows", flush=True)
    assert count == total, f"{count} of {total} documents in the table"
    assert spread[8] == spread[9], f"{spread[8] - spread[9]} of {spread[8]} variants repeat another's vector"
    return {
        "documents": count,
        "real_embedded": len(bases),
        "variants": count - len(bases),
        "variant_kind": kind,
        "noise_sigma": noise,
        "embed_and_index_s": round(embed_s, 1),
        "copy_s": round(copy_s, 1),
        "hnsw_build_s": round(hnsw_s, 1),
        "hnsw_build_memory_mb": build_mb,
        "hnsw_graph_fit_in_memory": not any("no longer fits" in notice for notice in notices),
        "hnsw_build_notices": notices,
        "vacuum_analyze_s": round(analyze_s, 1),
        "hnsw_index": hnsw_def,
        "vector_plan_uses_hnsw": uses_hnsw,
        "filtered_vector_plan_uses_hnsw": any("documents_embedding_hnsw" in line[0] for line in filtered_plan),
        "wikis": spread[0],
        "langs": spread[1],
        "types": spread[2],
        "bot_fraction": round(float(spread[3]), 3),
        "event_time_range": [spread[4].isoformat(), spread[5].isoformat()],
        "table_size": spread[6],
        "hnsw_size": spread[7],
    }


def _quote(column: str) -> str:
    return f'"{column}"' if column in ("offset", "partition") else column


# --- load -----------------------------------------------------------------------------------------------------------
def _filters(i: int, now: datetime) -> dict:
    """One request in four carries one filter."""
    choice = i % 20
    if choice == 3:
        return {"lang": ["en", "de"]}
    if choice == 7:
        return {"exclude_bots": True}
    if choice == 11:
        return {"since": (now - timedelta(hours=24)).isoformat()}
    if choice == 15:
        return {"type": ["edit"]}
    if choice == 19:
        return {"wiki": ["enwiki"]}
    return {}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summary_ms(values: list[float]) -> dict:
    if not values:
        return {}
    return {
        "p50": round(_percentile(values, 0.50), 1),
        "p95": round(_percentile(values, 0.95), 1),
        "p99": round(_percentile(values, 0.99), 1),
        "max": round(max(values), 1),
        "mean": round(statistics.fmean(values), 1),
    }


def _scrape(client: httpx.Client) -> dict[str, float]:
    """Sums and counts of the API's embed and database-time histograms."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics/").text):
        if family.name not in ("streamrag_api_embed_duration_seconds", "streamrag_api_search_duration_seconds"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                base, _, kind = sample.name.rpartition("_")
                key = base + (f"[{sample.labels['mode']}]" if "mode" in sample.labels else "") + f"_{kind}"
                out[key] = sample.value
    return out


def _keyword_index_ready(settings, documents: int, since: float, timeout_s: float = 300) -> float:
    """Seconds from the API's start until its keyword index holds every document (the load waits for it)."""
    with httpx.Client(base_url=settings.api_url, timeout=10) as client:
        while time.perf_counter() - since < timeout_s:
            for family in text_string_to_metric_families(client.get("/metrics/").text):
                if family.name == "streamrag_keyword_index_documents" and family.samples[0].value >= documents:
                    return round(time.perf_counter() - since, 1)
            time.sleep(0.5)
    raise TimeoutError(f"the API's keyword index did not reach {documents} documents in {timeout_s} s")


def _server_means(before: dict[str, float], after: dict[str, float], mode: str) -> dict:
    def mean(base: str) -> float | None:
        count = after.get(f"{base}_count", 0) - before.get(f"{base}_count", 0)
        total = after.get(f"{base}_sum", 0) - before.get(f"{base}_sum", 0)
        return round(total / count * 1000, 1) if count else None

    return {
        "embed_mean_ms": mean("streamrag_api_embed_duration_seconds"),
        "db_mean_ms": mean(f"streamrag_api_search_duration_seconds[{mode}]"),
    }


def _own_cpu_seconds() -> float:
    """This process alone (the API and Postgres are its children)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


class _Window:
    """CPU seconds of the API, Postgres, this process and the whole machine across a measured window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = self._sample()

    def _sample(self) -> dict[str, float]:
        out = {name: cpu_seconds([pid]) for name, pid in self.pids.items()}
        out["bench"] = _own_cpu_seconds()
        out["machine"] = busy_cpu_seconds()
        return out

    def close(self, generator_cpu_s: float | None = None) -> dict:
        after = self._sample()
        used = {name: after[name] - self.before[name] for name in after}
        if generator_cpu_s is not None:
            used["load_generator"] = generator_cpu_s
        return {
            "cpu_s": {name: round(value, 1) for name, value in used.items() if name != "machine"},
            "cpu_s_others": round(used["machine"] - sum(v for n, v in used.items() if n != "machine"), 1),
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        }


def run_phase(
    base_url: str,
    path: str,
    make_body,
    clients: int,
    warmup_s: float,
    seconds: float,
    parse,
    pids: dict[str, int],
) -> tuple[dict, list[dict], dict[str, float], dict[str, float]]:
    """``clients`` closed-loop httpx threads; latencies of the requests started in [warm-up end, end)."""
    start = time.monotonic()
    measure_from = start + warmup_s
    end = measure_from + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    extras: list[dict] = []
    errors: dict[str, int] = {}

    def worker(k: int) -> None:
        i = k * 7  # each client starts elsewhere in the question list
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while True:
                began = time.monotonic()
                if began >= end:
                    return
                body = make_body(i)
                i += 1
                try:
                    response = client.post(path, json=body)
                    elapsed = (time.monotonic() - began) * 1000
                    ok = response.status_code == 200
                    reason = None if ok else f"HTTP {response.status_code}"
                    extra = parse(response.json()) if ok else None
                except (httpx.HTTPError, ValueError) as exc:
                    elapsed, ok, reason, extra = (time.monotonic() - began) * 1000, False, type(exc).__name__, None
                if began < measure_from:
                    continue
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        if extra:
                            extras.append(extra)
                    else:
                        errors[reason] = errors.get(reason, 0) + 1

    with httpx.Client(base_url=base_url, timeout=30) as probe:
        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, measure_from - time.monotonic()))
        before = _scrape(probe)
        window = _Window(pids)
        time.sleep(max(0.0, end - time.monotonic()))
        usage = window.close()
        for thread in threads:
            thread.join(60)
        after = _scrape(probe)
    result = {
        "load_generator": "httpx",
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "rps": round(len(latencies) / seconds, 1),
        "latency_ms": _summary_ms(latencies),
        **usage,
    }
    return result, extras, before, after


# wrk's Lua side: requests cycle through BODIES; each response's status, took_ms and hit count are kept per thread
# and gathered by done(), which prints one JSON line.
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counter = 0; took = {}; hits = 0; bad = 0 end
function request()
  counter = counter + 1
  return wrk.format(nil, PATH, nil, BODIES[(counter % #BODIES) + 1])
end
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1; return end
  local t = body:match('"took_ms":%s*([%d.]+)')
  if t then took[#took + 1] = tonumber(t) end
  local _, n = body:gsub('"doc_id":', "")
  hits = hits + n
end
function done(summary, latency, requests)
  local all_took, all_hits, all_bad = {}, 0, 0
  for _, thread in ipairs(threads) do
    for _, t in ipairs(thread:get("took")) do all_took[#all_took + 1] = t end
    all_hits = all_hits + thread:get("hits")
    all_bad = all_bad + thread:get("bad")
  end
  local e = summary.errors
  local parts = {}
  for _, t in ipairs(all_took) do parts[#parts + 1] = string.format("%.2f", t) end
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "non_200": %d, "socket_errors": %d, "hits": %d, '
    .. '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f, "took_ms": [%s]}\\n',
    summary.requests, summary.duration, all_bad, e.connect + e.read + e.write + e.timeout, all_hits,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean,
    table.concat(parts, ",")))
end
"""


def _wrk_script(path: str, bodies: list[str]) -> str:
    def literal(value: str) -> str:
        assert "]==]" not in value
        return f"[==[{value}]==]"

    return (
        f"PATH = {literal(path)}\nBODIES = {{\n" + ",\n".join(literal(body) for body in bodies) + "\n}\n" + _WRK_SCRIPT
    )


def _run_wrk(url: str, script: Path, clients: int, seconds: float) -> tuple[dict, float]:
    """One wrk run (one thread, ``clients`` connections, each a closed loop); its summary and CPU seconds."""
    command = ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(script), url]
    with tempfile.TemporaryFile() as out:
        pid = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT).pid
        _, status, usage = os.wait4(pid, 0)  # its exit status and its own CPU time
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text_out = out.read().decode()
    if code != 0 or "WRK " not in text_out:
        raise RuntimeError(f"wrk failed ({code}): {text_out[-2000:]}")
    summary = json.loads(text_out.split("WRK ", 1)[1].splitlines()[0])
    return summary, usage.ru_utime + usage.ru_stime


def run_wrk_phase(
    base_url: str,
    path: str,
    make_body,
    clients: int,
    warmup_s: float,
    seconds: float,
    pids: dict[str, int],
) -> tuple[dict, list[float], dict[str, float], dict[str, float]]:
    """``clients`` closed-loop connections from wrk (C, one thread): a warm-up run, then the measured run."""
    bodies = [json.dumps(make_body(i)) for i in range(len(QUESTIONS) * 20)]  # every question with every filter
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(base_url=base_url, timeout=30) as probe:
        script = Path(tmp) / "load.lua"
        script.write_text(_wrk_script(path, bodies))
        if warmup_s > 0:
            _run_wrk(base_url, script, clients, warmup_s)
        before = _scrape(probe)
        window = _Window(pids)
        summary, generator_cpu_s = _run_wrk(base_url, script, clients, seconds)
        usage = window.close(generator_cpu_s)
        after = _scrape(probe)
    requests = summary["requests"] - summary["non_200"]
    result = {
        "load_generator": "wrk",
        "requests": requests,
        "errors": summary["non_200"] + summary["socket_errors"],
        "rps": round(summary["requests"] / (summary["duration_us"] / 1e6), 1),
        "latency_ms": {
            "p50": round(summary["p50_us"] / 1000, 1),
            "p95": round(summary["p95_us"] / 1000, 1),
            "p99": round(summary["p99_us"] / 1000, 1),
            "max": round(summary["max_us"] / 1000, 1),
            "mean": round(summary["mean_us"] / 1000, 1),
        },
        "mean_hits": round(summary["hits"] / requests, 1) if requests else None,
        **usage,
    }
    return result, summary["took_ms"], before, after


def load(settings, clients: int, warmup_s: float, seconds: float, pids: dict[str, int], generator: str) -> dict:
    base_url = settings.api_url
    now = datetime.now(UTC)
    results: dict[str, dict] = {}

    def search_body(mode: str):
        return lambda i: {
            "query": QUESTIONS[i % len(QUESTIONS)],
            "top_k": 10,
            "mode": mode,
            "filters": _filters(i, now),
        }

    def search_parse(data: dict) -> dict:
        return {"took_ms": data["took_ms"], "hits": len(data["hits"])}

    for mode in ("hybrid", "vector", "keyword"):
        if generator == "wrk":
            result, took, before, after = run_wrk_phase(
                base_url, "/search", search_body(mode), clients, warmup_s, seconds, pids
            )
        else:
            result, extras, before, after = run_phase(
                base_url, "/search", search_body(mode), clients, warmup_s, seconds, search_parse, pids
            )
            took = [e["took_ms"] for e in extras]
            result["mean_hits"] = round(statistics.fmean(e["hits"] for e in extras), 1) if extras else None
        result["server_took_ms"] = _summary_ms(took)
        result |= _server_means(before, after, mode)
        results[f"search_{mode}"] = result
        print(json.dumps({f"search_{mode}": result}), flush=True)

    def answer_body(debug: bool):
        return lambda i: {
            "query": QUESTIONS[i % len(QUESTIONS)],
            "top_k": 5,
            "filters": _filters(i, now),
            "debug": debug,
        }

    def answer_parse(data: dict) -> dict:
        out = {"cited": len(data["citations"]), "answerer": data["answerer"]}
        if data.get("debug"):
            out |= data["debug"]["timings_ms"]
        return out

    if generator == "wrk":
        result, _, before, after = run_wrk_phase(
            base_url, "/answer", answer_body(False), clients, warmup_s, seconds, pids
        )
        result["mean_citations"] = result.pop("mean_hits")
    else:
        result, extras, before, after = run_phase(
            base_url, "/answer", answer_body(False), clients, warmup_s, seconds, answer_parse, pids
        )
        result["answerers"] = sorted({e["answerer"] for e in extras})
        cited = sum(1 for e in extras if e["cited"])
        result["dont_know_fraction"] = round(1 - cited / len(extras), 3) if extras else None
    result |= _server_means(before, after, "hybrid")
    results["answer"] = result
    print(json.dumps({"answer": result}), flush=True)

    # Where the time goes: the server's own timings, without queueing (1 client) and under load.
    profile = {}
    for label, n, secs in (("1_client", 1, min(seconds, 20.0)), (f"{clients}_clients", clients, min(seconds, 20.0))):
        result, extras, _, _ = run_phase(base_url, "/answer", answer_body(True), n, 3.0, secs, answer_parse, pids)
        profile[label] = {
            "requests": result["requests"],
            "client_latency_ms": result["latency_ms"],
            **{
                f"server_{part}_ms": _summary_ms([e[part] for e in extras])
                for part in ("embed", "search", "llm", "total")
            },
        }
    results["answer_debug_profile"] = profile

    # /search without queueing: one client.
    for mode in ("hybrid", "vector", "keyword"):
        result, extras, _, _ = run_phase(
            base_url, "/search", search_body(mode), 1, 3.0, min(seconds, 20.0), search_parse, pids
        )
        results[f"search_{mode}_1_client"] = {
            "requests": result["requests"],
            "errors": result["errors"],
            "latency_ms": result["latency_ms"],
            "server_took_ms": _summary_ms([e["took_ms"] for e in extras]),
            "cpu_s_others": result["cpu_s_others"],
        }
    return results


def db_profile(settings) -> dict:
    """Each question once per mode through the API's own `Searcher`, one at a time with the API idle: retrieval time
    with the keyword index (as the API serves) and with Postgres' full text (what keyword search falls back to
    until the index is built, or with STREAMRAG_KEYWORD_INDEX=false); how long building the index from the table
    takes; how much of the table each question's words match."""
    engine = search_engine(settings.app_database_url)
    keyword = KeywordIndex(engine)
    began = time.perf_counter()
    keyword.refresh()
    out: dict = {"keyword_index_build_s": round(time.perf_counter() - began, 2)}
    for index in (keyword, None):
        searcher = Searcher(engine, get_embedder(), settings.keyword_rank_window, keyword_index=index)
        for mode in ("vector", "keyword", "hybrid") if index else ("keyword", "hybrid"):
            times = []
            for question in QUESTIONS:
                timings = Timings()
                searcher.search(SearchRequest(query=question, top_k=10, mode=mode), timings)
                times.append(timings.search_ms)
            out[f"{mode}_retrieval_ms_1_client" + ("" if index else "_postgres_full_text")] = _summary_ms(times)
    with engine.connect() as conn:
        total = document_count(conn)
        fractions = []
        for question in QUESTIONS:
            terms = query_terms(question)
            count = (
                conn.execute(
                    text("SELECT count(*) FROM documents WHERE search @@ to_tsquery('simple', :q)"),
                    {"q": " | ".join(terms)},
                ).scalar()
                if terms
                else 0
            )
            fractions.append(count / total)
    engine.dispose()
    out["keyword_match_fraction"] = {
        "p50": round(_percentile(fractions, 0.5), 3),
        "p95": round(_percentile(fractions, 0.95), 3),
        "max": round(max(fractions), 3),
    }
    return out


def _api_log_problems(path: Path) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if "Traceback" in line or "ERROR" in line or "Exception" in line][:20]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000, help="Documents in the table.")
    parser.add_argument("--real-docs", type=int, default=5000, help="Of which embedded with the real model.")
    parser.add_argument("--noise", type=float, default=0.015, help="Per-dimension sigma of a variant's vector noise.")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent closed-loop clients.")
    parser.add_argument("--seconds", type=float, default=60, help="Measured seconds per endpoint.")
    parser.add_argument("--warmup", type=float, default=10, help="Unmeasured seconds before each window.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--load-generator",
        choices=("wrk", "httpx"),
        default="wrk",
        help="wrk (C; Debian package `wrk`, `make bench-api` installs it) or httpx threads in this process, "
        "whose own CPU (~1 ms a request) and GIL waits count in the latency on a small machine.",
    )
    parser.add_argument("--keep-state", action="store_true", help="Keep the state directory (logs, data).")
    args = parser.parse_args()
    if args.load_generator == "wrk" and shutil.which("wrk") is None:
        parser.error("wrk is not installed: `make bench-api`, `apt-get install wrk`, or --load-generator httpx")
    home = scratch_dir("streamrag-bench-")
    settings = isolated_settings(home / ".streamrag")
    stack = EmbeddedStack(settings)
    api = None
    result: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "args": vars(args)}
    try:
        stack.start(stack.postgres)  # the API needs Postgres only; broker and object store stay off
        result["corpus"] = build_corpus(settings, args.docs, args.real_docs, args.noise, args.seed)
        print(json.dumps(result), flush=True)
        api = api_process(settings)
        api.env = {**settings.to_env(), **api.env}
        began = time.perf_counter()
        api.start()
        api.wait_ready(120)
        result["api_start_s"] = round(time.perf_counter() - began, 1)
        result["keyword_index_ready_s"] = _keyword_index_ready(settings, result["corpus"]["documents"], began)
        pids = {"api": api.proc.pid, "postgres": stack.postgres.proc.pid}
        result["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
        result["load"] = load(settings, args.clients, args.warmup, args.seconds, pids, args.load_generator)
        result["api_rss_mb"] = round(psutil.Process(api.proc.pid).memory_info().rss / 2**20)
        result["db_profile"] = db_profile(settings)
        result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        result["api_log_problems"] = _api_log_problems(settings.state_dir / "logs" / "api.log")
        result["date_end"] = datetime.now(UTC).isoformat(timespec="seconds")
        print(json.dumps(result, indent=2, ensure_ascii=False))
    finally:
        if api is not None:
            api.stop()
        stack.stop_all()
        release(home, keep=args.keep_state)


if __name__ == "__main__":
    main()
