"""The offline sources follow the recentchange schema and are deterministic by sequence number."""

from __future__ import annotations

import json
from collections import Counter

from streamrag_assets.ingest.events import event_key, event_time, try_parse
from streamrag_assets.ingest.sources import recorded_event, recorded_events, synthetic_event


def test_synthetic_stream_covers_the_schema() -> None:
    events = [try_parse(synthetic_event(seq, seed=3, malformed_fraction=0.05)) for seq in range(4000)]
    good = [e for e in events if e is not None and isinstance(e.get("meta"), dict) and isinstance(e.get("type"), str)]
    types = Counter(e["type"] for e in good)
    assert set(types) == {"edit", "new", "log", "categorize"}
    assert {e["log_type"] for e in good if e["type"] == "log"} >= {"delete", "move", "protect"}
    assert len({e["wiki"] for e in good}) >= 8
    assert any(e["bot"] for e in good) and not all(e["bot"] for e in good)
    assert any(any(ord(ch) > 0x2000 for ch in e["title"]) for e in good), "Unicode titles"
    assert any(len(e["comment"]) > 50_000 for e in good), "huge comments"
    assert any(e["meta"]["domain"] == "canary" for e in good)
    malformed = len(events) - len(good)
    assert 100 < malformed < 350, "about 5% malformed"
    assert len({e["meta"]["id"] for e in good}) == len(good)


def test_sources_are_deterministic_by_sequence_number() -> None:
    def stable(line: str) -> str:
        event = try_parse(line)
        if event and isinstance(event.get("meta"), dict):
            event["meta"].pop("dt", None)
            event.pop("timestamp", None)
            return json.dumps(event, sort_keys=True)
        return line

    assert stable(synthetic_event(123, seed=9, malformed_fraction=0.3)) == stable(
        synthetic_event(123, seed=9, malformed_fraction=0.3)
    )
    assert stable(recorded_event(250)) == stable(recorded_event(250))


def test_replay_loops_with_fresh_ids() -> None:
    n = len(recorded_events())
    first, again = json.loads(recorded_event(5)), json.loads(recorded_event(5 + n))
    assert first["title"] == again["title"]
    assert first["meta"]["id"] != again["meta"]["id"]
    assert first["revision"]["new"] != again["revision"]["new"]
    assert str(again["revision"]["new"]) in again["notify_url"]


def test_keys_and_times() -> None:
    event = json.loads(recorded_event(0))
    assert event_key(event) == f"enwiki:{event['title']}".encode()
    assert event_time(event) is not None
    assert event_key(try_parse("not json")) is None
    assert event_key({"wiki": 1, "title": None}) is None
    assert event_time({"meta": {"dt": "yesterday"}}) is None
