"""Silver validation and Gold rendering on single events (no Spark, no Kafka)."""

from __future__ import annotations

import json

import pytest

from streamrag_assets.ingest.sources import recorded_event, synthetic_event
from streamrag_assets.streaming.refine import Rejected, document, parse_event, plain_text


def _event(**changes) -> dict:
    event = json.loads(recorded_event(0))
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
        # Values that pass the schema but not the storage types (each once stopped the whole stream).
        (json.dumps(_event(meta={"id": "a", "dt": "9999-12-31T23:59:59-05:00"})), "invalid_time"),
        (json.dumps(_event(meta={"id": "a", "dt": "0001-01-01T00:00:00+05:00"})), "invalid_time"),
        (json.dumps(_event(meta={"id": "a", "dt": "0001-01-01T00:00:00Z"})), "implausible_time:past"),
        (json.dumps(_event(meta={"id": "a", "dt": "9999-12-31T23:59:59Z"})), "implausible_time:future"),
        (json.dumps(_event(revision={"old": 1, "new": 2**63})), "out_of_range:revision.new"),
        (json.dumps(_event(length={"old": 1, "new": 2**64 - 1})), "out_of_range:length.new"),
        (json.dumps(_event(id=2**63)), "out_of_range:id"),
        (json.dumps(_event(revision={"old": 1, "new": 2**64})), "wrong_type:revision.new"),  # orjson: a float
        (json.dumps(_event(title="Main\x00Page")), "invalid_text:title"),
        (json.dumps(_event(title="T" * 1001)), "too_long:title"),
        (json.dumps(_event(type="log", log_id=1, log_params=[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]])), "ok"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(raw: str, reason: str) -> None:
    if reason == "ok":
        parse_event(raw)
        return
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


def test_log_params_nested_past_the_encoders_limit_are_rejected() -> None:
    nested: object = []
    for _ in range(300):
        nested = [nested]
    with pytest.raises(Rejected, match="invalid_field:log_params"):
        parse_event(json.dumps(_event(type="log", log_id=1, log_params=nested)))


def test_a_record_that_breaks_refine_is_quarantined_with_the_exception_and_the_batch_goes_on() -> None:
    from streamrag_assets.streaming.transforms import error_reason, refine_record

    move_to_nowhere = _event(type="log", log_id=5, log_type="move", log_action="move", log_params={"target": "\x00"})
    good = {"value": recorded_event(1), "offset": 2}
    bad = {"value": json.dumps(move_to_nowhere), "offset": 1}
    assert refine_record(bad)["reject_reason"] == "invalid_text:log_params.target"
    assert refine_record(good)["reject_reason"] is None
    assert (
        error_reason(OverflowError("date value out of range\nmore")) == "error:OverflowError: date value out of range"
    )
    assert error_reason(KeyError()) == "error:KeyError"


def test_the_index_embeds_the_text_without_its_size_and_time() -> None:
    from streamrag_assets.documents.store import embedding_input

    docs = [d for d in (document(parse_event(recorded_event(seq))) for seq in range(300)) if d]
    with_size = 0
    for doc in docs:
        text, embedded = doc["text"], embedding_input(doc["text"])
        when = doc["event_time"].strftime("%Y-%m-%d %H:%M UTC")
        assert when in text and when not in embedded, text
        assert " bytes" not in embedded and embedded.startswith(text.split(" (")[0].split(" at 2")[0]), embedded
        assert embedded.endswith(text[text.index(when) + len(when) :]), "the comment is kept whole"
        with_size += " bytes, now " in text
    assert with_size > len(docs) // 2
    # Only what the renderer wrote goes: the same words inside a title or a comment stay.
    odd = next(d for d in docs if "Comment:" in d["text"])
    text = odd["text"].replace('Comment: "', 'Comment: "moved (+5 bytes, now 9 bytes) at 2020-01-01 00:00 UTC. ')
    assert "(+5 bytes, now 9 bytes) at 2020-01-01 00:00 UTC." in embedding_input(text)
