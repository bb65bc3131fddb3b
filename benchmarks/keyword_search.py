"""What the API's keyword search costs and keeps, on a keyword index an API left on disk (issue 26): HOME is
a `make bench-scale --keep-state` home, or any STREAMRAG_HOME.

    PYTHONPATH=. .venv/bin/python -m benchmarks.keyword_search --index HOME/.streamrag/keyword-index

In this process, without Postgres: `KeywordIndex.search` of this checkout for the questions of
`benchmarks.api_latency`, ``--limit`` hits (hybrid /search asks for 40), each question ``--rounds`` times, its best
time kept; without filters and with a one-day `since` filter. Then what the ranking keeps: the BM25 score of its top
10 under the question's full query (every word, the canary's probes excluded: what the search asked before words
found in most documents were left out), as a share of that query's own top 10 — 1.0 when the two agree, and less by
what the left-out words would have added. Run it from an older checkout to compare (its share is 1.0 by definition).
The index is opened read-only: an API using it may keep running.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import tantivy

from benchmarks.api_latency import QUESTIONS
from streamrag_api import keyword
from streamrag_api.schemas import Filters


def latency(index: keyword.KeywordSearch, filters: Filters, limit: int, rounds: int) -> dict:
    best = {}
    for _ in range(rounds + 1):  # the first round warms the page cache
        for question in QUESTIONS:
            began = time.perf_counter()
            index.search(question, filters, limit)
            elapsed = (time.perf_counter() - began) * 1000
            best[question] = min(best.get(question, elapsed), elapsed)
    ms = sorted(best.values())
    return {
        "p50": round(ms[len(ms) // 2], 2),
        "p95": round(ms[int(len(ms) * 0.95)], 2),
        "max": round(ms[-1], 2),
        "mean": round(statistics.mean(ms), 2),
    }


def score_kept(index: keyword.KeywordSearch) -> dict:
    searcher = index.index.searcher()
    Occur, Query, schema = tantivy.Occur, tantivy.Query, index.schema  # noqa: N806 - tantivy's own names
    shares, fewer = [], 0
    for question in QUESTIONS:
        terms = index.terms(question)
        words = [(Occur.Should, Query.term_query(schema, "body", term, index_option="freq")) for term in terms]
        full = Query.boolean_query(
            [(Occur.Must, Query.boolean_query(words)), (Occur.MustNot, Query.term_query(schema, "probe", True))]
        )
        best = searcher.search(full, 10, count=False).hits if terms else []
        if not best:
            continue
        found = [doc_id for doc_id, _, _ in index.search(question, Filters(), 10)]
        kept = 0.0
        for doc_id in found:
            address = searcher.search(Query.term_query(schema, "doc_id", doc_id), 1, count=False).hits[0][1]
            kept += json.loads(full.explain(searcher, address).to_json())["value"]
        shares.append(kept / sum(score for score, _ in best))
        fewer += len(found) < len(best)
    return {
        "questions": len(shares),
        "mean": round(statistics.mean(shares), 4),
        "worst": round(min(shares), 4),
        "questions_with_fewer_hits": fewer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="A keyword-index directory (under STREAMRAG_HOME).")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    index = keyword.KeywordSearch.on_disk(args.index)
    day_ago = datetime.now(UTC) - timedelta(days=1)
    result = {
        "documents": index.index.searcher().num_docs,
        "no_filter_ms": latency(index, Filters(), args.limit, args.rounds),
        "since_one_day_ms": latency(index, Filters(since=day_ago), args.limit, args.rounds),
        "top10_score_kept": score_kept(index),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
