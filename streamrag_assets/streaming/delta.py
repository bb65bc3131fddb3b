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
from collections.abc import Iterator
from datetime import UTC, datetime
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
# Every this many maintenances of a table (its first in a process included), files in the table's folder that no
# version knows of and older than `SWEEP_AFTER_HOURS` are deleted too (a listing of the whole folder): ~20 minutes
# at 50 events/s with the default `delta_maintain_every`.
SWEEP_EVERY, SWEEP_AFTER_HOURS = 80, 1


class DeltaTables:
    """The four tables under ``root``: a local folder, or an object-store URI (``s3://bucket/prefix``) reached with
    ``storage_options`` (delta-rs' object store settings: endpoint, credentials, conditional put)."""

    def __init__(
        self,
        root: Path | str,
        maintain_every: int = 100,
        retention_minutes: int = 10,
        storage_options: dict[str, str] | None = None,
        compact_target_mb: int = 8,
    ) -> None:
        self.root = str(root).rstrip("/")
        self.compact_target = compact_target_mb << 20
        self.storage_options = storage_options or None
        self.maintain_every = maintain_every
        self.retention = f"interval {retention_minutes} minutes"
        self._open: dict[str, DeltaTable] = {}
        self._appends: dict[str, int] = {}  # appends since this process last maintained each table
        self._maintained: dict[str, int] = {}  # maintenances of each table by this process

    @classmethod
    def from_settings(cls, settings: Settings) -> DeltaTables:
        """The platform's tables under the state directory, maintained as the settings say."""
        return cls(
            settings.delta_location,
            settings.delta_maintain_every,
            settings.delta_retention_minutes,
            settings.delta_storage_options(),
            settings.delta_compact_target_mb,
        )

    @staticmethod
    def ensure_bucket(settings: Settings) -> None:
        """Create the tables' S3 bucket when it is missing (delta-rs writes into a bucket but never makes one), so a
        fresh object store needs no set-up step."""
        if settings.delta_bucket is None:
            return
        import pyarrow.fs as pafs

        scheme, _, endpoint = settings.s3_endpoint.partition("://")
        store = pafs.S3FileSystem(
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            endpoint_override=endpoint,
            scheme=scheme,
            region=settings.s3_region,
            allow_bucket_creation=True,
        )
        if store.get_file_info(settings.delta_bucket).type == pafs.FileType.NotFound:
            store.create_dir(settings.delta_bucket)
            log.info("created the S3 bucket %s for the Delta tables", settings.delta_bucket)

    def path(self, layer: str) -> str:
        return f"{self.root}/{layer}"

    def _load(self, layer: str) -> DeltaTable | None:
        """``layer`` at its current version, opened afresh (None when it does not exist yet)."""
        try:
            return DeltaTable(self.path(layer), storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def table(self, layer: str) -> DeltaTable | None:
        cached = self._open.get(layer)
        if cached is not None:
            cached.update_incremental()
            return cached
        table = self._load(layer)
        if table is not None:
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
                storage_options=self.storage_options,
            )
        else:
            # Through the open table when there is one: loading it again from its path costs more than the append
            # (CPU per 60-row Silver append: ~115 ms by path, 40-60 through the open table, both maintained).
            opened = self._open.get(layer)
            write_deltalake(
                opened or self.path(layer),
                data,
                mode="append",
                partition_by=PARTITIONS.get(layer),
                commit_properties=commit,
                storage_options=None if opened is not None else self.storage_options,
            )
            self._appends[layer] = self._appends.get(layer, 0) + 1
        return True

    def maintenance_due(self, layer: str) -> bool:
        """Whether ``layer`` has had ``maintain_every`` appends from this process since it was last maintained."""
        return 0 < self.maintain_every <= self._appends.get(layer, 0)

    def maintain(self, layer: str) -> dict[str, int]:
        """Compact ``layer``'s small files, delete what is older than the retention and no longer needed (data files
        and log entries), and checkpoint; every `SWEEP_EVERY` times also files no version knows of. Safe beside
        appends and readers: only files removed from the table longer than the retention ago, and unknown files
        older than `SWEEP_AFTER_HOURS`, are deleted. Returns the files compacted and deleted."""
        began = time.perf_counter()
        self._appends[layer] = 0
        table = self.table(layer)
        if table is None:
            return {}
        # delta-rs checkpoints a table by itself every 100 commits (~36 s at 50 events/s), and a checkpoint forgets
        # the removals past the retention: most then left the vacuum's view before one saw them expired, and their
        # files were never deleted (a two-hour soak kept 98% dead files). Only maintenance checkpoints now, right
        # after its vacuum.
        retention = {
            "delta.deletedFileRetentionDuration": self.retention,
            "delta.logRetentionDuration": self.retention,
            "delta.checkpointInterval": str(2**31 - 1),
        }
        if any(table.metadata().configuration.get(k) != v for k, v in retention.items()):
            table.alter.set_table_properties(retention)
        # Compaction merges the files below its target size, in order: with delta-rs' default (100 MB) the table's
        # one compacted file, growing, was rewritten whole at every maintenance (1.3 s a table at a soak's minute 20,
        # 2.4 s at minutes 40-50, and rising); files that reached the target are left alone.
        compacted = table.optimize.compact(target_size=self.compact_target)
        deleted = table.vacuum(dry_run=False)
        if self._maintained.get(layer, 0) % SWEEP_EVERY == 0:
            # Files no version knows of (a write that never committed; removals a checkpoint forgot before a vacuum
            # saw them, as delta-rs' own checkpoints did before this process turned them off): delta-rs' full vacuum
            # deletes those older than its retention (by their modified time; a removal by its deletion time). An
            # hour, not the tables' retention: a writer still writing its files then has long finished or failed.
            deleted += table.vacuum(
                retention_hours=SWEEP_AFTER_HOURS, dry_run=False, enforce_retention_duration=False, full=True
            )
        self._maintained[layer] = self._maintained.get(layer, 0) + 1
        table.create_checkpoint()  # it leaves out the tombstones past the retention
        table.cleanup_metadata()
        done = {"files_compacted": int(compacted.get("numFilesRemoved", 0)), "files_deleted": len(deleted)}
        log.info("maintained the %s table in %.2f s: %s", layer, time.perf_counter() - began, done)
        return done

    def version(self, layer: str) -> int | None:
        table = self.table(layer)
        return table.version() if table is not None else None

    def known_version(self, layer: str) -> int | None:
        """``layer``'s version as this process last saw it: after its own append through the open table, the version
        that append made, without listing the table's log again (`version` lists it: one more request to the object
        store per table and micro-batch)."""
        opened = self._open.get(layer)
        return opened.version() if opened is not None else self.version(layer)

    def describe(self, layer: str, as_of: datetime | None = None) -> dict[str, object]:
        """Where ``layer`` lives, its version, rows and commit time; now, or (time travel) the last version committed
        at or before ``as_of`` — only versions within the retention are kept once maintenance ran."""
        absent: dict[str, object] = {
            "table": layer,
            "location": self.path(layer),
            "version": None,
            "rows": 0,
            "committed_at": None,
        }
        table = self._load(layer)
        if table is None:
            return absent
        commits = [c for c in table.history() if as_of is None or c["timestamp"] <= as_of.timestamp() * 1000]
        if not commits:
            return absent
        commit = max(commits, key=lambda c: c["version"])
        if commit["version"] != table.version():
            table.load_as_version(commit["version"])
        return absent | {
            "version": table.version(),
            "rows": table.to_pyarrow_dataset().count_rows(),
            "committed_at": datetime.fromtimestamp(commit["timestamp"] / 1000, UTC).isoformat(),
        }

    def read(
        self, layer: str, columns: list[str] | None = None, filter_expr=None, version: int | str | None = None
    ) -> pa.Table:
        """``layer``'s rows, now or (time travel) as of ``version``: a version number, or an ISO time (the version
        current then); versions older than the retention are gone once maintenance ran."""
        table = self.table(layer) if version is None else self._load(layer)
        if table is not None and version is not None:
            table.load_as_version(version)
        if table is None:
            return ARROW_SCHEMAS[layer].empty_table().select(columns or ARROW_SCHEMAS[layer].names)
        return table.to_pyarrow_dataset().to_table(columns=columns, filter=filter_expr)

    def batches(self, layer: str, columns: list[str] | None = None, filter_expr=None) -> Iterator[pa.RecordBatch]:
        """``layer``'s current rows batch by batch (bounded memory, whatever the table holds)."""
        table = self.table(layer)
        if table is None:
            return iter(())
        return iter(table.to_pyarrow_dataset().to_batches(columns=columns, filter=filter_expr))

    def rows_with(
        self, layer: str, column: str, values: pa.Array, columns: list[str] | None = None, filter_expr=None
    ) -> pa.Table:
        """``layer``'s current rows (within ``filter_expr``) whose string ``column`` is one of ``values``, picked batch
        by batch so the table's other rows are never all in memory; only ``columns`` (absent: all), which must hold
        ``column``. Not an `isin` filter on the dataset: files Spark wrote hold strings as string_view, which a dataset
        filter cannot compare with a string."""
        assert columns is None or column in columns, f"{column} must be read to pick rows by it"
        wanted = values.cast(pa.string())
        parts = [
            batch.filter(pc.is_in(batch.column(column).cast(pa.string()), value_set=wanted))
            for batch in self.batches(layer, columns, filter_expr)
        ]
        if not parts:
            return ARROW_SCHEMAS[layer].empty_table().select(columns or ARROW_SCHEMAS[layer].names)
        return pa.Table.from_batches(parts)

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
