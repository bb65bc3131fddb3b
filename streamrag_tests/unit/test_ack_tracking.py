"""The resume position only advances over events the broker acknowledged, in order."""

from __future__ import annotations

from pathlib import Path

from streamrag_assets.ingest.position import AckTracker, Position, PositionStore


def test_watermark_waits_for_the_oldest_unacknowledged_event() -> None:
    tracker = AckTracker(heads={0: 10, 1: 5}, last_event_id="start")
    a, b, c = tracker.add("a"), tracker.add("b"), tracker.add("c")
    tracker.ack(c, 0, 12)
    tracker.ack(b, 1, 5)
    snapshot = tracker.snapshot()
    assert snapshot.last_event_id == "start", "a is not acknowledged: nothing after it may count as stored"
    # b and c are in the topic already; a restart must scan from their offsets.
    assert snapshot.scan_from == {0: 10, 1: 5}
    tracker.ack(a, 0, 10)
    snapshot = tracker.snapshot()
    assert snapshot.last_event_id == "c"
    assert snapshot.scan_from == {0: 13, 1: 6}
    assert tracker.outstanding == 0


def test_dead_lettered_events_advance_the_watermark_without_an_offset() -> None:
    tracker = AckTracker()
    first, second = tracker.add("1"), tracker.add("2")
    tracker.ack(first, None, None)
    tracker.ack(second, 3, 0)
    assert tracker.snapshot() == Position("2", {3: 1})


def test_position_store_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "ingest" / "recording.position.json")
    assert store.load() is None
    store.save(Position('[{"topic":"x","partition":0,"offset":9}]', {0: 4, 5: 2}))
    store.save(Position("42", {0: 7}))
    assert store.load() == Position("42", {0: 7})
    assert not list((tmp_path / "ingest").glob("*.tmp"))


def test_an_event_whose_send_was_interrupted_is_not_awaited_and_holds_the_position_back() -> None:
    tracker = AckTracker()
    sent, interrupted, resent = tracker.add("1"), tracker.add("2"), tracker.add("3")
    tracker.ack(sent, 0, 0)
    tracker.ack(resent, 0, 2)
    assert tracker.awaited() == 1
    assert tracker.awaited(besides={interrupted}) == 0, "a shutdown's flush does not wait for it"
    snapshot = tracker.snapshot()
    assert snapshot.last_event_id == "1", "nothing after the interrupted event counts as stored"
    assert snapshot.scan_from == {0: 1}, "a restart scans from it and finds what came after"
