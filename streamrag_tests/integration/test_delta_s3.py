"""Delta tables on object storage (STREAMRAG_DELTA_URI=s3://…, the embedded SeaweedFS as the S3 server): concurrent
writers lose nothing, the stream, a rebuild and time travel work there as on local disk."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from streamrag_assets.settings import Settings
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_tests.harness import bronze_verdicts, fill_topic, indexed_doc_ids, release, run_cli, separate_platform

pytestmark = pytest.mark.integration

WRITERS, COMMITS = 4, 8


def _write_batches(uri: str, options: dict[str, str], writer: int) -> None:
    """One writer process: COMMITS appends to the `gold` table, each its own idempotent batch."""
    delta = DeltaTables(uri, storage_options=options)
    for batch in range(COMMITS):
        rows = pa.table({"doc_id": [f"w{writer}-b{batch}"], "batch_id": [batch]})
        delta.write_once("gold", _as_gold(rows), f"writer-{writer}", batch)


def _run_writers(uri: str, options: dict[str, str]) -> None:
    """Every writer at once, in processes of their own; a hung or dead one fails the call instead of blocking."""
    with ProcessPoolExecutor(WRITERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(_write_batches, uri, options, writer) for writer in range(WRITERS)]:
            done.result(timeout=180)


def _as_gold(rows: pa.Table) -> pa.Table:
    from streamrag_assets.streaming.transforms import ARROW_SCHEMAS

    schema = ARROW_SCHEMAS["gold"]
    columns = {f.name: rows[f.name] if f.name in rows.column_names else pa.nulls(len(rows), f.type) for f in schema}
    columns["event_date"] = pa.array([datetime.now(UTC).date()] * len(rows))
    return pa.table(columns).cast(schema)


def test_concurrent_writers_on_s3_lose_no_commit_and_write_no_batch_twice(stack) -> None:
    settings = stack.settings.model_copy(update={"delta_uri": f"s3://{stack.settings.s3_bucket}/{uuid.uuid4().hex}"})
    uri, options = settings.delta_location, settings.delta_storage_options()
    DeltaTables(uri, storage_options=options).write_once("gold", _as_gold(pa.table({"doc_id": ["seed"]})), "seed", 0)
    # Separate processes, as the stream and a Dagster run are: each commit is a conditional put, so of two writers
    # taking the same version one fails and retries on top of the other instead of overwriting it.
    # A writer process that dies mid-way (seen once in the full suite: the old Pool then waited forever) is what
    # the replay is for; the replay itself must complete.
    with contextlib.suppress(BrokenProcessPool):
        _run_writers(uri, options)
    _run_writers(uri, options)  # all again: a replay
    delta = DeltaTables(uri, storage_options=options)
    ids = delta.read("gold", ["doc_id"])["doc_id"].to_pylist()
    assert sorted(ids) == sorted(["seed"] + [f"w{w}-b{b}" for w in range(WRITERS) for b in range(COMMITS)])
    assert delta.version("gold") == WRITERS * COMMITS, "one commit per batch, none lost, none repeated"
    assert not (settings.state_dir / "delta").exists()


def test_the_stream_rebuild_and_time_travel_on_s3(stack) -> None:
    settings = separate_platform(stack, "s3", topic_partitions=2)
    # A bucket of its own that does not exist yet: the stream creates it.
    settings = settings.model_copy(update={"delta_uri": f"s3://{settings.topic}-tables/delta"})
    try:
        fill_topic(settings, 1200, seed=9)
        streamed = run_cli("stream", "--available-now", settings=settings, timeout=400)
        assert streamed.returncode == 0, streamed.stderr[-3000:]
        assert not (settings.state_dir / "delta").exists(), "no table on local disk"

        delta = DeltaTables.from_settings(settings)
        bronze, gold = delta.read("bronze"), delta.read("gold")
        assert len(bronze) == 1200
        _, _, dropped = bronze_verdicts(bronze["value"].to_pylist())
        assert len(delta.read("silver")) + len(delta.read("quarantine")) + dropped == len(bronze)
        live = {d["doc_id"] for d in gold.to_pylist() if d["op"] != "delete"}
        assert indexed_doc_ids(settings) == live, "pgvector reconciles with Gold on S3"

        listed = _tables(settings)
        assert listed["gold"]["location"] == f"{settings.delta_uri}/gold"
        assert listed["gold"]["rows"] == len(gold) and listed["bronze"]["rows"] == 1200
        assert listed["gold_diffs"]["version"] is None, "listed, and absent while diff enrichment is off"
        before_rebuild, old_version = datetime.now(UTC), listed["gold"]["version"]
        time.sleep(1.1)  # commit times have millisecond resolution; keep the two sides of the instant apart

        rebuilt = run_cli("replay", "rebuild", settings=settings, timeout=400)
        assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
        after = DeltaTables.from_settings(settings)
        assert after.version("gold") > old_version
        assert sorted(after.read("gold")["doc_id"].to_pylist()) == sorted(gold["doc_id"].to_pylist())
        # Time travel: the tables as they were before the rebuild.
        then = _tables(settings, "--as-of", before_rebuild.isoformat())
        assert then["gold"]["version"] == old_version and then["gold"]["rows"] == len(gold)
        old_gold = after.read("gold", ["doc_id"], version=old_version)["doc_id"].to_pylist()
        assert sorted(old_gold) == sorted(gold["doc_id"].to_pylist())
    finally:
        release(settings.home.parent)


def _tables(settings: Settings, *args: str) -> dict[str, dict]:
    result = run_cli("tables", "--json", *args, settings=settings)
    assert result.returncode == 0, result.stderr
    return {row["table"]: row for row in json.loads(result.stdout)}
