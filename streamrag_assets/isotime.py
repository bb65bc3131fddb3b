"""ISO-8601 times as users, Wikimedia EventStreams and Dagster's launchpad write them."""

from __future__ import annotations

from datetime import datetime, tzinfo


def parse_iso_time(text: str, naive_tz: tzinfo | None = None) -> datetime:
    """``text`` as a datetime; a ``Z`` suffix means UTC. A time without an offset gets ``naive_tz`` (None: it stays
    naive). Raises ValueError when ``text`` is not ISO-8601."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None or naive_tz is None else parsed.replace(tzinfo=naive_tz)
