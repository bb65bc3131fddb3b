"""The durable resume position of the producer, and the bookkeeping that decides how far it may advance.

The position names the last SSE id such that it and every event before it were acknowledged by the broker. Events
after it may also be in the topic (acknowledged after the last save, before a crash); ``scan_from`` bounds where
they can be, per partition, so a restart reads just that tail and skips what is already there.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Position:
    last_event_id: str | None
    scan_from: dict[int, int] = field(default_factory=dict)


class AckTracker:
    """Sequence numbers for sent events; the watermark advances only over a contiguous run of acks."""

    def __init__(self, heads: dict[int, int] | None = None, last_event_id: str | None = None) -> None:
        self._lock = threading.Lock()
        self._next_seq = 0
        self._head = 0
        # seq -> [sse_id, partition, offset, done]
        self._pending: dict[int, list] = {}
        self._last_event_id = last_event_id
        # Highest offset per partition among events at or below the watermark.
        self._high = {p: h - 1 for p, h in (heads or {}).items()}

    def add(self, sse_id: str | None) -> int:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._pending[seq] = [sse_id, None, None, False]
            return seq

    def ack(self, seq: int, partition: int | None, offset: int | None) -> None:
        """Mark ``seq`` done (acknowledged, or dead-lettered with no partition)."""
        with self._lock:
            entry = self._pending[seq]
            entry[1], entry[2], entry[3] = partition, offset, True
            while self._head in self._pending and self._pending[self._head][3]:
                sse_id, part, off, _ = self._pending.pop(self._head)
                self._head += 1
                if sse_id is not None:
                    self._last_event_id = sse_id
                if part is not None and off is not None:
                    self._high[part] = max(self._high.get(part, -1), off)

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._pending)

    def awaited(self, besides: set[int] | frozenset[int] = frozenset()) -> int:
        """How many events, ``besides`` these, are neither acknowledged nor dead-lettered yet."""
        with self._lock:
            return sum(1 for seq, entry in self._pending.items() if not entry[3] and seq not in besides)

    def snapshot(self) -> Position:
        with self._lock:
            scan_from = {p: off + 1 for p, off in self._high.items()}
            for _id, part, off, done in self._pending.values():
                if done and part is not None and off is not None:
                    scan_from[part] = min(scan_from.get(part, off), off)
            return Position(self._last_event_id, scan_from)


class PositionStore:
    """The position as a small JSON file, replaced atomically and fsynced (a crash leaves the old or the new)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Position | None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return Position(data.get("last_event_id"), {int(p): int(o) for p, o in data.get("scan_from", {}).items()})

    def save(self, position: Position) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        payload = {
            "last_event_id": position.last_event_id,
            "scan_from": {str(p): o for p, o in sorted(position.scan_from.items())},
        }
        with open(tmp, "w") as out:
            json.dump(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
