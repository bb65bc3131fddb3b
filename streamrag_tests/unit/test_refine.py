"""Silver validation and Gold rendering on single events (no Spark, no Kafka)."""

from __future__ import annotations

import json

import pytest

from streamrag_assets.ingest.sources import replay_event, synthetic_event
from streamrag_assets.streaming.refine import Rejected, document, parse_event, plain_text


def _event(**changes) -> dict:
    event = json.loads(replay_event(0))
    event.update(changes)
    return event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "not_an_object"),
        (json.dumps({"type": "edit", "title": "x", "wiki": "enwiki"}), "missing_meta"),
        (json.dumps(_event(meta={"dt": "2026-01-01T00:00:00Z"})), "missing_field:meta.id"),
        (json.dumps(_event(meta={"id": "a", "dt": 5})), "wrong_type:meta.dt"),
        (json.dumps(_event(meta={"id": "a", "dt": "yesterday"})), "invalid_time"),
        (json.dumps(_event(namespace="zero")), "wrong_type:namespace"),
        (json.dumps(_event(title=["list"])), "wrong_type:title"),
        (json.dumps(_event(type="vandalism")), "invalid_type"),
        (json.dumps(_event(namespace=-7)), "invalid_namespace"),
        (json.dumps(_event(length={"old": -1, "new": 5})), "invalid_length"),
        (json.dumps(_event(bot="yes")), "wrong_type:bot"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(Rejected) as rejected:
        parse_event(raw)
    assert str(rejected.value) == reason


def test_every_synthetic_malformed_line_is_rejected() -> None:
    for seq in range(400):
        line = synthetic_event(seq, seed=1, malformed_fraction=1.0)
        with pytest.raises(Rejected):
            parse_event(line)


def test_edit_becomes_a_readable_document_with_lineage_fields() -> None:
    raw = _event()
    silver = parse_event(json.dumps(raw))
    assert silver["event_time"].tzinfo is not None
    assert "<" not in silver["comment_text"] and "→" in silver["comment_text"]
    doc = document(silver)
    assert doc["doc_id"] == f"enwiki:rev:{raw['revision']['new']}"
    assert doc["op"] == "upsert" and doc["lang"] == "en"
    assert raw["title"] in doc["text"] and raw["user"] in doc["text"] and "+58 bytes" in doc["text"]
    assert doc["diff_url"] == raw["notify_url"] and doc["page_url"] == raw["title_url"]
    assert document(silver)["content_hash"] == doc["content_hash"], "deterministic"


def test_delete_and_move_log_events_become_delete_and_rename_ops() -> None:
    base = {"type": "log", "log_id": 77, "log_params": {}, "revision": None, "length": None}
    delete = document(parse_event(json.dumps(_event(**base, log_type="delete", log_action="delete"))))
    assert (delete["op"], delete["doc_id"]) == ("delete", "enwiki:log:77")
    move = document(
        parse_event(
            json.dumps(
                _event(
                    **{**base, "log_params": {"target": "New name", "noredir": "1"}}, log_type="move", log_action="move"
                )
            )
        )
    )
    assert (move["op"], move["new_title"]) == ("rename", "New name")
    assert "moved the page" in move["text"] and "New name" in move["text"]
    restore = document(parse_event(json.dumps(_event(**base, log_type="delete", log_action="restore"))))
    assert restore["op"] == "upsert"


def test_categorize_is_silver_only() -> None:
    silver = parse_event(json.dumps(_event(type="categorize")))
    assert document(silver) is None


def test_plain_text_strips_markup_and_decodes_entities() -> None:
    assert plain_text('<a href="/x">Link</a> &amp; <b>bold</b>\n text', None) == "Link & bold text"
    assert plain_text(None, "  raw  comment ") == "raw comment"
