"""The Delta tables (delta-rs), written idempotently per micro-batch.

Each write carries an app transaction ``(app_id, batch_id)`` in the same commit as the data; a write whose batch the
table already recorded is skipped. So a crash between a Delta commit and Spark's checkpoint commit (the batch is
replayed with the same id and offsets) writes nothing twice: Kafka -> Delta is exactly-once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError

from streamrag_assets.streaming.transforms import ARROW_SCHEMAS

LAYERS = ("bronze", "silver", "quarantine", "gold")
PARTITIONS = {"silver": ["event_date"], "gold": ["event_date"]}


class DeltaTables:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[str, DeltaTable] = {}

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
        """Append ``rows`` unless this (app_id, batch_id) is already in the table; True when written."""
        if mode == "append" and self.committed(layer, app_id, batch_id):
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
            write_deltalake(
                self.path(layer), data, mode="append", partition_by=PARTITIONS.get(layer), commit_properties=commit
            )
        return True

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
