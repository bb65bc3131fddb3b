"""A Delta table appended to once per micro-batch stays small on disk and cheap to open: maintenance compacts it and
deletes what no current version needs, without losing a row or the record of which batches it holds; a maintenance
that fails costs no batch."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from streamrag_assets.streaming.delta import LAYERS, DeltaTables
from streamrag_assets.streaming.pipeline import write_layers
from streamrag_assets.streaming.transforms import ARROW_SCHEMAS, Layers
from streamrag_tests.harness import TODAY, silver_rows


def data_files(table_dir: Path) -> list[Path]:
    return [p for p in table_dir.rglob("*.parquet") if "_delta_log" not in p.parts]


def test_maintenance_compacts_and_deletes_old_files_and_keeps_every_row_and_batch_record(tmp_path) -> None:
    # Retention 0: files removed from the table are deleted by the next maintenance (the setting's floor is 1 minute).
    delta = DeltaTables(tmp_path, maintain_every=20, retention_minutes=0)
    maintained = 0
    for batch in range(1, 61):
        assert delta.write_once(
            "silver", silver_rows([f"e{batch}-a", f"e{batch}-b"], TODAY, batch), "app-silver", batch
        )
        if delta.maintenance_due("silver"):
            delta.maintain("silver")
            maintained += 1
    assert maintained == 3, "every 20 appends"

    rows = delta.read("silver", ["event_id", "batch_id"])
    assert len(rows) == 120 and pc.count_distinct(rows["event_id"]).as_py() == 120, "no row lost or doubled"
    # One compacted file per partition (one date here), instead of one per batch; no stale log entries.
    assert len(data_files(tmp_path / "silver")) == 1
    log_entries = list((tmp_path / "silver" / "_delta_log").glob("*.json"))
    assert len(log_entries) < 10, sorted(p.name for p in log_entries)

    # The batch record survives compaction and log clean-up: a replayed batch still writes nothing twice.
    assert not delta.write_once("silver", silver_rows(["e7-a", "e7-b"], TODAY, 7), "app-silver", 7)
    # And a table reopened from its path (another process) sees the same.
    reopened = DeltaTables(tmp_path)
    assert reopened.committed("silver", "app-silver", 60)
    assert len(reopened.read("silver", ["event_id"])) == 120


def test_maintenance_keeps_files_a_reader_of_a_recent_version_may_still_need(tmp_path) -> None:
    delta = DeltaTables(tmp_path, maintain_every=5, retention_minutes=60)
    for batch in range(1, 6):
        delta.write_once("silver", silver_rows([f"e{batch}"], TODAY, batch), "app-silver", batch)
    before = set(data_files(tmp_path / "silver"))
    done = delta.maintain("silver")
    assert done == {"files_compacted": 5, "files_deleted": 0}
    assert before <= set(data_files(tmp_path / "silver")), "compacted files stay within the retention"
    assert len(delta.read("silver", ["event_id"])) == 5


def test_a_batch_with_no_rows_for_a_table_commits_nothing(tmp_path) -> None:
    delta = DeltaTables(tmp_path)
    delta.write_once("silver", silver_rows(["a"], TODAY, 1), "app-silver", 1)
    version = delta.version("silver")
    assert not delta.write_once("silver", silver_rows([], TODAY, 2), "app-silver", 2)
    assert delta.version("silver") == version
    assert delta.version("quarantine") is None


def layer_rows(layer: str, batch: int) -> pa.Table:
    """Two rows for ``layer``'s schema: the ids, date and batch filled in, everything else null."""
    schema = ARROW_SCHEMAS[layer]
    filled = {
        "event_id": [f"e{batch}-a", f"e{batch}-b"],
        "doc_id": [f"d{batch}-a", f"d{batch}-b"],
        "event_date": [TODAY, TODAY],
        "batch_id": [batch, batch],
        "offset": [2 * batch, 2 * batch + 1],
    }
    columns = {f.name: pa.array(filled[f.name], f.type) if f.name in filled else pa.nulls(2, f.type) for f in schema}
    return pa.table(columns, schema=schema)


