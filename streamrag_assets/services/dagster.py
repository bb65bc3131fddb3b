"""Dagster webserver and daemon against the instance stored in Postgres."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import httpx

from streamrag_assets.services.process import ManagedProcess, PortClaim, find_executable
from streamrag_assets.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def dagster_env(settings: Settings) -> dict[str, str]:
    return {
        "DAGSTER_HOME": str(settings.dagster_home),
        "STREAMRAG_DAGSTER_STORAGE_URL": settings.dagster_storage_url,
    }


def prepare_dagster_home(settings: Settings) -> Path:
    """Install the project's dagster.yaml into DAGSTER_HOME; returns the workspace file to load."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", settings.dagster_home / "dagster.yaml")
    return PROJECT_ROOT / "workspace.yaml"


def _bin(name: str) -> str:
    return find_executable(name, Path(sys.executable).parent / name)


def dagster_webserver_process(settings: Settings) -> ManagedProcess:
    workspace = PROJECT_ROOT / "workspace.yaml"

    def prepare() -> None:
        prepare_dagster_home(settings)

    def ready() -> bool:
        return httpx.get(f"{settings.dagster_url}/server_info", timeout=2).status_code == 200

    return ManagedProcess(
        name="dagster-webserver",
        argv=[
            _bin("dagster-webserver"),
            "-w",
            str(workspace),
            "-h",
            settings.bind_host,
            "-p",
            str(settings.dagster_port),
        ],
        env=dagster_env(settings),
        cwd=PROJECT_ROOT,
        log_path=settings.state_dir / "logs" / "dagster-webserver.log",
        pid_path=settings.state_dir / "run" / "dagster-webserver.pid",
        ready=ready,
        prepare=prepare,
        address=settings.dagster_url,
        ports=[PortClaim(settings.dagster_port, "the Dagster webserver", "STREAMRAG_DAGSTER_PORT")],
        bind_host=settings.bind_host,
        data_dir=settings.dagster_home,
    )


def dagster_daemon_process(settings: Settings) -> ManagedProcess:
    workspace = PROJECT_ROOT / "workspace.yaml"
    started = {"at": 0.0}

    def prepare() -> None:
        prepare_dagster_home(settings)
        started["at"] = time.monotonic()

    def ready() -> bool:
        # The daemon has no port; it counts as ready once it has stayed up through its start-up.
        return time.monotonic() - started["at"] > 3.0

    return ManagedProcess(
        name="dagster-daemon",
        argv=[_bin("dagster-daemon"), "run", "-w", str(workspace)],
        env=dagster_env(settings),
        cwd=PROJECT_ROOT,
        log_path=settings.state_dir / "logs" / "dagster-daemon.log",
        pid_path=settings.state_dir / "run" / "dagster-daemon.pid",
        ready=ready,
        prepare=prepare,
        address="(no port)",
    )
