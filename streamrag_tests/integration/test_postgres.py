"""The embedded Postgres has pgvector, answers HNSW cosine queries, and keeps data across a restart."""

from __future__ import annotations

import pytest

from streamrag_assets.runtime.postgres import admin_connect

pytestmark = pytest.mark.integration

VECTORS = {
    "north": [0.0, 1.0, 0.0],
    "north-east": [0.7, 0.7, 0.0],
    "east": [1.0, 0.0, 0.0],
    "south": [0.0, -1.0, 0.0],
    "up": [0.0, 0.0, 1.0],
}


def test_hnsw_cosine_neighbours_survive_restart(stack) -> None:
    db = stack.settings.postgres_db
    with admin_connect(stack.settings, db) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("DROP TABLE IF EXISTS compass")
        conn.execute("CREATE TABLE compass (name text PRIMARY KEY, embedding vector(3))")
        for name, vec in VECTORS.items():
            conn.execute("INSERT INTO compass VALUES (%s, %s::vector)", (name, str(vec)))
        conn.execute("CREATE INDEX ON compass USING hnsw (embedding vector_cosine_ops)")

    def neighbours() -> list[str]:
        with admin_connect(stack.settings, db) as conn:
            conn.execute("SET enable_seqscan = off")  # make the planner use the HNSW index
            plan = " ".join(
                r[0]
                for r in conn.execute("EXPLAIN SELECT name FROM compass ORDER BY embedding <=> '[0.1, 0.9, 0]' LIMIT 3")
            )
            assert "compass_embedding_idx" in plan
            rows = conn.execute("SELECT name FROM compass ORDER BY embedding <=> '[0.1, 0.9, 0]' LIMIT 3")
            return [r[0] for r in rows]

    assert neighbours() == ["north", "north-east", "east"]

    stack.postgres.stop()
    stack.start(stack.postgres)
    assert neighbours() == ["north", "north-east", "east"]
