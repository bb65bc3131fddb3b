"""docker-compose.yml is a valid compose file, and every streamrag service runs a command the package has."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from typer.testing import CliRunner

from streamrag_assets.cli import app

ROOT = Path(__file__).resolve().parents[2]
# Debian bookworm's docker-compose (1.29, Python) ships the compose spec's schema; the Go docker-compose 2 of later
# Debian releases validates against the spec inside `config` itself.
COMPOSE_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


# The secrets compose requires (it has no defaults for them).
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD": "pg-super-1",
    "POSTGRES_OWNER_PASSWORD": "pg-owner-2",
    "POSTGRES_API_PASSWORD": "pg-api-3",
    "POSTGRES_DAGSTER_PASSWORD": "pg-dagster-4",
    "S3_SECRET_KEY": "s3-secret-5",
    "STREAMRAG_API_KEYS": "api-key-6",
    "GRAFANA_ADMIN_PASSWORD": "grafana-7",
}


def _config(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean | env,
    )


def test_compose_file_validates_against_compose_spec() -> None:
    assert shutil.which("docker-compose"), "Debian's docker-compose is installed by `make test`"
    result = _config(REQUIRED_SECRETS)
    assert result.returncode == 0, result.stderr
    if COMPOSE_SCHEMA.exists():
        jsonschema.validate(_compose(), json.loads(COMPOSE_SCHEMA.read_text()))


def test_compose_has_the_production_shape() -> None:
    services = _compose()["services"]
    for name in (
        "redpanda",
        "postgres",
        "dagster-webserver",
        "dagster-daemon",
        "dagster-code",
        "api",
        "prometheus",
        "alertmanager",
        "grafana",
    ):
        assert name in services, f"{name} missing from docker-compose.yml"
    assert "pgvector" in services["postgres"]["image"]


def test_every_streamrag_service_command_exists_in_the_package() -> None:
    services = _compose()["services"]
    ours = {name: svc for name, svc in services.items() if svc.get("image") == "streamrag:latest"}
    assert ours, "streamrag services use the project image"
    venv_bin = Path(sys.executable).parent
    for name, svc in ours.items():
        command = svc["command"]
        assert (venv_bin / command[0]).exists(), f"{name}: {command[0]} is not installed by the package"
        if command[0] == "streamrag":
            help_result = CliRunner().invoke(app, [*command[1:], "--help"])
            assert help_result.exit_code == 0, f"{name}: `{' '.join(command)}` is not a streamrag command"
        if command[:3] == ["dagster", "code-server", "start"]:
            module = command[command.index("-m") + 1]
            assert __import__(module, fromlist=["defs"]).defs is not None
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
        # Every address comes from the environment, never baked into the image.
        env = svc["environment"]
        assert env["STREAMRAG_KAFKA_BOOTSTRAP_SERVERS"] == "redpanda:9092"


def test_every_streamrag_service_shares_one_state_volume_and_reaches_others_by_service_name() -> None:
    compose = _compose()
    services = compose["services"]
    ours = {name: svc for name, svc in services.items() if svc.get("image") == "streamrag:latest"}
    homes = {svc["environment"].get("STREAMRAG_HOME") for svc in ours.values()}
    assert len(homes) == 1 and None not in homes, f"one STREAMRAG_HOME for every service, not {homes}"
    (home,) = homes
    for name, svc in ours.items():
        mounts = {m.split(":")[1]: m.split(":")[0] for m in svc.get("volumes", [])}
        state = [source for target, source in mounts.items() if home.startswith(target.rstrip("/") + "/")]
        assert state == ["streamrag-state"], f"{name} must keep {home} on the shared volume, has {mounts}"
    assert "streamrag-state" in compose["volumes"]
    # Every address another container is reached at is that container's service name, never loopback.
    for name, svc in ours.items():
        env = svc["environment"]
        for key in ("STREAMRAG_API_BASE_URL", "STREAMRAG_DAGSTER_BASE_URL"):
            host = env[key].split("//")[1].split(":")[0]
            assert host in services, f"{name}: {key} points at {host}, not a service"
        assert env["STREAMRAG_KAFKA_BOOTSTRAP_SERVERS"].split(":")[0] in services
        for key in ("STREAMRAG_DATABASE_URL", "STREAMRAG_API_DATABASE_URL", "STREAMRAG_DAGSTER_STORAGE_URL"):
            if key in env:
                assert env[key].split("@")[1].split(":")[0] in services


def test_compose_runs_the_stream_on_a_spark_cluster_with_the_tables_on_object_storage() -> None:
    services = _compose()["services"]
    env = services["stream"]["environment"]
    master = env["STREAMRAG_SPARK_MASTER"]
    assert master.startswith("spark://") and master[len("spark://") :].split(":")[0] in services
    assert services["spark-master"]["command"][:3] == ["streamrag", "spark", "master"]
    workers = [name for name, svc in services.items() if svc.get("command", [])[:3] == ["streamrag", "spark", "worker"]]
    assert len(workers) == 2
    for name in workers:
        command = services[name]["command"]
        assert command[3] == master and command[command.index("--host") + 1] == name
    # Each Spark driver tells the executors its own service name; the rest of the address is fixed ports.
    assert env["STREAMRAG_SPARK_DRIVER_HOST"] == "stream"
    assert services["dagster-code"]["environment"]["STREAMRAG_SPARK_DRIVER_HOST"] == "dagster-code"
    assert env["STREAMRAG_SPARK_DRIVER_BIND_ADDRESS"] == "0.0.0.0" and env["STREAMRAG_SPARK_DRIVER_PORT"].isdigit()
    # The Delta tables on S3, at a service of the file.
    assert env["STREAMRAG_DELTA_URI"].startswith("s3://")
    assert env["STREAMRAG_S3_ENDPOINT_URL"].split("//")[1].split(":")[0] in services
    from streamrag_assets.settings import Settings

    settings = Settings(**{k[len("STREAMRAG_") :].lower(): v for k, v in env.items() if k.startswith("STREAMRAG_")})
    assert settings.spark_on_cluster and settings.delta_on_s3 and settings.spark_master is not None


def test_compose_needs_every_secret_and_gives_each_service_only_the_ones_it_uses() -> None:
    for name in REQUIRED_SECRETS:
        missing = _config({k: v for k, v in REQUIRED_SECRETS.items() if k != name})
        assert missing.returncode != 0 and name in missing.stderr, f"compose starts without {name}"
    services = yaml.safe_load(_config(REQUIRED_SECRETS).stdout)["services"]
    given = {
        name: {key for key, value in REQUIRED_SECRETS.items() if value in json.dumps(svc.get("environment", {}))}
        for name, svc in services.items()
    }
    assert given["postgres"] == {
        "POSTGRES_PASSWORD",
        "POSTGRES_OWNER_PASSWORD",
        "POSTGRES_API_PASSWORD",
        "POSTGRES_DAGSTER_PASSWORD",
    }
    assert given["api"] == {"POSTGRES_API_PASSWORD", "STREAMRAG_API_KEYS"}
    assert given["probe"] == {"STREAMRAG_API_KEYS"}
    assert given["stream"] == {"POSTGRES_OWNER_PASSWORD", "S3_SECRET_KEY"}
    assert given["dagster-code"] == {"POSTGRES_OWNER_PASSWORD", "POSTGRES_DAGSTER_PASSWORD", "S3_SECRET_KEY"}
    assert given["dagster-webserver"] == given["dagster-daemon"] == {"POSTGRES_DAGSTER_PASSWORD"}
    assert given["grafana"] == {"GRAFANA_ADMIN_PASSWORD"} and given["minio"] == {"S3_SECRET_KEY"}
    for name in ("ingest", "spark-master", "spark-worker-1", "spark-worker-2", "redpanda", "prometheus"):
        assert given[name] == set(), name
    # No streamrag service connects as the superuser.
    for name, svc in services.items():
        for key, value in svc.get("environment", {}).items():
            if key.endswith("_URL") and "@postgres:" in str(value):
                assert str(value).split("//")[1].split(":")[0].startswith("streamrag_"), (name, key)


def test_what_has_no_authentication_of_its_own_is_published_on_loopback_only() -> None:
    services = _compose()["services"]
    for name in ("dagster-webserver", "prometheus", "spark-master"):
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host"
    api = services["api"]["environment"]
    assert api["STREAMRAG_BIND_HOST"] == "0.0.0.0" and "STREAMRAG_API_KEYS" in api, "a published API needs keys"
    grafana = services["grafana"]["environment"]
    assert (
        grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
        and "GRAFANA_ADMIN_PASSWORD" in grafana["GF_SECURITY_ADMIN_PASSWORD"]
    )
