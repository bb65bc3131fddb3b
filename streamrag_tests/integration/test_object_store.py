"""The embedded object store's filer keeps its metadata in SQLite on a new state, and a state begun on LevelDB (every
state before the change) keeps LevelDB and the objects it indexes."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import httpx
import pytest

from streamrag_assets.runtime.seaweedfs import VOLUME_REPORT_WAIT_S, seaweedfs_ports, seaweedfs_process
from streamrag_tests.harness import isolated_settings

pytestmark = pytest.mark.integration


def _run(settings, argv_filter=lambda argv: argv):
    proc = seaweedfs_process(settings)
    proc.argv = argv_filter(proc.argv)
    proc.start()
    proc.wait_ready(settings.startup_timeout_s)
    return proc


def _url(settings, key: str) -> str:
    return f"http://127.0.0.1:{seaweedfs_ports(settings)['filer']}/buckets/{settings.s3_bucket}/{key}"


def _reads_back(settings, key: str, body: bytes) -> None:
    """The object reads back after a restart, from the moment SeaweedFS is ready: readiness waits for the master to
    know where each stored volume is (the filer answers before the volume server has reported them, and a read then
    answered "volume 1 not found" for a moment)."""
    response = httpx.get(_url(settings, key))
    assert response.status_code == 200, response.text
    assert response.content == body


def test_a_new_state_keeps_the_filers_metadata_in_sqlite(state_home: Path) -> None:
    settings = isolated_settings(state_home)
    key, body = f"kept/{uuid.uuid4()}", b"an object the broker wrote"
    proc = _run(settings)
    try:
        httpx.put(_url(settings, key), content=body).raise_for_status()
        assert (settings.state_dir / "s3" / "filer.db-wal").exists(), "SQLite in write-ahead-log mode"
    finally:
        proc.stop()
    data_dir = settings.state_dir / "s3"
    assert (data_dir / "filer.db").stat().st_size > 0 and not (data_dir / "filerldb2").exists()
    assert "configured filer store to sqlite" in proc.log_path.read_text()
    proc = _run(settings)  # and the object is there after a restart
    try:
        _reads_back(settings, key, body)
    finally:
        proc.stop()


def test_a_state_begun_on_leveldb_keeps_leveldb_and_its_objects(state_home: Path) -> None:
    settings = isolated_settings(state_home)
    key, body = f"kept/{uuid.uuid4()}", b"an object written before the change"
    # As earlier versions started it: no filer.toml, so `weed mini`'s default store (LevelDB).
    proc = _run(settings, lambda argv: [arg for arg in argv if not arg.startswith("-config_dir=")])
    try:
        httpx.put(_url(settings, key), content=body).raise_for_status()
    finally:
        proc.stop()
    data_dir = settings.state_dir / "s3"
    assert (data_dir / "filerldb2").is_dir()
    proc = _run(settings)
    try:
        _reads_back(settings, key, body)
        assert "configured filer store to leveldb2" in proc.log_path.read_text().split("Starting SeaweedFS Mini")[-1]
    finally:
        proc.stop()
    assert not (data_dir / "filer.db").exists()


def test_a_volume_that_never_reports_delays_readiness_but_does_not_keep_the_store_down(
    state_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="streamrag_assets.runtime.seaweedfs")
    settings = isolated_settings(state_home)
    proc = _run(settings)
    key, body = f"kept/{uuid.uuid4()}", b"an object beside a damaged volume"
    try:
        httpx.put(_url(settings, key), content=body).raise_for_status()
    finally:
        proc.stop()
    # A volume's data file whose index is gone: the volume server cannot load it, so the master never locates it.
    (settings.state_dir / "s3" / "streamrag_97.dat").write_bytes(b"\0" * 8)
    began = time.monotonic()
    proc = _run(settings)
    try:
        waited = time.monotonic() - began
        assert waited >= VOLUME_REPORT_WAIT_S, f"ready after {waited:.1f} s, without waiting for volume 97"
        assert "without volume(s) [97]" in caplog.text
        _reads_back(settings, key, body)  # the volumes that did report are read as ever
    finally:
        proc.stop()
