"""The Delta tables (delta-rs), written idempotently per micro-batch.

Each write carries an app transaction ``(app_id, batch_id)`` in the same commit as the data; a write whose batch the
table already recorded is skipped. So a crash between a Delta commit and Spark's checkpoint commit (the batch is
replayed with the same id and offsets) writes nothing twice: Kafka -> Delta is exactly-once.

A table appended to once per micro-batch gains a small file and a log entry each time, and an append's cost grows with
both (CPU per 60-row Silver append, measured: 112 ms after 500 appends, 194 after 1,500, and growing).
`DeltaTables.maintain` (the stream runs it every ``maintain_every`` appends to a table) compacts the small files,
deletes the files and log entries older than ``retention`` that no version within it needs, and checkpoints: with it,
the cost stays flat (`benchmarks/delta_append.py`). There is no time travel past ``retention``; nothing here reads
old versions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError

from streamrag_assets.streaming.transforms import ARROW_SCHEMAS

if TYPE_CHECKING:
    from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

LAYERS = ("bronze", "silver", "quarantine", "gold")
PARTITIONS = {"silver": ["event_date"], "gold": ["event_date"]}


class DeltaTables:
    def __init__(self, root: Path, maintain_every: int = 100, retention_minutes: int = 10) -> None:
        self.root = root
        self.maintain_every = maintain_every
        self.retention = f"interval {retention_minutes} minutes"
        self._open: dict[str, DeltaTable] = {}
        self._appends: dict[str, int] = {}  # appends since this process last maintained each table

    @classmethod
    def from_settings(cls, settings: Settings) -> DeltaTables:
        """The platform's tables under the state directory, maintained as the settings say."""
        return cls(settings.state_dir / "delta", settings.delta_maintain_every, settings.delta_retention_minutes)

    def path(self, layer: str) -> str:
        return str(self.root / layer)

    def table(self, layer: str) -> DeltaTable | None:
        cached = self._open.get(layer)
        if cached is not None:
            cached.update_incremental()
            return cached
        try:
            table = DeltaTable(self.path(layer))
        except TableNotFoundError:
            return None
        self._open[layer] = table
        return table

    def committed(self, layer: str, app_id: str, batch_id: int) -> bool:
        table = self.table(layer)
        version = table.transaction_version(app_id) if table is not None else None
        return version is not None and version >= batch_id

    def write_once(
        self, layer: str, rows: pa.Table, app_id: str, batch_id: int, mode: Literal["append", "overwrite"] = "append"
    ) -> bool:
        """Append ``rows`` unless this (app_id, batch_id) is already in the table; True when written. An append of no
        rows commits nothing (most micro-batches quarantine nothing)."""
        if mode == "append" and (len(rows) == 0 or self.committed(layer, app_id, batch_id)):
            return False
        data = rows.cast(ARROW_SCHEMAS[layer])
        commit = CommitProperties(app_transactions=[Transaction(app_id, batch_id)])
        if mode == "overwrite":
            write_deltalake(
                self.path(layer),
                data,
                mode="overwrite",
                schema_mode="overwrite",
                partition_by=PARTITIONS.get(layer),
                commit_properties=commit,
            )
        else:
            # Through the open table when there is one: loading it again from its path costs more than the append
            # (CPU per 60-row Silver append: ~115 ms by path, 40-60 through the open table, both maintained).
            write_deltalake(
                self._open.get(layer) or self.path(layer),
                data,
                mode="append",
                partition_by=PARTITIONS.get(layer),
                commit_properties=commit,
            )
            self._appends[layer] = self._appends.get(layer, 0) + 1
        return True

    def maintenance_due(self, layer: str) -> bool:
        """Whether ``layer`` has had ``maintain_every`` appends from this process since it was last maintained."""
        return 0 < self.maintain_every <= self._appends.get(layer, 0)

    def maintain(self, layer: str) -> dict[str, int]:
        """Compact ``layer``'s small files, delete what is older than the retention and no longer needed (data files
        and log entries), and checkpoint. Safe beside appends and readers: only files removed from the table longer
        than the retention ago are deleted. Returns the files compacted and deleted."""
        began = time.perf_counter()
        self._appends[layer] = 0
        table = self.table(layer)
        if table is None:
            return {}
        retention = {"delta.deletedFileRetentionDuration": self.retention, "delta.logRetentionDuration": self.retention}
        if any(table.metadata().configuration.get(k) != v for k, v in retention.items()):
            table.alter.set_table_properties(retention)
        compacted = table.optimize.compact()
        deleted = table.vacuum(dry_run=False)
        table.create_checkpoint()  # it leaves out the tombstones past the retention
        table.cleanup_metadata()
        done = {"files_compacted": int(compacted.get("numFilesRemoved", 0)), "files_deleted": len(deleted)}
        log.info("maintained the %s table in %.2f s: %s", layer, time.perf_counter() - began, done)
        return done

    def version(self, layer: str) -> int | None:
        table = self.table(layer)
        return table.version() if table is not None else None

    def read(self, layer: str, columns: list[str] | None = None, filter_expr=None) -> pa.Table:
        table = self.table(layer)
        if table is None:
            return ARROW_SCHEMAS[layer].empty_table().select(columns or ARROW_SCHEMAS[layer].names)
        return table.to_pyarrow_dataset().to_table(columns=columns, filter=filter_expr)

    def existing_event_ids(self, candidates: pa.Table, exclude_batch: int | None = None) -> set[str]:
        """Which of the candidate rows' event_ids Silver already holds (searching only their event dates)."""
        ids = pc.drop_null(candidates["event_id"]).unique().cast(pa.string())  # Spark hands over string_view
        if len(ids) == 0 or self.table("silver") is None:
            return set()
        dates = pc.drop_null(candidates["event_date"]).unique()
        import pyarrow.dataset as ds

        # The id test runs in memory: deltalake 1.6 gives string columns string_view statistics, and a dataset filter
        # on a string column then fails ("no kernel matching input types (string, string_view)").
        expr = ds.field("event_date").isin(dates)
        if exclude_batch is not None:
            expr = expr & (ds.field("batch_id") != exclude_batch)
        found = self.read("silver", ["event_id"], expr)["event_id"].cast(pa.string())
        return set(found.filter(pc.is_in(found, ids)).to_pylist())