class UnreachableOnce(DeltaTables):
    """A store whose first maintenance of each table fails, as an object store that is briefly unreachable would."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failed: set[str] = set()

    def maintain(self, layer: str) -> dict[str, int]:
        if layer not in self.failed:
            self.failed.add(layer)
            self._appends[layer] = 0  # as the real one: the next try is at the next due point
            raise OSError("object store unreachable")
        return super().maintain(layer)


def test_a_failed_maintenance_loses_no_batch_and_is_tried_again_at_the_next_due_point(tmp_path, caplog) -> None:
    delta = UnreachableOnce(tmp_path, maintain_every=3, retention_minutes=0)
    for batch in range(1, 8):
        layers = Layers(**{layer: layer_rows(layer, batch) for layer in LAYERS})
        phases: dict[str, float] = {}
        versions = write_layers(delta, layers, batch, phases)
        assert all(version is not None for version in versions.values()), versions
        if batch == 3:
            assert "maintain_silver" in phases  # timed although it failed
    assert "maintaining the silver table failed; the stream goes on" in caplog.text
    for layer in LAYERS:
        assert len(delta.read(layer, ["batch_id"])) == 14, f"{layer}: every batch's rows"
    # Batch 6's maintenance ran: batches 1-6 in one file, batch 7 in its own.
    assert len(data_files(tmp_path / "silver")) == 2


def test_files_compacted_away_are_deleted_once_past_the_retention_however_many_commits_came_between(
    tmp_path,
) -> None:
    """delta-rs checkpoints a table by itself every 100 commits, and a checkpoint forgets removals past the retention:
    a removal that expired before such a checkpoint was never seen by a vacuum, and its file stayed for good (a
    two-hour soak kept 98% dead files)."""
    delta = DeltaTables(tmp_path, maintain_every=120, retention_minutes=1)
    # The setting's floor is a minute; 5 seconds keep the test short, and a loaded machine's pause between a
    # compaction and its vacuum (over a second, seen beside a soak) does not expire what the compaction removed.
    delta.retention = "interval 5 seconds"
    batch = 0
    for round_ in range(2):
        for _ in range(120):  # more than 100 commits after the last maintenance
            batch += 1
            delta.write_once("silver", silver_rows([f"e{batch}"], TODAY, batch), "app-silver", batch)
        done = delta.maintain("silver")
        if round_ == 0:
            assert done == {"files_compacted": 120, "files_deleted": 0}
            time.sleep(5.5)  # what this compaction removed is past the retention before the next 120 commits
    assert done == {"files_compacted": 121, "files_deleted": 120}, "the first round's files, past the retention"
    # On disk: the current file, and the 121 the last compaction removed (within the retention).
    assert len(data_files(tmp_path / "silver")) == 1 + 121
    assert len(delta.read("silver", ["event_id"])) == 240


def test_files_no_version_knows_of_are_swept_once_an_hour_old_and_the_table_keeps_every_row(tmp_path) -> None:
    """Files in a table's folder that no version of it knows of (a write that never committed, removals a checkpoint
    forgot before a vacuum saw them — every table maintained before delta-rs' own checkpoints were turned off holds
    thousands) are deleted by maintenance once older than an hour; a newer one may be a write still in progress."""
    import os
    import shutil

    delta = DeltaTables(tmp_path, maintain_every=5, retention_minutes=60)
    for batch in range(1, 6):
        delta.write_once("silver", silver_rows([f"e{batch}"], TODAY, batch), "app-silver", batch)
    table_files = data_files(tmp_path / "silver")
    stale, fresh = (table_files[0].with_name(f"part-00000-{name}-c000.snappy.parquet") for name in ("stale", "fresh"))
    for orphan in (stale, fresh):
        shutil.copy(table_files[0], orphan)
    two_hours_ago = time.time() - 2 * 3600
    os.utime(stale, (two_hours_ago, two_hours_ago))
    os.utime(table_files[1], (two_hours_ago, two_hours_ago))  # an old file the table still holds

    delta.maintain("silver")  # the first maintenance of a process sweeps
    left = set(data_files(tmp_path / "silver"))
    assert stale not in left, "an unknown file older than an hour is deleted"
    assert fresh in left, "a newer one stays: it may belong to a write in progress"
    assert table_files[1] in left, "as does every file a version within the retention reads"
    assert len(delta.read("silver", ["event_id"])) == 5


def active_files(delta: DeltaTables, layer: str) -> dict[str, int]:
    table = delta.table(layer)
    assert table is not None
    actions = pa.table(table.get_add_actions(flatten=True))
    return dict(zip(actions["path"].to_pylist(), actions["size_bytes"].to_pylist(), strict=True))


def test_each_maintenance_rewrites_a_bounded_amount_however_large_the_table(tmp_path) -> None:
    """Compaction merges the files below its target only: with delta-rs' default target (100 MB) a table's one
    compacted file, growing, was rewritten whole at every maintenance, its cost rising with the table (1.3 → 2.4 s a
    table over a soak's minutes 20–50). With a 1 MB target the table grows to 7 MB and no maintenance rewrites more
    than 4."""
    delta = DeltaTables(tmp_path, maintain_every=8, retention_minutes=60, compact_target_mb=1)
    schema = ARROW_SCHEMAS["bronze"]
    rng = random.Random(5)
    rewritten: list[int] = []
    for batch in range(1, 49):
        values = ["".join(rng.choices("0123456789abcdef", k=200)) for _ in range(1500)]  # ~150 kB compressed
        columns = {f.name: pa.nulls(len(values), f.type) for f in schema}
        columns |= {
            "value": pa.array(values),
            "offset": pa.array(range(batch * 1500, (batch + 1) * 1500), pa.int64()),
            "batch_id": pa.array([batch] * len(values), pa.int64()),
        }
        assert delta.write_once("bronze", pa.table(columns, schema=schema), "app-bronze", batch)
        if delta.maintenance_due("bronze"):
            before = active_files(delta, "bronze")
            delta.maintain("bronze")
            after = active_files(delta, "bronze")
            rewritten.append(sum(size for path, size in before.items() if path not in after))
    assert len(rewritten) == 6 and sum(after.values()) > 6 << 20, "the table grew well past the target"
    assert max(rewritten) < 4 << 20, [round(r / 2**20, 2) for r in rewritten]
    offsets = delta.read("bronze", ["offset"])["offset"]
    assert len(offsets) == 48 * 1500 and pc.count_distinct(offsets).as_py() == 48 * 1500, "no row lost or doubled"
