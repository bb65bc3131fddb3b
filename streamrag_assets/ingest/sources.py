"""Offline event sources: the bundled recording replayed in a loop, and a synthetic schema-following generator.

Both are deterministic functions of a sequence number (and a seed), so a restarted server resumes with exactly the
events it would have sent; only ``meta.dt``/``timestamp`` follow the wall clock, as on the live stream.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

EventFactory = Callable[[int], str]

_ID_NAMESPACE = uuid.UUID("1f0c7a36-3c55-4b8e-9a0e-5f2d8c1e7b42")


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=1)
def recorded_events() -> tuple[dict[str, Any], ...]:
    text = resources.files("streamrag_assets.ingest").joinpath("data/recentchange_sample.ndjson").read_text()
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def recorded_event(seq: int, seed: str = "replay") -> str:
    """Recorded event ``seq % N`` with fresh ids and times; each loop gets distinct revision and rc ids."""
    events = recorded_events()
    loop, index = divmod(seq, len(events))
    event = json.loads(json.dumps(events[index]))  # deep copy
    now = _now()
    event["meta"]["id"] = str(uuid.uuid5(_ID_NAMESPACE, f"{seed}:{seq}"))
    event["meta"]["dt"] = _iso(now)
    event["timestamp"] = int(now.timestamp())
    if loop:
        event["id"] = event["id"] + loop * 10_000_000_000
        if isinstance(event.get("revision"), dict):
            for side in ("old", "new"):
                if event["revision"].get(side):
                    event["revision"][side] += loop * 1_000_000_000
        if event.get("notify_url") and isinstance(event.get("revision"), dict):
            rev = event["revision"]
            event["notify_url"] = (
                f"{event['server_url']}{event['server_script_path']}/index.php?diff={rev['new']}&oldid={rev.get('old')}"
            )
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


# --- synthetic --------------------------------------------------------------------------------------------------

WIKIS = [
    ("enwiki", "en.wikipedia.org", "en"),
    ("dewiki", "de.wikipedia.org", "de"),
    ("frwiki", "fr.wikipedia.org", "fr"),
    ("jawiki", "ja.wikipedia.org", "ja"),
    ("ruwiki", "ru.wikipedia.org", "ru"),
    ("arwiki", "ar.wikipedia.org", "ar"),
    ("zhwiki", "zh.wikipedia.org", "zh"),
    ("hewiki", "he.wikipedia.org", "he"),
    ("commonswiki", "commons.wikimedia.org", "commons"),
    ("wikidatawiki", "www.wikidata.org", "wikidata"),
]
TITLES = [
    "Solar eclipse",
    "Berlin",
    "Tokyo Tower",
    "Ada Lovelace",
    "Москва",
    "القاهرة",
    "北京市",
    "ירושלים",
    "Café au lait",
    "Zürich",
    "Naïve Bayes classifier",
    "Emoji 🎉 test",
    "Łódź",
    "C++",
    "Talk:Climate change",
    "Category:Living people",
    "File:Sunset.jpg",
    "Q42",
    "Mount Everest",
    "<script>alert(1)</script>",
]
USERS = ["Alice", "Bob", "203.0.113.7", "Ünïcödé", "InternetArchiveBot", "ClueBot NG", "Владимир", "编辑者"]
COMMENTS = [
    "/* History */ fixed a typo",
    "Reverted edits by 203.0.113.7",
    "Added citation",
    "copyedit",
    "",
    "Updating population figures from the 2020 census",
    "rm vandalism",
    "[[WP:AES|←]]Created page with 'x'",
]
LOG_ACTIONS = [("delete", "delete"), ("move", "move"), ("protect", "protect"), ("delete", "restore")]
MALFORMED_KINDS = ("invalid_json", "missing_meta", "wrong_types", "not_an_object")


def synthetic_event(seq: int, seed: int = 0, malformed_fraction: float = 0.0, canary_fraction: float = 0.002) -> str:
    """The ``seq``-th event of a deterministic synthetic recentchange stream."""
    rng = random.Random(seed * 1_000_003 + seq)
    roll = rng.random()
    if roll < malformed_fraction:
        return _malformed(seq, rng)
    event = _well_formed(seq, seed, rng)
    if rng.random() < canary_fraction:
        event["meta"]["domain"] = "canary"
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def _well_formed(seq: int, seed: int, rng: random.Random) -> dict[str, Any]:
    wiki, domain, _lang = rng.choice(WIKIS)
    title = rng.choice(TITLES) + ("" if rng.random() < 0.7 else f" ({seq % 997})")
    kind = rng.choices(["edit", "new", "log", "categorize"], weights=[70, 10, 10, 10])[0]
    now = _now()
    bot = rng.random() < 0.15
    user = rng.choice(USERS[4:6] if bot else USERS)
    comment = rng.choice(COMMENTS)
    if rng.random() < 0.005:
        comment = "huge comment " + "x" * 60_000
    rc_id = 5_000_000_000 + seq
    event: dict[str, Any] = {
        "$schema": "/mediawiki/recentchange/1.0.0",
        "meta": {
            "uri": f"https://{domain}/wiki/{title.replace(' ', '_')}",
            "request_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "dt": _iso(now),
            "domain": domain,
            "stream": "mediawiki.recentchange",
        },
        "id": rc_id,
        "type": kind,
        "namespace": 14 if title.startswith("Category:") else rng.choice([0, 0, 0, 1, 2, 4]),
        "title": title,
        "title_url": f"https://{domain}/wiki/{title.replace(' ', '_')}",
        "comment": comment,
        "timestamp": int(now.timestamp()),
        "user": user,
        "bot": bot,
        "server_url": f"https://{domain}",
        "server_name": domain,
        "server_script_path": "/w",
        "wiki": wiki,
        "parsedcomment": f'<span dir="auto">{comment[:200]}</span>',
    }
    if kind in ("edit", "new"):
        old_len = 0 if kind == "new" else rng.randint(100, 200_000)
        rev_new = 2_000_000_000 + seed * 10_000_000 + seq
        event |= {
            "minor": rng.random() < 0.2,
            "patrolled": rng.random() < 0.5,
            "length": {"old": None if kind == "new" else old_len, "new": max(0, old_len + rng.randint(-500, 2000))},
            "revision": {"old": None if kind == "new" else rev_new - 1, "new": rev_new},
            "notify_url": f"https://{domain}/w/index.php?diff={rev_new}&oldid={rev_new - 1}",
        }
        if kind == "new":
            del event["length"]["old"], event["revision"]["old"]
    elif kind == "log":
        log_type, action = rng.choice(LOG_ACTIONS)
        event |= {
            "log_id": 900_000_000 + seq,
            "log_type": log_type,
            "log_action": action,
            "log_action_comment": comment,
            "log_params": {},
        }
        if log_type == "move":
            event["log_params"] = {"target": f"{title} (moved)", "noredir": "1"}
    return event


def _malformed(seq: int, rng: random.Random) -> str:
    kind = MALFORMED_KINDS[seq % len(MALFORMED_KINDS)] if rng.random() < 0.9 else rng.choice(MALFORMED_KINDS)
    if kind == "invalid_json":
        return '{"meta": {"id": "broken-' + str(seq) + '", "dt": "2026-01-01T00:00:00Z"}, "title": "unterminated'
    if kind == "missing_meta":
        return json.dumps({"type": "edit", "title": f"No meta {seq}", "wiki": "enwiki"})
    if kind == "wrong_types":
        return json.dumps(
            {
                "meta": {"id": f"wrong-{seq}", "dt": 12345, "domain": "en.wikipedia.org"},
                "type": 7,
                "namespace": "zero",
                "title": ["list"],
                "wiki": None,
                "timestamp": "soon",
            }
        )
    return json.dumps([seq, "an array, not an event"])


def file_events(path: Path) -> list[str]:
    """The events of an NDJSON file as the lines to send: verbatim (only LF ends a line), blank lines skipped."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [line for line in handle.read().split("\n") if line.strip()]


def event_factory(source: str, seed: int = 0, malformed_fraction: float = 0.0) -> EventFactory:
    if source == "recording":
        return lambda seq: recorded_event(seq, seed=f"replay-{seed}")
    if source == "synthetic":
        return lambda seq: synthetic_event(seq, seed=seed, malformed_fraction=malformed_fraction)
    raise ValueError(f"unknown offline source {source!r}: expected recording or synthetic")
