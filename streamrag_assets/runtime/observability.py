"""The freshness probe and (with `up --with-prometheus`) a real Prometheus, as supervised processes.

Prometheus is Debian's package (scripts/install-system-deps.sh installs it); its configuration for the embedded
stack is written from the same scrape jobs and rule files as deploy/prometheus/ (which uses compose service names).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from streamrag_assets.runtime.dagster import PROJECT_ROOT
from streamrag_assets.runtime.process import (
    LOOPBACK_HOST,
    ManagedProcess,
    PortClaim,
    cli_service,
    http_answers,
    local_http,
    metrics_answer,
    metrics_claim,
)
from streamrag_assets.settings import Settings

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "rules"


def probe_process(settings: Settings) -> ManagedProcess:
    return cli_service(
        settings,
        "probe",
        "probe",
        cwd=PROJECT_ROOT,
        ready=lambda: True,
        live=metrics_answer(settings.probe_metrics_port),
        address=f"every {settings.probe_interval_s:g} s -> {settings.api_url}/search",
        secrets=frozenset({"api_keys", "kafka_sasl_password"}),
        ports=metrics_claim(settings.probe_metrics_port, "probe metrics", "STREAMRAG_PROBE_METRICS_PORT"),
    )


def scrape_targets(settings: Settings) -> dict[str, tuple[str, str]]:
    """job -> (host:port, metrics path) of every process of the embedded stack that serves metrics."""
    targets = {"streamrag-api": (f"{LOOPBACK_HOST}:{settings.api_port}", "/metrics/")}
    for job, port in (
        ("streamrag-ingest", settings.ingest_metrics_port),
        ("streamrag-stream", settings.stream_metrics_port),
        ("streamrag-probe", settings.probe_metrics_port),
        ("streamrag-supervisor", settings.supervisor_metrics_port),
    ):
        if port:
            targets[job] = (f"{LOOPBACK_HOST}:{port}", "/metrics")
    return targets


def prometheus_config(settings: Settings, scrape_interval_s: float = 5.0) -> dict:
    return {
        "global": {"scrape_interval": f"{scrape_interval_s:g}s", "evaluation_interval": f"{scrape_interval_s:g}s"},
        "rule_files": [str(RULES / "*.yml")],
        "scrape_configs": [
            {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [target]}]}
            for job, (target, path) in scrape_targets(settings).items()
        ],
    }


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise FileNotFoundError(
            "prometheus is not installed: run scripts/install-system-deps.sh (Debian package `prometheus`)"
        )
    return found


def prometheus_process(settings: Settings, scrape_interval_s: float = 5.0) -> ManagedProcess:
    home = settings.state_dir / "prometheus"
    config_path = home / "prometheus.yml"

    def prepare() -> None:
        (home / "data").mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(prometheus_config(settings, scrape_interval_s), sort_keys=False))

    def ready() -> bool:
        return local_http().get(f"{prometheus_url(settings)}/-/ready", timeout=2).status_code == 200

    return ManagedProcess(
        name="prometheus",
        argv=[
            prometheus_binary(),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address={settings.bind_host}:{settings.prometheus_port}",
            "--storage.tsdb.retention.time=7d",
        ],
        cwd=PROJECT_ROOT,
        log_path=settings.state_dir / "logs" / "prometheus.log",
        pid_path=settings.state_dir / "run" / "prometheus.pid",
        ready=ready,
        live=lambda: http_answers(f"{prometheus_url(settings)}/-/healthy"),
        prepare=prepare,
        address=prometheus_url(settings),
        ports=[PortClaim(settings.prometheus_port, "Prometheus", "STREAMRAG_PROMETHEUS_PORT")],
        bind_host=settings.bind_host,
    )


def prometheus_url(settings: Settings) -> str:
    return f"http://{LOOPBACK_HOST}:{settings.prometheus_port}"


def rule_files() -> list[Path]:
    return sorted(RULES.glob("*.yml"))
