"""Property-based fuzzing of the refine step that both paths run (`refine_batches`: the driver's `refine_arrow` and
Spark's ``mapInArrow``): hostile events never raise, each record ends in exactly one place with a reason, and what
reaches the tables fits their storage types (written to real Delta tables at the end).

CI runs ``STREAMRAG_FUZZ_EXAMPLES`` (default 4,000) examples with a fixed seed; `make fuzz` runs 100,000.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import HealthCheck, given, seed, settings

from streamrag_assets.streaming.delta import LAYERS, DeltaTables
from streamrag_assets.streaming.refine import INT64_RANGE
from streamrag_assets.streaming.transforms import refine_arrow, split_layers
from streamrag_tests.harness import bronze_table
from streamrag_tests.hostile import hostile_batches

EXAMPLES = int(os.environ.get("STREAMRAG_FUZZ_EXAMPLES", "4000"))
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class Collected:
    """The layers the examples produce, written to real Delta tables through the stream's own writer every
    ``flush_every`` examples (one write per table, not per example; memory stays bounded at 100,000 examples)."""

    def __init__(self, root: Path, flush_every: int = 2_000) -> None:
        self.delta = DeltaTables(root)
        self.flush_every = flush_every
        self.pending: dict[str, list[pa.Table]] = {layer: [] for layer in LAYERS}
        self.written = dict.fromkeys(LAYERS, 0)
        self.examples = 0
        self.writes = 0
        self.offset = 0
        self.reasons: dict[str, int] = {}

    def add(self, layers) -> None:
        for layer in LAYERS:
            self.pending[layer].append(getattr(layers, layer))
        self.examples += 1
        if self.examples % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        self.writes += 1
        for layer in LAYERS:
            if self.pending[layer]:
                table = pa.concat_tables(self.pending[layer])
                self.delta.write_once(layer, table, f"fuzz-{layer}", self.writes)
                self.written[layer] += len(table)
            self.pending[layer] = []


def check_batch(values: list[str], collected: Collected) -> None:
    bronze = bronze_table(values, collected.offset, collected.offset, NOW)
    collected.offset += len(values)
    refined = refine_arrow(bronze)  # must not raise, whatever the values
    layers = split_layers(refined, set(), NOW)
    counts = layers.counts
    # Every record is accounted for exactly once.
    assert counts["bronze"] == len(values)
    assert counts["silver"] + counts["quarantine"] + counts["canary"] + counts["duplicate"] == len(values)
    silver_offsets = set(layers.silver["offset"].to_pylist())
    quarantine_offsets = set(layers.quarantine["offset"].to_pylist())
    assert not silver_offsets & quarantine_offsets
    assert len(silver_offsets) == len(layers.silver) and len(quarantine_offsets) == len(layers.quarantine)
    assert set(layers.gold["offset"].to_pylist()) <= silver_offsets
    # A quarantined record keeps its raw value and says why.
    reasons = layers.quarantine["reason"].to_pylist()
    assert all(reason for reason in reasons)
    assert layers.quarantine["value"].to_pylist() == [
        values[offset - bronze["offset"][0].as_py()] for offset in layers.quarantine["offset"].to_pylist()
    ]
    for reason in reasons:
        kind = reason.split(":")[0]
        collected.reasons[kind] = collected.reasons.get(kind, 0) + 1
    # What is accepted is inside the ranges its storage holds.
    if len(layers.silver):
        for column in ("length_old", "length_new", "revision_old", "revision_new", "rc_id", "log_id"):
            low, high = pc.min_max(layers.silver[column]).values()
            assert low.as_py() is None or INT64_RANGE[0] <= low.as_py() <= high.as_py() <= INT64_RANGE[1]
        assert pc.min(pc.year(layers.silver["event_time"])).as_py() >= 2001
        for column in ("title", "wiki", "user", "comment"):
            assert not pc.any(pc.match_substring(layers.silver[column], "\x00")).as_py()
    collected.add(layers)


def test_hostile_events_never_escape_and_every_record_lands_once() -> None:
    with tempfile.TemporaryDirectory() as root:
        collected = Collected(Path(root))

        @seed(20261203)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        )
        @given(hostile_batches())
        def examples(values: list[str]) -> None:
            check_batch(values, collected)

        examples()
        collected.flush()
        # The examples reached the interesting outcomes, not only one of them.
        assert collected.written["silver"] > collected.examples // 20
        assert collected.written["gold"] > 0
        assert {"invalid_json", "wrong_type", "out_of_range", "invalid_time"} <= set(collected.reasons), (
            collected.reasons
        )
        # And all of it is in the Delta tables, through the stream's own writer.
        for layer in LAYERS:
            assert len(collected.delta.read(layer)) == collected.written[layer], layer
