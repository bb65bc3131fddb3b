"""Hypothesis strategies for recentchange-shaped events with hostile values in every field.

An event starts as a real recorded one (so most fields are plausible and the rest of the event reaches the code
under test) and then has some fields replaced by values chosen to break storage: every JSON type in every position,
nulls, huge and odd Unicode strings (surrogates, NUL, line separators), integers and floats at and past the limits of
int32/int64/uint64 and doubles, dates at the calendar's ends with offsets, deep nesting, and raw lines that are not
JSON at all. Values become text the way the stream sees them: JSON encoded to UTF-8 by the producer, bytes that are
not UTF-8 replaced on the way into Bronze.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from streamrag_assets.ingest.sources import recorded_events

INT_LIMITS = [
    0,
    -1,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    10**30,
    -(10**30),
]
FLOAT_LIMITS = [0.5, -0.0, 1e308, -1e308, 5e-324, 1.7976931348623157e308, 2.0**63, 1e19]
DATES = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+05:00",
    "0001-01-01T00:00:00-05:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999-05:00",
    "9999-12-31T23:59:59+14:00",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "2000-12-31T23:59:59Z",
    "2001-01-01T00:00:00Z",
    "2038-01-19T03:14:08Z",
    "2262-04-11T23:47:16.854775807Z",
    "2026-02-30T00:00:00Z",
    "2026-12-03T25:00:00Z",
    "2026-12-03T12:00:00+24:00",
    "2026-12-03",
    "2026-12-03T12:00:00",
    "+002026-12-03T12:00:00Z",
    "",
    "now",
]
STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "\ud83d\ude00",
    "\u2028\u2029",
    "\r\n\r\n",
    "\ufeff",
    "\ufffd",
    "<script>alert(1)</script>",
    "'; DROP TABLE documents; --",
    "%s %(x)s {0}",
    "\u202e\u0645\u0631\u062d\u0628\u0627",
    "x" * 3000,
    "\U0001f600" * 2000,
]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(INT_LIMITS),
    st.integers(),
    st.sampled_from(FLOAT_LIMITS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(STRINGS),
    st.text(max_size=40),
    st.sampled_from(DATES),
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=6,
)


def deeply_nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"d": value}
    return value


HOSTILE = st.one_of(
    SCALARS,
    ANY_JSON,
    st.integers(min_value=2, max_value=900).map(deeply_nested),
    st.integers(min_value=1000, max_value=5000).map(lambda n: "\u00e9\U0001f600" * n),
)

FIELDS = [
    "meta",
    "meta.id",
    "meta.dt",
    "meta.domain",
    "id",
    "type",
    "namespace",
    "title",
    "title_url",
    "comment",
    "parsedcomment",
    "timestamp",
    "user",
    "bot",
    "minor",
    "patrolled",
    "length",
    "length.old",
    "length.new",
    "revision",
    "revision.old",
    "revision.new",
    "server_url",
    "server_name",
    "server_script_path",
    "wiki",
    "notify_url",
    "log_id",
    "log_type",
    "log_action",
    "log_params",
    "log_params.target",
]
FIELD_VALUES = {
    "meta.dt": st.one_of(st.sampled_from(DATES), HOSTILE),
    "type": st.one_of(st.sampled_from(["edit", "new", "log", "categorize", "external"]), HOSTILE),
    "log_type": st.one_of(st.sampled_from(["delete", "move"]), HOSTILE),
    "log_action": st.one_of(st.sampled_from(["delete", "delete_redir", "move"]), HOSTILE),
}


def _set(event: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    target = event
    for name in parents:
        if not isinstance(target.get(name), dict):
            target[name] = {}
        target = target[name]
    target[leaf] = value


def as_topic_text(value: Any, ensure_ascii: bool) -> str:
    """JSON text as it reaches Bronze: encoded to UTF-8 by a producer (a lone surrogate cannot be; it is written as
    an escape, or its bytes become U+FFFD as Spark's `make_valid_utf8` does)."""
    text = json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=True)
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@st.composite
def hostile_events(draw: st.DrawFn) -> str:
    """One raw topic value: usually a recorded event with 1-4 fields made hostile, sometimes not JSON at all."""
    shape = draw(st.sampled_from(["mutated"] * 8 + ["raw", "truncated", "not_object"]))
    if shape == "raw":
        line = draw(st.one_of(st.sampled_from(STRINGS), st.text(max_size=200), st.just("NaN"), st.just("[" * 5000)))
        return line.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    event = json.loads(json.dumps(draw(st.sampled_from(recorded_events()))))
    event["meta"]["id"] = draw(st.uuids()).hex
    event["meta"]["dt"] = "2026-12-03T12:00:00Z"
    if shape == "not_object":
        return as_topic_text(draw(st.one_of(SCALARS, st.lists(SCALARS, max_size=3))), True)
    for path in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True)):
        _set(event, path, draw(FIELD_VALUES.get(path, HOSTILE)))
    text = as_topic_text(event, draw(st.booleans()))
    if shape == "truncated":
        return text[: draw(st.integers(min_value=0, max_value=max(0, len(text) - 1)))]
    return text


@st.composite
def hostile_batches(draw: st.DrawFn, max_size: int = 4) -> list[str]:
    """A micro-batch's values: hostile events, some of them sent again (the same meta.id twice)."""
    values = draw(st.lists(hostile_events(), min_size=1, max_size=max_size))
    repeats = draw(st.lists(st.sampled_from(values), max_size=2))
    return values + repeats


def storage_poison() -> list[str]:
    """Events that pass the schema but not the storage types, one per way each once stopped the whole stream."""
    changes: list[tuple[str, object]] = [
        ("meta.dt", "9999-12-31T23:59:59-05:00"),
        ("meta.dt", "0001-01-01T00:00:00+05:00"),
        ("revision.new", 2**63),
        ("length.new", 2**64 - 1),
        ("id", 2**63 + 7),
        ("log_id", 2**64 - 1),
        ("title", "Main\x00Page"),
        ("title", "T" * 3000),
        ("log_params", deeply_nested(400)),
    ]
    events = []
    for n, (path, value) in enumerate(changes):
        event = json.loads(json.dumps(recorded_events()[n]))
        event["meta"]["id"] = f"storage-poison-{n}"
        event["meta"]["dt"] = "2026-12-03T12:00:00Z"
        _set(event, path, value)
        events.append(as_topic_text(event, ensure_ascii=False))
    return events
