"""The embedded object store's metadata: SQLite for a new state directory; one made by an earlier version (LevelDB,
`weed mini`'s default) keeps its store and every object in it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store

from streamrag_assets.runtime.seaweedfs import seaweedfs_process
from streamrag_assets.settings import Settings
from streamrag_tests.harness import isolated_settings

pytestmark = pytest.mark.integration


def _bucket(settings: Settings) -> S3Store:
    return S3Store(
        settings.s3_bucket,
        endpoint=settings.s3_endpoint,
        access_key_id=settings.s3_access_key,
        secret_access_key=settings.s3_secret_key.get_secret_value(),
        region=settings.s3_region,
        client_options={"allow_http": True},
    )


def test_a_state_directory_keeps_its_metadata_store_and_a_new_one_gets_sqlite(state_home: Path, tmp_path: Path) -> None:
    settings = isolated_settings(state_home)
    data_dir = settings.state_dir / "s3"
    # An earlier version: started where no filer.toml is, the filer keeps its metadata in LevelDB.
    earlier = dataclasses.replace(seaweedfs_process(settings), cwd=tmp_path)
    earlier.start()
    try:
        earlier.wait_ready(60)
        obstore.put(_bucket(settings), "topics/kept.batch", b"written before the upgrade")
    finally:
        earlier.stop()
    assert (data_dir / "filerldb2").is_dir()
    current = seaweedfs_process(settings)
    current.start()
    try:
        current.wait_ready(60)
        assert obstore.get(_bucket(settings), "topics/kept.batch").bytes() == b"written before the upgrade"
        obstore.put(_bucket(settings), "topics/new.batch", b"after")
    finally:
        current.stop()
    assert not (data_dir / "filer.db").exists(), "the LevelDB store stayed the one in use"

    fresh = isolated_settings(tmp_path / "fresh" / ".streamrag")
    new = seaweedfs_process(fresh)
    new.start()
    try:
        new.wait_ready(60)
        obstore.put(_bucket(fresh), "topics/first.batch", b"new")
        assert obstore.get(_bucket(fresh), "topics/first.batch").bytes() == b"new"
    finally:
        new.stop()
    assert (fresh.state_dir / "s3" / "filer.db").is_file() and not (fresh.state_dir / "s3" / "filerldb2").exists()
