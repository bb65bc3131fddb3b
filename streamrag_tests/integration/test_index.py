"""Gold documents into pgvector with the real model: found by paraphrase, idempotent, deletes and moves applied.

Dead letters: a document that cannot be embedded is kept with the reason and indexed by a later retry."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from streamrag_assets.documents.migrate import upgrade
from streamrag_assets.documents.progress import PartitionMark, Progress, marks_from_json
from streamrag_assets.documents.store import DocumentIndex, embedding_input
from streamrag_assets.embedding.embedder import get_embedder
from streamrag_assets.ingest.sources import recorded_event
from streamrag_assets.runtime.postgres import admin_connect
from streamrag_assets.streaming.refine import document, parse_event
from streamrag_tests.harness import fresh_database

pytestmark = pytest.mark.integration


def _gold(seq: int, partition: int = 0, **changes) -> dict:
    event = json.loads(recorded_event(seq))
    event.update(changes)
    doc = document(parse_event(json.dumps(event)))
    return doc | {"partition": partition, "offset": seq, "ingested_at": doc["event_time"]}


@pytest.fixture(scope="module")
def index(stack):
    url = fresh_database(stack, "idx")
    upgrade(url)
    upgrade(url)  # migrations are idempotent: a second `up` changes nothing
    return DocumentIndex(url, get_embedder())


def _search(index: DocumentIndex, query: str, k: int = 3) -> list[tuple[str, str]]:
    vector = index.embedder.embed([query])[0].tolist()
    with index.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT doc_id, title FROM documents WHERE NOT deleted "
                "ORDER BY embedding <=> CAST(:v AS vector) LIMIT :k"
            ),
            {"v": str(vector), "k": k},
        )
        return [(r.doc_id, r.title) for r in rows]


def _snapshot(index: DocumentIndex) -> list[tuple]:
    with index.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT doc_id, content_hash, title, deleted, indexed_at, embedding::text "
                    "FROM documents ORDER BY doc_id"
                )
            )
        ]


def test_found_by_paraphrase_idempotent_and_delete_move(index) -> None:
    docs = [_gold(seq) for seq in range(40)]
    first = index.apply(docs)
    assert first.upserted == first.embedded == 40
    target = docs[0]
    hits = _search(index, f"someone changed the Wikipedia article about {target['title']}")
    assert target["doc_id"] in [h[0] for h in hits]

    before = _snapshot(index)
    again = index.apply(docs)
    assert (again.embedded, again.upserted, again.unchanged) == (0, 0, 40)
    assert _snapshot(index) == before, "replaying the same events changes nothing"

    page = docs[3]
    index.apply(
        [
            _gold(
                1000,
                type="log",
                log_id=555,
                log_type="delete",
                log_action="delete",
                title=page["title"],
                revision=None,
                length=None,
            )
        ]
    )
    assert page["doc_id"] not in [h[0] for h in _search(index, page["text"], k=10)]
    index.apply([docs[3]])  # a replayed old edit does not bring the deleted page back
    assert page["doc_id"] not in [h[0] for h in _search(index, page["text"], k=10)]

    moved = docs[5]
    index.apply(
        [
            _gold(
                1001,
                type="log",
                log_id=556,
                log_type="move",
                log_action="move",
                title=moved["title"],
                log_params={"target": "Renamed Page"},
                revision=None,
                length=None,
            )
        ]
    )
    with index.engine.connect() as conn:
        title, url = conn.execute(
            text("SELECT title, page_url FROM documents WHERE doc_id = :d"), {"d": moved["doc_id"]}
        ).one()
    assert title == "Renamed Page" and url.endswith("/wiki/Renamed_Page")


def test_a_replayed_delete_or_move_leaves_what_the_page_became_afterwards(index) -> None:
    """A page deleted and made again, and a page moved with a new page made at its old title: applying the same
    events again (a reconcile, a replay) tombstones and renames only what the page held at the delete or move."""
    recreated, moved = _gold(410), _gold(411)
    t0 = recreated["event_time"]

    def later(doc: dict, seconds: int, seq: int, **changes) -> dict:
        at = t0 + timedelta(seconds=seconds)
        event = _gold(seq, wiki=doc["wiki"], title=doc["title"], **changes)
        return event | {"event_time": at, "ingested_at": at}

    log = {"type": "log", "revision": None, "length": None}
    events = [
        recreated | {"event_time": t0},
        later(recreated, 10, 1410, log_id=1601, log_type="delete", log_action="delete", **log),
        later(recreated, 20, 412),  # the page written again, a new revision under the same title
        moved | {"event_time": t0},
        later(
            moved, 10, 1411, log_id=1602, log_type="move", log_action="move", log_params={"target": "Moved On"}, **log
        ),
        later(moved, 20, 413),  # a new page at the old title
    ]
    again, at_old_title = events[2]["doc_id"], events[5]["doc_id"]
    for event in events:  # as the stream met them
        index.apply([event])
    index.apply(events)  # and all of them once more

    with index.engine.connect() as conn:
        state = {
            r.doc_id: (r.title, r.deleted)
            for r in conn.execute(
                text("SELECT doc_id, title, deleted FROM documents WHERE doc_id = ANY(:ids)"),
                {"ids": [e["doc_id"] for e in events]},
            )
        }
    assert state[recreated["doc_id"]] == (recreated["title"], True), "the deleted revision stays deleted"
    assert state[again] == (recreated["title"], False), "the page made again after the delete stays"
    assert state[moved["doc_id"]] == ("Moved On", False), "the moved revision keeps its new title"
    assert state[at_old_title] == (moved["title"], False), "the new page at the old title keeps it"


class _FailsOn:
    """The real embedder, except that texts containing ``marker`` fail (a poisoned document)."""

    def __init__(self, marker: str) -> None:
        self.marker, self.real = marker, get_embedder()
        self.model_name = self.real.model_name

    def embed(self, texts: list[str]):
        if any(self.marker in t for t in texts):
            raise ValueError("cannot embed this text")
        return self.real.embed(texts)


def test_a_document_that_cannot_be_embedded_is_dead_lettered_then_retried(index) -> None:
    from streamrag_assets.operations.dead_letters import retry_dead_letters

    docs = [_gold(seq) for seq in range(200, 210)]
    poisoned = docs[4]["doc_id"]
    marker = embedding_input(docs[4]["text"])  # what the index embeds of it
    failing = DocumentIndex(str(index.engine.url.render_as_string(hide_password=False)), _FailsOn(marker))
    result = failing.index(docs)
    assert (result.embedded, result.dead_letters) == (9, 1), "the rest of the batch is indexed"
    with index.engine.connect() as conn:
        stored = {r.doc_id for r in conn.execute(text("SELECT doc_id FROM documents"))}
        letters = conn.execute(text("SELECT doc_id, reason, attempts FROM index_dead_letters")).all()
    assert poisoned not in stored and {d["doc_id"] for d in docs} - {poisoned} <= stored
    assert [(r.doc_id, r.attempts) for r in letters] == [(poisoned, 1)] and "cannot embed" in letters[0].reason

    _, still_failing = retry_dead_letters(failing)  # still broken: kept, attempts counted
    assert still_failing == 1
    with index.engine.connect() as conn:
        assert conn.execute(text("SELECT doc_id, attempts FROM index_dead_letters")).all() == [(poisoned, 2)]

    result, still_failing = retry_dead_letters(index)  # fixed (e.g. a new model): indexed, letter gone
    assert (result.upserted, still_failing) == (1, 0)
    assert poisoned in [h[0] for h in _search(index, docs[4]["text"], k=3)]
    with index.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM index_dead_letters")).scalar() == 0


def test_a_document_postgres_refuses_is_dead_lettered_and_the_rest_of_the_batch_is_indexed(index) -> None:
    """Refine keeps out what the tables cannot hold; should a document still reach the index that Postgres refuses
    (here a NUL in its text), the batch goes on one document at a time instead of failing for good."""
    docs = [_gold(seq) for seq in range(300, 306)]
    refused = docs[2] | {"text": docs[2]["text"] + "\x00"}
    docs[2] = refused
    result = index.index(docs, progress=Progress("refusal-test", 7))
    assert (result.upserted, result.dead_letters) == (5, 1)
    with index.engine.connect() as conn:
        stored = set(conn.execute(text("SELECT doc_id FROM documents")).scalars())
        letters = conn.execute(
            text("SELECT reason FROM index_dead_letters WHERE doc_id = :d"), {"d": refused["doc_id"]}
        ).scalars()
        reasons = list(letters)
    assert {d["doc_id"] for d in docs} - stored == {refused["doc_id"]}
    assert len(reasons) == 1 and reasons[0].startswith("database: ")
    assert index.progress("refusal-test") == 7, "the batch's progress is recorded once the others are in"


def test_a_document_row_keeps_its_vector_in_the_table_page(index, stack) -> None:
    """Rows over 2 kB (a long comment) keep their vector inline: a search computing each hit's similarity then
    reads no TOAST pages (migration 0005; the default target moved the vector out of line)."""
    comment = "Reverted vandalism and restored the sourced paragraph about the river's course. " * 6
    docs = [_gold(2000 + seq, comment=comment, parsedcomment=comment) for seq in range(5)]
    assert index.apply(docs).upserted == 5
    ids = [d["doc_id"] for d in docs]
    with index.engine.connect() as conn:
        sizes = conn.execute(
            text("SELECT pg_column_size(d.*) FROM documents d WHERE doc_id = ANY(:ids)"), {"ids": ids}
        ).scalars()
        assert min(sizes) > 2100, "rows big enough for Postgres' default target to move their vector out"
    with admin_connect(stack.settings, index.engine.url.database) as admin:  # TOAST tables: the superuser's to read
        toast = admin.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'documents'")
        chunks = admin.execute(f"SELECT count(*) FROM {toast.fetchone()[0]}").fetchone()[0]
    assert chunks == 0, "no document value is stored out of line"


def test_indexed_at_is_when_a_document_was_written_not_when_its_batch_began(index) -> None:
    """A micro-batch embeds, then waits for Gold (`before_write`), then writes, all in one transaction; its
    documents' `indexed_at` (which /freshness and the UI report as ingested -> searchable) must not date from before
    that work, or a slow batch would look fresher than it was."""
    docs = [_gold(3000 + seq) for seq in range(3)]
    written_after: list[datetime] = []

    def slow_gold() -> None:
        time.sleep(1.0)
        written_after.append(datetime.now(UTC))

    began = datetime.now(UTC)
    assert index.index(docs, before_write=slow_gold).upserted == 3
    committed = datetime.now(UTC)
    with index.engine.connect() as conn:
        stamps = (
            conn.execute(
                text("SELECT indexed_at FROM documents WHERE doc_id = ANY(:ids)"), {"ids": [d["doc_id"] for d in docs]}
            )
            .scalars()
            .all()
        )
    assert len(stamps) == 3
    assert all(written_after[0] <= stamp <= committed for stamp in stamps), (
        f"batch began {began:%H:%M:%S.%f}, written after {written_after[0]:%H:%M:%S.%f}, "
        f"committed by {committed:%H:%M:%S.%f}; indexed_at {[f'{s:%H:%M:%S.%f}' for s in stamps]}"
    )


def _order_recorded(index: DocumentIndex, batches: dict[int, list[dict]], stream: str):
    """An index worker over ``index`` for ``batches`` (key -> Gold rows), and what it does: each part's batch key
    with the progress its transaction recorded, in the order taken; the batch keys finished."""
    from streamrag_assets.streaming.index_worker import IndexWorker

    taken: list[tuple[int, int | None]] = []
    finished: list[int] = []

    def index_part(rows, reached, written):
        key = next(k for k, b in batches.items() if b[0]["doc_id"] == rows[0]["doc_id"])
        taken.append((key, None if reached is None else reached[0]))
        return index.index(
            rows, progress=None if reached is None else Progress(stream, *reached), before_write=written.wait
        )

    return (
        IndexWorker(index_part, lambda result: finished.append(result.batch_key), recover=lambda upto: 0),
        taken,
        finished,
    )


def _until_finished(finished: list[int], count: int, taken: list) -> None:
    deadline = time.monotonic() + 60
    while len(finished) < count:
        assert time.monotonic() < deadline, f"the worker indexed {taken} only"
        time.sleep(0.05)


def test_the_stream_indexes_newer_batches_first_when_they_commute_and_ends_as_in_order(index) -> None:
    """The index worker takes the newest waiting batch whose documents commute with the older ones (a live edit
    does not wait for a backlog), goes in order otherwise (here: a deletion of a page an older batch edits), and
    records a progress only below which every batch is in Postgres."""
    from streamrag_assets.streaming.batch_result import BatchResult
    from streamrag_assets.streaming.index_worker import WriteGate

    base = 70_000
    edits = {key: _gold(base + key, title=f"Lane page {key}") for key in range(1, 5)}
    deletion = _gold(
        base + 9, type="log", log_id=base + 9, log_type="delete", log_action="delete", title=edits[1]["title"]
    ) | {"revision": None}
    batches = {
        0: [_gold(base, title="Lane plug")],
        1: [edits[1]],
        2: [edits[2]],
        3: [edits[3]],
        4: [edits[4], deletion],
    }
    # Partition 0 has records in every batch, partition 1 in batch 2 only: the marks recorded with batch 4 are
    # batch 4's for partition 0 and still batch 2's for partition 1 (batch 2 was indexed before batch 1).
    at = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)

    def marks(key: int) -> dict[int, PartitionMark]:
        found = {0: PartitionMark(100 + key, at + timedelta(seconds=key), at - timedelta(minutes=5 - key))}
        if key == 2:
            found[1] = PartitionMark(7, at - timedelta(seconds=30), None)
        return found

    worker, taken, finished = _order_recorded(index, batches, "lanes")
    plug = WriteGate()  # the worker takes batch 0 first and waits for its tables while the others arrive
    worker.submit(BatchResult(0, {}, {}, {}, marks=marks(0)), batches[0], plug)
    time.sleep(0.5)
    for key in range(1, 5):
        gate = WriteGate()
        gate.open()
        worker.submit(BatchResult(key, {}, {}, {}, marks=marks(key)), batches[key], gate)
    plug.open()
    _until_finished(finished, 5, taken)
    # 3 and 2 commute with everything older; 4 deletes the page 1 edits, so 1 goes before it.
    assert [key for key, _ in taken] == [0, 3, 2, 1, 4]
    assert [progress for _, progress in taken] == [0, None, None, 3, 4]
    assert index.progress("lanes") == 4
    with index.engine.connect() as conn:
        recorded = conn.execute(text("SELECT partitions FROM index_progress WHERE stream = 'lanes'")).scalar_one()
    assert marks_from_json(recorded) == {
        0: PartitionMark(104, at + timedelta(seconds=4), at - timedelta(minutes=1)),
        1: PartitionMark(7, at - timedelta(seconds=30), None),
    }
    with index.engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT doc_id, deleted FROM documents WHERE title LIKE 'Lane page %'")).all())
    assert rows == {
        edits[1]["doc_id"]: True,
        edits[2]["doc_id"]: False,
        edits[3]["doc_id"]: False,
        edits[4]["doc_id"]: False,
    }


def test_newest_first_leaves_a_part_that_waited_too_long_every_fourth_turn(index, monkeypatch) -> None:
    """A worker kept busy by newer batches does not starve the oldest: once it has waited `OLDEST_WAIT_S`, every
    fourth turn is the oldest's, and the recorded progress moves with it instead of waiting for the whole backlog."""
    from streamrag_assets.streaming import index_worker
    from streamrag_assets.streaming.batch_result import BatchResult

    monkeypatch.setattr(index_worker, "OLDEST_WAIT_S", 0.2)
    base = 71_000
    batches = {key: [_gold(base + key, title=f"Turn page {key}")] for key in range(11)}
    worker, taken, finished = _order_recorded(index, batches, "turns")
    plug = index_worker.WriteGate()  # batch 0 holds the worker while the ten others arrive and wait past the limit
    worker.submit(BatchResult(0, {}, {}, {}), batches[0], plug)
    time.sleep(0.3)
    for key in range(1, 11):
        gate = index_worker.WriteGate()
        gate.open()
        worker.submit(BatchResult(key, {}, {}, {}), batches[key], gate)
    time.sleep(0.3)
    plug.open()
    _until_finished(finished, 11, taken)
    # Newest first alone: 10, 9, ..., 1 — batch 1 last, and no progress recorded until the very end.
    assert taken == [
        (0, 0),
        (10, None),
        (9, None),
        (8, None),
        (1, 1),
        (7, None),
        (6, None),
        (5, None),
        (2, 2),
        (4, None),
        (3, 10),
    ]
    assert index.progress("turns") == 10


