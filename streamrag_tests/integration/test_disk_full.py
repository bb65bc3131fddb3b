"""A full disk under the state directory (a small tmpfs that fills up) while ingest and the stream run under the
supervisor: a clear error in `status` and the supervisor's log, no table, checkpoint or position file corrupted, and
everything resumes once space returns, with every record through every layer exactly once."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from streamrag_assets.credentials import OWNER_ROLE
from streamrag_assets.runtime.ingest import ingest_process
from streamrag_assets.runtime.postgres import admin_connect
from streamrag_assets.runtime.stream import stream_process
from streamrag_assets.runtime.supervisor import Supervisor
from streamrag_assets.streaming.delta import LAYERS, DeltaTables
from streamrag_tests.harness import free_port, indexed_doc_ids, run_cli, small_filesystem
from streamrag_tests.integration.test_ingest import _topic_records

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)"),
]

EVENTS = 1_500


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem refuses; returns the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as out:
        while True:
            try:
                written += out.write(chunk)
            except OSError:
                break
        with contextlib.suppress(OSError):
            while True:
                written += out.write(b"\0" * 4096)
    return written


def _through(settings) -> bool:
    delta = DeltaTables(settings.state_dir / "delta")
    if delta.table("bronze") is None or delta.table("gold") is None:
        return False
    bronze = delta.read("bronze", ["partition", "offset"])
    topic = {(r.partition, r.offset) for r in _topic_records(settings)}
    gold = {d["doc_id"] for d in delta.read("gold", ["doc_id", "op"]).to_pylist() if d["op"] != "delete"}
    positions = set(zip(bronze["partition"].to_pylist(), bronze["offset"].to_pylist(), strict=True))
    return len(topic) >= EVENTS and positions == topic and indexed_doc_ids(settings) == gold


def _wait(condition, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if condition():
                return
        assert time.monotonic() < deadline, what
        time.sleep(2)


def test_a_full_disk_stops_writes_with_a_clear_error_and_everything_resumes_when_space_returns(stack, caplog) -> None:
    suffix = uuid.uuid4().hex[:8]
    with admin_connect(stack.settings) as conn:
        conn.execute(f"CREATE DATABASE app_{suffix} OWNER {OWNER_ROLE}")
    with small_filesystem(256) as mount:
        settings = stack.settings.model_copy(
            update={
                "home": mount / ".streamrag",
                "topic": f"raw-{suffix}",
                "postgres_db": f"app_{suffix}",
                "ingest_source": "recording",
                "ingest_rate": 50.0,
                "ingest_count": EVENTS,
                # Reconciled against every record of the topic after minutes: the broker keeps them all here.
                "broker_retention_s": 0,
                "source_port": free_port(),
                "ingest_metrics_port": free_port(),
                "stream_metrics_port": free_port(),
                "supervisor_metrics_port": 0,
                "dagster_report_interval_s": 0,
            }
        )
        settings.state_dir.mkdir(parents=True)
        services = [ingest_process(settings), stream_process(settings)]
        for proc in services:
            proc.env = {**settings.to_env(), **proc.env}
        supervisor = Supervisor(settings, progress=print, services=services, backoff_base_s=1, backoff_cap_s=5)
        caplog.set_level(logging.WARNING, logger="streamrag_assets.runtime.supervisor")
        supervisor.start()
        watcher = threading.Thread(target=supervisor.watch, daemon=True)
        watcher.start()
        filler = mount / "filler"
        try:
            _wait(lambda: len(indexed_doc_ids(settings)) >= 50, "nothing was indexed before the disk filled", 240)
            fill(filler)
            time.sleep(20)  # events keep arriving at the broker; nothing on the full disk can be written
            report = run_cli("status", settings=settings, timeout=60)
            assert "is full" in report.stdout, report.stdout
            assert any("is full" in r.getMessage() for r in caplog.records), "the supervisor says why its services fail"
            full = {name: (h.state, h.restarts, h.last_exit_reason) for name, h in supervisor.health.items()}
            print(f"while the disk was full: {full}")
            filler.unlink()  # space returns
            _wait(lambda: _through(settings), "the platform did not resume after space returned", 300)
        finally:
            supervisor.request_stop()
            watcher.join(30)
            supervisor.stop()
        # Nothing corrupted: every table reads whole, each offset once; the ingest position parses.
        delta = DeltaTables(settings.state_dir / "delta")
        for layer in LAYERS:
            if delta.table(layer) is not None:
                delta.read(layer)
        bronze = delta.read("bronze", ["partition", "offset"])
        positions = list(zip(bronze["partition"].to_pylist(), bronze["offset"].to_pylist(), strict=True))
        assert len(positions) == len(set(positions))
        silver = delta.read("silver", ["event_id"])["event_id"].to_pylist()
        assert len(silver) == len(set(silver))
        for position in (settings.state_dir / "ingest").glob("*.position.json"):
            assert position.read_text().strip().startswith("{")
