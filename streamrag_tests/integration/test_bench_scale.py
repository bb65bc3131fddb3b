"""`make bench-scale`'s recall is only as good as its exact search: the one-read exact top 10 (binary COPY of every
live row's halfvec, distances in numpy) must be what Postgres' own exact search answers, on a real pgvector table."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from benchmarks.api_latency import _vector_literal, build_corpus
from benchmarks.scale import VECTOR_QUERY, _conninfo, exact_top10, prune_and_vacuum, query_vectors, recall_at_10
from streamrag_tests.harness import EmbeddedStack, isolated_settings

pytestmark = pytest.mark.integration


def test_the_one_read_exact_search_answers_as_postgres_exact_search_does(state_home: Path) -> None:
    settings = isolated_settings(state_home)
    stack = EmbeddedStack(settings)
    try:
        stack.start(stack.postgres)
        assert build_corpus(settings, 2000, 200, 0.015, 7, kind="blends")["documents"] == 2000
        # Grown as a kept table is (`--home`): only the real documents' vectors are read back, no variant repeats.
        grown = build_corpus(settings, 3000, 200, 0.015, 7, kind="blends")
        assert grown["documents"] == 3000 and grown["variants"] == 2800, grown
        with psycopg.connect(_conninfo(settings), autocommit=True) as conn:
            # Deleted rows are not searchable: the nearest of them must not appear in the exact answer either.
            conn.execute("UPDATE documents SET deleted = true WHERE doc_id IN (SELECT doc_id FROM documents LIMIT 300)")
        queries = query_vectors(settings, 30, 0.015, 7)
        tops, _ = exact_top10(settings, queries, chunk_rows=700)  # several chunks and a remainder

        with psycopg.connect(_conninfo(settings), autocommit=True, prepare_threshold=None) as conn:
            conn.execute("SET enable_indexscan = off")
            conn.execute("SET enable_bitmapscan = off")
            for query, top in zip(queries, tops, strict=True):
                exact = dict(conn.execute(VECTOR_QUERY, {"q": _vector_literal(query)}).fetchall())
                assert top.keys() == exact.keys()
                assert max(abs(top[tid] - exact[tid]) for tid in exact) < 2e-5

        recall = recall_at_10(settings, queries)
        assert recall["queries"] == 30 and recall["recall_at_10"] >= 0.95, recall
        # A kept table of the size asked for is measured as it is: nothing embedded, copied or rebuilt.
        assert build_corpus(settings, 3000, 200, 0.015, 7, kind="blends") == {"documents": 3000, "reused": True}
    finally:
        stack.stop_all()


def test_the_retention_phase_vacuums_once_older_snapshots_are_gone_and_removes_the_day(state_home: Path) -> None:
    """A search whose snapshot predates the day's delete would keep every deleted row from a VACUUM started at once
    (at 10M one removed none of 1.5M): the phase waits for it, and its VACUUM leaves no dead tuples."""
    settings = isolated_settings(state_home)
    stack = EmbeddedStack(settings)
    try:
        stack.start(stack.postgres)
        build_corpus(settings, 1400, 200, 0.015, 7, kind="blends")
        searching = psycopg.connect(_conninfo(settings))  # a read in flight when the delete commits
        searching.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        searching.execute("SELECT count(*) FROM documents").fetchone()
        threading.Timer(2.0, searching.commit).start()
        began = time.perf_counter()
        timings = prune_and_vacuum(settings, vacuum_timeout_s=300)
        assert timings["rows_deleted"] > 100, timings
        assert timings["vacuum_s"] is not None and timings["dead_tuples_after"] == 0, timings
        assert timings["older_transactions_wait_s"] >= 1.0 and time.perf_counter() - began >= 2.0, timings
        searching.close()
    finally:
        stack.stop_all()