def test_vectors_written_before_halfvec_are_kept_and_found_through_the_new_index(stack) -> None:
    """Migration 0008 on a table with documents: each keeps its vector (to half precision), the column is halfvec,
    the HNSW index is built again with its parameters, and a nearest-neighbour query uses it and finds them."""
    url = fresh_database(stack, "halfvec")
    upgrade(url, "0007")
    old = DocumentIndex(url, get_embedder())
    docs = [_gold(3000 + seq) for seq in range(40)]
    assert old.apply(docs).upserted == 40
    with old.engine.connect() as conn:
        before = {
            r.doc_id: json.loads(r.v) for r in conn.execute(text("SELECT doc_id, embedding::text AS v FROM documents"))
        }
    old.engine.dispose()

    upgrade(url)
    index = DocumentIndex(url, get_embedder())
    with index.engine.connect() as conn:
        kind = conn.execute(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'documents'::regclass "
                "AND attname = 'embedding'"
            )
        ).scalar()
        index_def = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'documents_embedding_hnsw'")
        ).scalar()
        after = {
            r.doc_id: json.loads(r.v) for r in conn.execute(text("SELECT doc_id, embedding::text AS v FROM documents"))
        }
        conn.execute(text("SET enable_seqscan = off"))
        probe = str(before[docs[7]["doc_id"]])
        plan = "\n".join(
            conn.execute(
                text("EXPLAIN SELECT doc_id FROM documents ORDER BY embedding <=> CAST(:v AS vector) LIMIT 3"),
                {"v": probe},
            ).scalars()
        )
        nearest = dict(
            conn.execute(
                text(
                    "SELECT doc_id, embedding <=> CAST(:v AS vector) FROM documents "
                    "ORDER BY embedding <=> CAST(:v AS vector) LIMIT 3"
                ),
                {"v": probe},
            ).all()
        )
    assert kind == "halfvec(384)"
    assert "halfvec_cosine_ops" in index_def and "m='24'" in index_def and "ef_construction='96'" in index_def
    assert after.keys() == before.keys()
    worst = max(abs(a - b) for doc_id in before for a, b in zip(after[doc_id], before[doc_id], strict=True))
    assert worst < 1e-3, f"a vector moved by {worst} in the conversion"
    assert "documents_embedding_hnsw" in plan
    assert nearest[docs[7]["doc_id"]] < 1e-3, f"the document is not found by its own vector: {nearest}"
    # A document written after the migration is stored as halfvec and found by its title.
    fresh = _gold(3100, title="Halfvec Lighthouse of Alexandria")
    assert index.apply([fresh]).upserted == 1
    assert _search(index, "Lighthouse of Alexandria", k=1) == [(fresh["doc_id"], fresh["title"])]
    index.engine.dispose()
