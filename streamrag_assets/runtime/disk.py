"""Free space where the platform writes: the state directory holds the Delta tables, the checkpoints, the ingest
position, the embedded servers' data and the logs. A full disk makes every writer fail at once, and the logs may be
on it too, so the supervisor and `status` look at the filesystem itself and say so in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

# Below this much free space, writers fail or are about to: a micro-batch's Delta files, Spark's checkpoint files,
# Postgres' WAL segments (16 MiB each) all need some room.
LOW_SPACE_BYTES = 64 * 1024 * 1024


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def space_problem(path: Path, low_bytes: int = LOW_SPACE_BYTES) -> str | None:
    """A one-line description when the filesystem holding ``path`` is (nearly) full, else None."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        usage = shutil.disk_usage(existing)
    except OSError:
        return None
    if usage.free >= low_bytes:
        return None
    return (
        f"the disk of {path} is full ({human_bytes(usage.free)} free of {human_bytes(usage.total)}): writes fail "
        "until space is freed; the services resume by themselves then"
    )
