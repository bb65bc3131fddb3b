"""Pure helpers over raw recentchange lines; the raw text itself is never rewritten."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from streamrag_assets.isotime import parse_iso_time

# The canary probe's own events (`streamrag canary`): processed and indexed like any edit, so that the probe measures
# the whole path, then kept out of user results by the API through their "probe" quality flag. (Wikimedia's own
# canary events, meta.domain "canary", are dropped in Silver.)
PROBE_WIKI = "streamrag_probe"


def try_parse(raw: str | bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def event_key(event: dict[str, Any] | None) -> bytes | None:
    """``wiki:title``, so a page's events land in one partition in order; None (any partition) when unknown."""
    if event is None:
        return None
    wiki, title = event.get("wiki"), event.get("title")
    if isinstance(wiki, str) and isinstance(title, str):
        return f"{wiki}:{title}".encode()
    return None


def event_time(event: dict[str, Any] | None) -> datetime | None:
    """``meta.dt`` as an aware UTC datetime, or None when absent or unparseable."""
    if event is None or not isinstance(event.get("meta"), dict):
        return None
    dt = event["meta"].get("dt")
    if not isinstance(dt, str):
        return None
    try:
        return parse_iso_time(dt, naive_tz=UTC)
    except ValueError:
        return None
