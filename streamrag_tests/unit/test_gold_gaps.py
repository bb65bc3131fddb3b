"""The Gold gap fill against real Delta tables written by the stream's own writer: a batch whose Silver is committed
and whose Gold is not yet (the four tables are written at once) is the stream's while Spark has not committed it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow.compute as pc

from streamrag_assets.operations.gold_gaps import fill_gold_gaps
from streamrag_assets.streaming.checkpoint import checkpoint_root
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_assets.streaming.pipeline import write_layers
from streamrag_assets.streaming.transforms import refine_arrow, split_layers
from streamrag_tests.harness import RECORDING, bronze_table, isolated_settings

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _spark_commits(settings, batch_id: int) -> None:
    """What Spark's checkpoint holds once a micro-batch's ``foreachBatch`` returned."""
    commits = checkpoint_root(settings) / "epoch-0" / "commits"
    commits.mkdir(parents=True, exist_ok=True)
    (commits / str(batch_id)).write_text('v1\n{"nextBatchWatermarkMs":0}')


def test_a_batch_the_stream_has_not_finished_is_left_to_it_and_a_gap_behind_it_is_filled(tmp_path) -> None:
    settings = isolated_settings(tmp_path)
    delta = DeltaTables.from_settings(settings)
    values = RECORDING.read_text().splitlines()  # 100 real events
    for batch_id, first in ((0, 0), (1, 50)):
        bronze = bronze_table(values[first : first + 50], first, batch_id, NOW)
        layers = split_layers(refine_arrow(bronze), set(), NOW)
        if batch_id == 1:  # cut short between Silver's commit and Gold's, as a reader may see it
            documents_of_1 = layers.gold["event_id"].to_pylist()
            layers.gold = layers.gold.slice(0, 0)
        write_layers(delta, layers, batch_id, {})
    _spark_commits(settings, 0)
    gold = delta.read("gold")
    silver = delta.read("silver")
    unfinished = silver.filter(pc.equal(silver["batch_id"], 1))
    assert len(gold) > 20 and len(documents_of_1) > 20, "the recording's events make documents in both batches"
    lost = sorted(gold["event_id"].to_pylist())[::4]  # and a true gap in the finished batch
    delta.table("gold").delete(f"event_id IN ({', '.join(repr(e) for e in lost)})")
    since = min(silver["event_time"].to_pylist()) - timedelta(seconds=1)
    until = max(silver["event_time"].to_pylist()) + timedelta(seconds=1)

    counts = fill_gold_gaps(settings, since, until)
    after = delta.read("gold", ["event_id"])["event_id"].to_pylist()
    assert counts["restored"] == len(lost), "the gap behind the stream is filled"
    assert sorted(after) == sorted(gold["event_id"].to_pylist()), "and nothing else"
    assert counts["left_to_stream"] == len(unfinished), "the unfinished batch is left to the stream"

    # Spark committed batch 1 (its Gold lost since, say): now what it lacks is a gap.
    _spark_commits(settings, 1)
    counts = fill_gold_gaps(settings, since, until)
    after = delta.read("gold", ["event_id"])["event_id"].to_pylist()
    assert counts["left_to_stream"] == 0 and counts["restored"] == len(documents_of_1)
    assert sorted(after) == sorted(gold["event_id"].to_pylist() + documents_of_1), "each document once"
