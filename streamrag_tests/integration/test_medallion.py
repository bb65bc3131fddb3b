"""Kafka -> Bronze/Silver/Gold with real Spark and real Delta tables: exactly-once across SIGKILLs, quarantine,
replay from Bronze equal to the live result, delete/move ops."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest
from kafka import KafkaProducer

from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.refine import Rejected, parse_event
from streamrag_tests.harness import PROJECT_ROOT, VENV_BIN, clean_env, free_port, run_cli
from streamrag_tests.integration.test_ingest import _ingest, _server, _topic_records, _wait_for

pytestmark = pytest.mark.integration

EVENTS, DUPLICATES = 4000, 150


def _stream(settings, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(VENV_BIN / "streamrag"), "stream", *args],
        env={**clean_env(), **settings.to_env()},
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(settings.state_dir / "stream-test.log", "ab"),  # noqa: SIM115
    )


def _batches_logged(settings) -> int:
    path = settings.state_dir / "stream-test.log"
    return path.read_text(errors="replace").count("streamrag_assets.streaming.pipeline: batch") if path.exists() else 0


def _wait_batches(settings, at_least: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while _batches_logged(settings) < at_least:
        assert time.monotonic() < deadline, f"only {_batches_logged(settings)} batches"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def medallion(stack, tmp_path_factory):
    """A topic with synthetic events (10% malformed) plus re-sent duplicates, processed by `streamrag stream`
    that is SIGKILLed twice mid-run, then finished by an availableNow run."""
    home = Path(tmp_path_factory.mktemp("medallion")) / ".streamrag"
    settings = stack.settings.model_copy(
        update={
            "home": home,
            "topic": f"raw-{uuid.uuid4().hex[:8]}",
            "source_port": free_port(),
            "ingest_metrics_port": 0,
            "stream_metrics_port": 0,
            "stream_max_events_per_trigger": 250,
            "stream_trigger_ms": 200,
            # The reprocess test reads offsets from 0 again: the broker keeps them (a 60-s retention removed them
            # before that test ran when two test processes shared the machine).
            "broker_retention_s": 0,
        }
    )
    home.mkdir(parents=True)
    server = _server(settings, "synthetic", EVENTS, rate=0, ingest_malformed_fraction=0.1, ingest_seed=11)
    ingest = _ingest(settings, "synthetic")
    try:
        _wait_for(settings, EVENTS)
    finally:
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(60)
        server.stop()
    # The same events again, as a source that re-sends would: Silver must keep each event id once.
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    for record in _topic_records(settings)[:DUPLICATES]:
        producer.send(settings.topic, key=record.key, value=record.value)
    producer.flush()
    producer.close()

    stream = _stream(settings)
    _wait_batches(settings, 2)
    stream.send_signal(signal.SIGKILL)
    stream.wait(30)
    before = _batches_logged(settings)
    stream = _stream(settings)
    _wait_batches(settings, before + 2)
    stack.postgres.kill()  # the vector store dies mid-stream: indexing retries until it is back
    time.sleep(3)
    stack.start(stack.postgres)
    _wait_batches(settings, before + 4)
    time.sleep(0.3)
    stream.send_signal(signal.SIGKILL)
    stream.wait(30)
    finish = _stream(settings, "--available-now")
    assert finish.wait(300) == 0, (settings.state_dir / "stream-test.log").read_text()[-3000:]
    return settings


def test_each_offset_once_each_event_once_and_counts_reconcile(medallion) -> None:
    delta = DeltaTables(medallion.state_dir / "delta")
    bronze, silver = delta.read("bronze"), delta.read("silver")
    quarantine, gold = delta.read("quarantine"), delta.read("gold")
    positions = list(zip(bronze["partition"].to_pylist(), bronze["offset"].to_pylist(), strict=True))
    assert len(bronze) == EVENTS + DUPLICATES
    assert len(set(positions)) == len(positions), "Bronze holds each offset exactly once"
    ids = silver["event_id"].to_pylist()
    assert len(ids) == len(set(ids)), "Silver holds each event id once"

    valid, canary = [], 0
    for value in bronze["value"].to_pylist():
        try:
            event = parse_event(value)
        except Rejected:
            continue
        if event["domain"] == "canary":
            canary += 1
        else:
            valid.append(event["event_id"])
    duplicates = len(valid) - len(set(valid))
    assert duplicates >= DUPLICATES * 0.8
    assert len(bronze) == len(silver) + len(quarantine) + duplicates + canary
    assert set(ids) == set(valid)
    assert (
        len(gold)
        == pc.sum(pc.is_in(silver["type"], value_set=__import__("pyarrow").array(["edit", "new", "log"]))).as_py()
    )
    assert len(set(gold["doc_id"].to_pylist())) == len(gold)


def test_every_malformed_line_is_quarantined_with_a_reason(medallion) -> None:
    delta = DeltaTables(medallion.state_dir / "delta")
    quarantine = delta.read("quarantine")
    reasons = Counter(r.split(":")[0] for r in quarantine["reason"].to_pylist())
    assert {"invalid_json", "missing_meta", "wrong_type", "not_an_object"} <= set(reasons)
    assert all(quarantine["value"].to_pylist()), "the raw value is kept"
    expected_bad = 0
    for value in delta.read("bronze")["value"].to_pylist():
        try:
            parse_event(value)
        except Rejected:
            expected_bad += 1
    assert len(quarantine) == expected_bad


def test_delete_and_move_become_gold_ops(medallion) -> None:
    gold = DeltaTables(medallion.state_dir / "delta").read("gold").to_pylist()
    deletes = [d for d in gold if d["op"] == "delete"]
    renames = [d for d in gold if d["op"] == "rename"]
    assert deletes and renames
    assert all(d["doc_id"].split(":")[1] == "log" for d in deletes + renames)
    assert all(d["new_title"] for d in renames)
    assert all(d["text"] and d["page_url"] for d in gold)


def test_rebuild_from_bronze_gives_the_same_gold(medallion) -> None:
    delta = DeltaTables(medallion.state_dir / "delta")
    live = delta.read("gold").sort_by("doc_id")
    live_silver_version = delta.version("silver")
    # In chunks of a third of Bronze: the duplicates the live stream dropped across chunks must still be dropped.
    chunked = medallion.model_copy(update={"rebuild_chunk_rows": len(delta.read("bronze", ["offset"])) // 3 + 1})
    result = run_cli("replay", "rebuild", settings=chunked, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rebuilt chunk 3/" in result.stderr, result.stderr[-2000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert delta.version("silver") > live_silver_version, "a new table version"
    rebuilt = DeltaTables(medallion.state_dir / "delta").read("gold").sort_by("doc_id")
    assert counts["gold"] == len(rebuilt) == len(live)
    assert rebuilt.to_pylist() == live.to_pylist()


def test_reprocess_from_an_offset_keeps_each_offset_once(medallion) -> None:
    delta = DeltaTables(medallion.state_dir / "delta")
    before = {layer: len(delta.read(layer)) for layer in ("bronze", "silver", "quarantine", "gold")}
    held = delta.read("bronze")
    re_read = sum(
        1
        for p, o in zip(held["partition"].to_pylist(), held["offset"].to_pylist(), strict=True)
        if (p == 0 and o >= 10) or p != 0
    )
    result = run_cli(
        "replay", "reprocess", "--from-offset", "0:10", "--from-offset", "3:0", settings=medallion, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epoch 1" in result.stdout
    assert f"({re_read:,} events)" in result.stderr, "the events to re-read, counted before it starts"
    delta = DeltaTables(medallion.state_dir / "delta")
    bronze = delta.read("bronze")
    positions = list(zip(bronze["partition"].to_pylist(), bronze["offset"].to_pylist(), strict=True))
    assert len(positions) == len(set(positions)) == before["bronze"]
    after = {layer: len(delta.read(layer)) for layer in ("bronze", "silver", "quarantine", "gold")}
    assert after == before, "re-read rows replace the deleted ones exactly"
    ids = delta.read("silver")["event_id"].to_pylist()
    assert len(ids) == len(set(ids))


def test_pgvector_reconciles_with_gold_and_each_vector_is_its_own_text(medallion) -> None:
    """(Finding by paraphrase is shown on the recorded events in test_index; the synthetic pages here are
    near-duplicates by design.)"""
    from sqlalchemy import create_engine, text

    from streamrag_assets.documents.store import embedding_input
    from streamrag_assets.embedding.embedder import get_embedder

    gold = DeltaTables(medallion.state_dir / "delta").read("gold").to_pylist()
    expected = {d["doc_id"] for d in gold if d["op"] != "delete"}
    engine = create_engine(medallion.app_database_url)
    with engine.connect() as conn:
        rows = {r.doc_id: r for r in conn.execute(text("SELECT doc_id, title, deleted FROM documents"))}
        assert set(rows) == expected, "after the Postgres kill, pgvector rows = Gold documents exactly"
        deleted_pages = {(d["wiki"], d["title"]) for d in gold if d["op"] == "delete"}
        assert any(r.deleted for r in rows.values()) == bool(deleted_pages)
        live = [d for d in gold if d["op"] == "upsert" and not rows[d["doc_id"]].deleted]
        # Batches written around the kill hold the vectors of their own documents, not a neighbour's.
        for target in live[:: max(1, len(live) // 8)]:
            # Exact distance to the row itself: an approximate HNSW top-k over near-duplicates may skip it.
            vector = get_embedder().embed([embedding_input(target["text"])])[0]
            distance = conn.execute(
                text("SELECT embedding <=> CAST(:v AS vector) FROM documents WHERE doc_id = :doc_id"),
                {"v": str(vector.tolist()), "doc_id": target["doc_id"]},
            ).scalar_one()
            assert distance < 1e-3, f"{target['doc_id']} holds another text's vector ({distance:.3f} away)"


def test_index_command_backfills_a_lost_time_range_once(medallion) -> None:
    from datetime import timedelta

    from sqlalchemy import create_engine, text

    gold = DeltaTables(medallion.state_dir / "delta").read("gold").to_pylist()
    deleted_pages = {(d["wiki"], d["title"]) for d in gold if d["op"] == "delete"}
    live = [d for d in gold if d["op"] == "upsert" and (d["wiki"], d["title"]) not in deleted_pages]
    lost = {d["doc_id"] for d in live[::3]}  # a third of the index goes missing (a restore from an old dump, say)
    stale = {d["doc_id"] for d in live[1::7]} - lost  # and some hold a text Gold no longer has
    engine = create_engine(medallion.app_database_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM documents WHERE doc_id = ANY(:ids)"), {"ids": sorted(lost)})
        conn.execute(
            text("UPDATE documents SET content_hash = 'stale', text = 'stale' WHERE doc_id = ANY(:ids)"),
            {"ids": sorted(stale)},
        )
    first_time, last_time = min(d["event_time"] for d in gold), max(d["event_time"] for d in gold)

    def index_range(since, until) -> dict:
        result = run_cli(
            "index", "--since", since.isoformat(), "--until", until.isoformat(), settings=medallion, timeout=300
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def restored() -> set[str]:
        with engine.connect() as conn:
            return {
                r.doc_id
                for r in conn.execute(
                    text("SELECT doc_id FROM documents WHERE doc_id = ANY(:ids) AND NOT deleted"),
                    {"ids": sorted(lost)},
                )
            }

    later = index_range(last_time + timedelta(seconds=1), last_time + timedelta(hours=1))
    assert later["embedded"] == 0 and not restored(), "a range after every event indexes nothing"
    whole = index_range(first_time, last_time + timedelta(seconds=1))
    assert restored() == lost
    assert whole["embedded"] == len(lost) + len(stale), "only the missing and the stale documents are embedded"
    with engine.connect() as conn:
        query = text("SELECT doc_id, text FROM documents WHERE doc_id = ANY(:ids)")
        texts = {r.doc_id: r.text for r in conn.execute(query, {"ids": sorted(stale)})}
    assert texts == {d["doc_id"]: d["text"] for d in live if d["doc_id"] in stale}, "stale texts are Gold's again"
    assert index_range(first_time, last_time + timedelta(seconds=1))["embedded"] == 0, "a second run embeds nothing"


def test_the_hourly_reconcile_leaves_a_working_streams_unindexed_batches_to_it(medallion) -> None:
    """During a backlog the trailing window's last hour is being written: while a query holds the checkpoints, the Gold
    rows of batches past its recorded progress are its to embed, not gaps — all of them before it recorded any (its
    worker takes a backlog newest first). Once no query holds them, they are gaps."""
    from datetime import timedelta

    from sqlalchemy import create_engine, text

    from streamrag_assets.documents.progress import stream_progress_name
    from streamrag_assets.operations.reindex import reindex_window
    from streamrag_assets.streaming.checkpoint import checkpoint_lock

    gold = DeltaTables(medallion.state_dir / "delta").read("gold").to_pylist()
    last = max(d["batch_id"] for d in gold)
    deleted_pages = {(d["wiki"], d["title"]) for d in gold if d["op"] == "delete"}
    live = [d for d in gold if d["op"] == "upsert" and (d["wiki"], d["title"]) not in deleted_pages]
    earlier = {d["doc_id"] for d in gold if d["batch_id"] < last}
    in_flight = {d["doc_id"] for d in live if d["batch_id"] == last} - earlier  # in Gold, not yet indexed
    lost = set(sorted({d["doc_id"] for d in live if d["batch_id"] < last})[:20])  # and a true gap behind the stream
    assert in_flight and lost
    stream = stream_progress_name(medallion.topic)
    engine = create_engine(medallion.app_database_url)
    with engine.begin() as conn:
        recorded = conn.execute(text("SELECT batch_key FROM index_progress WHERE stream = :s"), {"s": stream}).scalar()
        assert recorded >= last, "the finished stream indexed its last batch"
        conn.execute(text("DELETE FROM documents WHERE doc_id = ANY(:ids)"), {"ids": sorted(in_flight | lost)})
        conn.execute(
            text("UPDATE index_progress SET batch_key = :key WHERE stream = :s"), {"key": last - 1, "s": stream}
        )

    def present() -> set[str]:
        with engine.connect() as conn:
            query = text("SELECT doc_id FROM documents WHERE doc_id = ANY(:ids) AND NOT deleted")
            return {r.doc_id for r in conn.execute(query, {"ids": sorted(in_flight | lost)})}

    def rename_progress(old: str, new: str) -> None:
        with engine.begin() as conn:
            conn.execute(text("UPDATE index_progress SET stream = :new WHERE stream = :old"), {"new": new, "old": old})

    since = min(d["event_time"] for d in gold)
    until = max(d["event_time"] for d in gold) + timedelta(seconds=1)
    try:
        with checkpoint_lock(medallion):  # a query at work (the lock is the one the stream holds)
            rename_progress(stream, "elsewhere")  # it has recorded no progress yet: every batch is its own
            first_start = reindex_window(medallion, since, until, leave_to_stream=True)
            rename_progress("elsewhere", stream)
            assert first_start.embedded == 0 and first_start.left_to_stream == len(gold) and not present()
            working = reindex_window(medallion, since, until, leave_to_stream=True)
        assert present() == lost, "the gap is filled, the stream's batch is left to it"
        assert working.embedded == len(lost)
        assert working.left_to_stream == sum(1 for d in gold if d["batch_id"] == last)

        stopped = reindex_window(medallion, since, until, leave_to_stream=True)  # no query: what it left is a gap
        assert present() == in_flight | lost
        assert stopped.embedded == len(in_flight) and stopped.left_to_stream == 0
    finally:
        rename_progress("elsewhere", stream)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE index_progress SET batch_key = :key WHERE stream = :s"), {"key": recorded, "s": stream}
            )
        engine.dispose()
