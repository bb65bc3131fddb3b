"""Silver's duplicate check answered from memory: same answers as the Delta table, without scanning it each batch."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from streamrag_assets.streaming.dedupe import SeenEvents
from streamrag_assets.streaming.delta import DeltaTables
from streamrag_tests.harness import TODAY, silver_rows


def write(delta: DeltaTables, rows: pa.Table, batch: int) -> None:
    assert delta.write_once("silver", rows, "test-silver", batch)


def test_finds_what_silver_holds_from_earlier_processes_and_from_its_own_writes(tmp_path) -> None:
    delta = DeltaTables(tmp_path)
    write(delta, silver_rows(["a", "b"], TODAY, 1), 1)
    seen = SeenEvents(delta)
    assert seen.existing(silver_rows(["a", "x"], TODAY, 2), exclude_batch=2) == {"a"}
    written = silver_rows(["x", "y"], TODAY, 2)
    write(delta, written, 2)
    seen.add(written)
    # "y" was written after the date was loaded: memory alone knows it (and the table confirms it).
    assert seen.existing(silver_rows(["y", "z", "b"], TODAY, 3), exclude_batch=3) == {"y", "b"}
    assert seen.existing(silver_rows(["new-1", "new-2"], TODAY, 3), exclude_batch=3) == set()


def as_spark_hands_it_over(rows: pa.Table) -> pa.Table:
    return rows.set_column(0, "event_id", rows["event_id"].cast(pa.string_view()))


def test_string_view_ids_from_spark_are_looked_up(tmp_path) -> None:
    delta = DeltaTables(tmp_path)
    write(delta, as_spark_hands_it_over(silver_rows(["a", "b"], TODAY, 1)), 1)
    batch = as_spark_hands_it_over(silver_rows(["a", "x"], TODAY, 2))
    assert SeenEvents(delta).existing(batch, exclude_batch=2) == {"a"}
    assert delta.existing_event_ids(batch, exclude_batch=2) == {"a"}


def test_a_rerun_batch_is_not_a_duplicate_of_itself(tmp_path) -> None:
    delta = DeltaTables(tmp_path)
    write(delta, silver_rows(["a"], TODAY, 1), 1)
    write(delta, silver_rows(["b", "c"], TODAY, 2), 2)  # batch 2 committed to Silver, then the process died
    seen = SeenEvents(delta)
    assert seen.existing(silver_rows(["b", "c", "a"], TODAY, 2), exclude_batch=2) == {"a"}


def test_old_dates_are_asked_of_the_table(tmp_path) -> None:
    delta = DeltaTables(tmp_path)
    old = TODAY - dt.timedelta(days=5)
    write(delta, silver_rows(["late"], old, 1), 1)
    write(delta, silver_rows(["now"], TODAY, 2), 2)
    seen = SeenEvents(delta, keep_days=2)
    assert seen.existing(silver_rows(["now"], TODAY, 3), exclude_batch=3) == {"now"}
    batch = pa.concat_tables([silver_rows(["late", "other"], old, 3), silver_rows(["fresh"], TODAY, 3)])
    assert seen.existing(batch, exclude_batch=3) == {"late"}
    assert old not in seen._dates  # not held in memory


def test_memory_answers_without_the_table_for_new_events(tmp_path, monkeypatch) -> None:
    delta = DeltaTables(tmp_path)
    write(delta, silver_rows([f"id-{i}" for i in range(1000)], TODAY, 1), 1)
    seen = SeenEvents(delta)
    seen.existing(silver_rows(["warm"], TODAY, 2), exclude_batch=2)  # loads the date once

    def no_scan(*args, **kwargs):
        raise AssertionError("the table was scanned for events memory proves new")

    monkeypatch.setattr(delta, "existing_event_ids", no_scan)
    monkeypatch.setattr(delta, "read", no_scan)
    assert seen.existing(silver_rows([f"new-{i}" for i in range(500)], TODAY, 2), exclude_batch=2) == set()
