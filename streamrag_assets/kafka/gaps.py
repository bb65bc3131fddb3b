"""Topic offsets that hold no record for Bronze: classified where they are found, kept in a ledger, and checked.

Every offset of the topic is in Bronze or explained here (ARCHITECTURE.md, "No silent gaps"). A reader of the topic
classifies an offset range that yields no records as one of:

- ``skipped``: the broker answered past it (a later record came, or the consumer's position moved beyond it):
  transaction markers, or a batch Tansu 0.6 counted in its high watermark but never wrote because it was killed in
  between (the producer wrote those events again elsewhere). No record is lost.
- ``no_records``: a range at the end of what was asked, below the high watermark, that a broker demonstrably
  answering still returns nothing for after the reader's idle time: the same Tansu crash, nothing written since.
- ``retention``: below the partition's beginning offset: the broker removed the records before they were read. They
  are lost: counted (``streamrag_stream_lost_records_total``), logged as an error, and alerted on.

A broker or storage that does not answer is never a gap: the reader waits for it and never ends its range early.

The ledger is a JSON-lines file per topic under ``<state_dir>/offset_gaps/``, not a Delta table: gaps are declared
inside Spark's Python workers (several processes, at times at once) and are rare, so a line appended under an
exclusive lock needs no commit protocol, the file stays small, and an operator can read it. A micro-batch that is
retried declares its gaps again; a gap already in the ledger is not written twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

SKIPPED = "skipped"
NO_RECORDS = "no_records"
RETENTION = "retention"
REASONS = (SKIPPED, NO_RECORDS, RETENTION)
LOST_REASONS = (RETENTION,)  # gaps whose offsets held records that never reached Bronze

Span = tuple[int, int]  # [start, end)


@dataclass(frozen=True)
class OffsetGap:
    topic: str
    partition: int
    start: int
    end: int  # exclusive
    reason: str
    detail: str = field(default="", compare=False)
    declared_at: float = field(default_factory=time.time, compare=False)

    @property
    def size(self) -> int:
        return self.end - self.start

    def describe(self) -> str:
        return f"{self.topic}[{self.partition}] offsets {self.start}..{self.end - 1} ({self.size}): {self.reason}"


def ledger_dir(state_dir: Path) -> Path:
    return state_dir / "offset_gaps"


class GapLedger:
    """The gaps declared for the topics of one platform: one JSON-lines file per topic in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, topic: str) -> Path:
        return self.directory / f"{topic}.jsonl"

    def record(self, gap: OffsetGap) -> bool:
        """Append ``gap`` unless the ledger already holds it; True when written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.path(gap.topic).open("a+", encoding="utf-8") as ledger:
            fcntl.flock(ledger, fcntl.LOCK_EX)  # writers in several processes: read-check-append as one step
            ledger.seek(0)
            if gap in _parse(ledger):
                return False
            ledger.write(json.dumps(asdict(gap), sort_keys=True) + "\n")
        return True

    def gaps(self, topic: str) -> list[OffsetGap]:
        path = self.path(topic)
        if not path.exists():
            return []
        with path.open(encoding="utf-8") as ledger:
            return list(_parse(ledger))

    def totals(self) -> dict[str, tuple[int, int]]:
        """reason -> (gaps, offsets) over every topic of the ledger (each reason present, 0 when none)."""
        totals = dict.fromkeys(REASONS, (0, 0))
        for path in sorted(self.directory.glob("*.jsonl")) if self.directory.exists() else []:
            for gap in self.gaps(path.stem):
                count, offsets = totals.get(gap.reason, (0, 0))
                totals[gap.reason] = (count + 1, offsets + gap.size)
        return totals


def _parse(lines: Iterable[str]) -> Iterator[OffsetGap]:
    for line in lines:
        if line.strip():
            yield OffsetGap(**json.loads(line))


def declare(gap: OffsetGap, ledger: GapLedger | None) -> None:
    """Log ``gap`` with its exact offsets and keep it in ``ledger`` (a reader without one only logs)."""
    if gap.reason in LOST_REASONS:
        log.error("%s records lost: removed by the broker before they were read (%s)", gap.describe(), gap.detail)
    else:
        log.warning("%s hold no records (%s)", gap.describe(), gap.detail)
    if ledger is not None:
        ledger.record(gap)


# --- the check: Bronze's offsets against the topic's ------------------------------------------------------------------


def offset_holes(offsets: pa.Array | pa.ChunkedArray, beginning: int) -> list[Span]:
    """The ranges of ``[beginning, max(offsets)]`` that no offset fills (duplicates allowed)."""
    import numpy as np  # here, not at the top: the producers import this module and need neither (~45 MiB each)

    values = np.unique(np.asarray(offsets.to_numpy(), dtype=np.int64))  # sorted
    values = values[values >= beginning]
    if not len(values):
        return []
    expected = np.concatenate(([beginning], values[:-1] + 1))  # each offset's predecessor's successor
    jumps = values > expected
    return [(int(s), int(e)) for s, e in zip(expected[jumps], values[jumps], strict=True)]


def subtract(holes: list[Span], explained: list[Span]) -> list[Span]:
    """The parts of ``holes`` that no span of ``explained`` covers."""
    left: list[Span] = []
    spans = sorted(explained)
    for start, end in holes:
        cursor = start
        for span_start, span_end in spans:
            if span_end <= cursor or span_start >= end:
                continue
            if span_start > cursor:
                left.append((cursor, span_start))
            cursor = max(cursor, span_end)
            if cursor >= end:
                break
        if cursor < end:
            left.append((cursor, end))
    return left


def unexplained_holes(
    bronze: pa.Table, topic: str, beginning: dict[int, int], gaps: list[OffsetGap]
) -> dict[int, list[Span]]:
    """Per partition, the offsets from the beginning to Bronze's highest that are neither in Bronze nor explained by
    a declared gap. ``bronze`` needs the topic, partition and offset columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = bronze.filter(pc.equal(bronze["topic"].cast(pa.string()), topic)) if len(bronze) else bronze
    found: dict[int, list[Span]] = {}
    for partition in sorted(pc.unique(rows["partition"]).to_pylist()) if len(rows) else []:
        offsets = rows.filter(pc.equal(rows["partition"], partition))["offset"]
        holes = offset_holes(offsets, beginning.get(partition, 0))
        explained = [(g.start, g.end) for g in gaps if g.topic == topic and g.partition == partition]
        left = subtract(holes, explained)
        if left:
            found[partition] = left
    return found
