"""The classification of offsets without records, the ledger, and the holes the Bronze check looks for: plain
functions over plain data (the broker side is in streamrag_tests/integration/test_offset_gaps.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from prometheus_client import CollectorRegistry, generate_latest

from streamrag_assets.kafka.gaps import (
    LOST_REASONS,
    NO_RECORDS,
    RETENTION,
    SKIPPED,
    GapLedger,
    OffsetGap,
    offset_holes,
    subtract,
)
from streamrag_assets.kafka.offsets import (
    FETCH_AGAIN,
    WAIT_FOR_BROKER,
    WAIT_FOR_HEAD,
    PartitionView,
    silence_verdict,
)
from streamrag_assets.metrics import OffsetGapCounters


def test_a_quiet_range_is_a_gap_only_below_the_head_of_a_broker_that_answers() -> None:
    assert silence_verdict(None, 100, 110) == WAIT_FOR_BROKER, "no answer (broker or storage down): wait"
    assert silence_verdict(PartitionView(0, 110, None), 100, 110) == NO_RECORDS
    assert silence_verdict(PartitionView(0, 130, 120), 100, 110) == NO_RECORDS, "a later record: nothing to come"
    assert silence_verdict(PartitionView(0, 105, None), 100, 110) == WAIT_FOR_HEAD, "not written yet"
    assert silence_verdict(PartitionView(0, None, None), 100, 110) == WAIT_FOR_HEAD, "out of range past the head"
    assert silence_verdict(PartitionView(0, 110, 104), 100, 110) == FETCH_AGAIN, "the broker holds one of them"
    # Records below the beginning offset were removed by retention: lost, whatever else the broker says.
    assert silence_verdict(PartitionView(103, 110, 103), 100, 110) == RETENTION
    assert silence_verdict(PartitionView(500, 600, 500), 100, 110) == RETENTION


def test_holes_in_offsets_from_the_beginning_and_what_explains_them() -> None:
    offsets = pa.chunked_array([[3, 4, 4, 6], [10, 9, 11]])
    assert offset_holes(offsets, 0) == [(0, 3), (5, 6), (7, 9)]
    assert offset_holes(offsets, 4) == [(5, 6), (7, 9)]
    assert offset_holes(pa.chunked_array([[]], pa.int64()), 0) == []
    assert subtract([(0, 3), (5, 6), (7, 9)], [(0, 2), (5, 6), (8, 20)]) == [(2, 3), (7, 8)]
    assert subtract([(0, 10)], [(2, 3), (5, 7)]) == [(0, 2), (3, 5), (7, 10)]


def test_the_ledger_keeps_each_gap_once_and_counts_lost_records(tmp_path: Path) -> None:
    ledger = GapLedger(tmp_path / "offset_gaps")
    assert ledger.totals() == {SKIPPED: (0, 0), NO_RECORDS: (0, 0), RETENTION: (0, 0)}
    assert ledger.record(OffsetGap("t", 0, 5, 6, SKIPPED, "marker"))
    assert not ledger.record(OffsetGap("t", 0, 5, 6, SKIPPED, "declared again by a retried batch"))
    assert ledger.record(OffsetGap("t", 1, 0, 40, RETENTION))
    assert ledger.record(OffsetGap("u", 0, 7, 9, NO_RECORDS))
    assert [g.partition for g in ledger.gaps("t")] == [0, 1]
    assert ledger.totals() == {SKIPPED: (1, 1), NO_RECORDS: (1, 2), RETENTION: (1, 40)}

    registry = CollectorRegistry()
    registry.register(OffsetGapCounters(ledger.totals, LOST_REASONS))
    exposed = generate_latest(registry).decode()
    assert 'streamrag_stream_lost_records_total{reason="retention"} 40.0' in exposed
    assert 'streamrag_stream_offset_holes_total{reason="skipped"} 1.0' in exposed
    assert 'streamrag_stream_lost_records_total{reason="skipped"}' not in exposed, "skipped offsets held no record"
