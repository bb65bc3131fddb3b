"""Settings: env prefix, .env file, and external addresses switching embedded services off."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from streamrag_assets.credentials import OWNER_ROLE, ensure_password, password_path, read_password
from streamrag_assets.runtime.process import postgres_dsn
from streamrag_assets.runtime.supervisor import build_stack
from streamrag_assets.settings import Settings
from streamrag_tests.harness import EMBEDDED_SERVICES


def test_defaults_start_every_embedded_service(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    names = [p.name for p in build_stack(settings)]
    assert names == EMBEDDED_SERVICES
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    # Each service connects as a role of its own with the password `up` generated, never as the superuser.
    ensure_password(settings.postgres_secrets_path, OWNER_ROLE)
    owner = read_password(settings.postgres_secrets_path, OWNER_ROLE)
    assert settings.app_database_url == f"postgresql+psycopg://streamrag_owner:{owner}@127.0.0.1:5432/streamrag"
    assert settings.reader_database_url.startswith("postgresql+psycopg://streamrag_api@127.0.0.1:5432/")
    assert settings.dagster_storage_url.startswith("postgresql+psycopg2://streamrag_dagster@127.0.0.1:5432/")
    folder = settings.postgres_secrets_path
    assert folder.stat().st_mode & 0o777 == 0o700
    assert password_path(folder, OWNER_ROLE).stat().st_mode & 0o777 == 0o600


SECRETS = {
    "llm_api_key": "sk-llm-secret-1",
    "s3_secret_key": "s3-secret-2",
    "alert_webhook_url": "http://hooks.example/secret-3",
    "api_keys": "api-key-secret-4",
    "kafka_sasl_password": "sasl-secret-5",
}


def test_each_service_gets_only_the_secrets_it_uses(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="rag",
        **SECRETS,
    )
    assert not any(value in repr(settings) for value in SECRETS.values()), "secrets never reach logs"
    given = {
        proc.name: {name for name, value in SECRETS.items() if value in " ".join(proc.env.values())}
        for proc in build_stack(settings)
    }
    assert given["api"] == {"llm_api_key", "api_keys", "kafka_sasl_password"}
    assert given["probe"] == {"api_keys", "kafka_sasl_password"}
    assert given["ingest"] == {"kafka_sasl_password"}
    assert given["stream"] == {"kafka_sasl_password", "s3_secret_key"}
    assert given["dagster-code"] == {"kafka_sasl_password", "s3_secret_key", "alert_webhook_url"}
    assert given["kafka"] == {"s3_secret_key"}  # the embedded broker's storage
    for name in ("postgres", "dagster-webserver", "dagster-daemon"):
        assert given[name] == set(), name


def test_the_api_refuses_to_listen_beyond_loopback_without_a_key(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).api_auth_problem() is None
    problem = Settings(home=tmp_path, bind_host="0.0.0.0").api_auth_problem()
    assert problem and "STREAMRAG_API_KEYS" in problem and "STREAMRAG_API_AUTH=off" in problem
    assert Settings(home=tmp_path, bind_host="0.0.0.0", api_keys="k1,k2").api_auth_problem() is None
    assert Settings(home=tmp_path, bind_host="0.0.0.0", api_auth="off").api_auth_problem() is None
    assert Settings(home=tmp_path, api_keys=" k1, ,k2 ").api_key_list() == ["k1", "k2"]


def test_external_addresses_replace_embedded_services(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, kafka_bootstrap_servers="kafka-1:9092", database_url="postgresql+psycopg://u:p@db:5432/rag"
    )
    names = [p.name for p in build_stack(settings)]
    assert "kafka" not in names and "seaweedfs" not in names and "postgres" not in names
    # Delta tables on S3 with no S3 address: the embedded SeaweedFS holds them, even beside an external broker.
    on_s3 = settings.model_copy(update={"delta_uri": "s3://streamrag/delta"})
    assert "seaweedfs" in [p.name for p in build_stack(on_s3)]
    assert on_s3.delta_storage_options()["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert settings.delta_storage_options() == {} and settings.delta_location == str(tmp_path.resolve() / "delta")
    assert settings.bootstrap_servers == "kafka-1:9092"
    assert settings.app_database_url == "postgresql+psycopg://u:p@db:5432/rag"
    # Dagster's storage uses the same server through the psycopg2 driver dagster-postgres expects.
    assert settings.dagster_storage_url == "postgresql+psycopg2://u:p@db:5432/rag"


def test_local_spark_workers_start_a_cluster_before_the_stream_and_the_driver_uses_it(tmp_path: Path) -> None:
    from streamrag_assets.streaming.spark import session_conf

    settings = Settings(home=tmp_path, spark_local_workers=2, spark_driver_host="stream", spark_driver_port=7078)
    names = [p.name for p in build_stack(settings)]
    cluster = ["spark-master", "spark-worker-1", "spark-worker-2"]
    assert names.index("postgres") < names.index("spark-master") < names.index("stream")
    assert [n for n in names if n.startswith("spark-")] == cluster
    conf = session_conf(settings)
    assert conf["spark.master"] == "spark://127.0.0.1:7077" and settings.spark_on_cluster
    # Executors connect back to the driver where it says it is, on the port a firewall can allow.
    assert (conf["spark.driver.host"], conf["spark.driver.bindAddress"], conf["spark.driver.port"]) == (
        "stream",
        "stream",
        "7078",
    )
    # An external master replaces the local cluster; none at all keeps Spark inside the stream's process.
    external = Settings(home=tmp_path, spark_local_workers=2, spark_master="spark://spark-master:7077")
    assert not any(p.name.startswith("spark-") for p in build_stack(external))
    assert session_conf(external)["spark.master"] == "spark://spark-master:7077"
    assert session_conf(Settings(home=tmp_path))["spark.master"] == "local[2]"
    assert not Settings(home=tmp_path).spark_on_cluster


def test_env_prefix_and_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("STREAMRAG_KAFKA_PORT=19092\nSTREAMRAG_LLM_API_KEY=sk-secret\n")
    monkeypatch.setenv("STREAMRAG_API_PORT", "18000")
    settings = Settings()
    assert settings.kafka_port == 19092
    assert settings.api_port == 18000
    assert "sk-secret" not in repr(settings), "secrets never reach logs"
    env = settings.to_env()
    assert env["STREAMRAG_LLM_API_KEY"] == "sk-secret" and env["STREAMRAG_HOME"] == str(tmp_path / ".streamrag")


def test_other_processes_reach_the_api_and_dagster_at_configured_addresses(tmp_path: Path) -> None:
    local = Settings(home=tmp_path)
    assert local.dagster_url == "http://127.0.0.1:3000" and local.api_url == "http://127.0.0.1:8000"
    remote = Settings(home=tmp_path, dagster_base_url="http://dagster-webserver:3000", api_base_url="http://api:8000")
    assert remote.dagster_url == "http://dagster-webserver:3000" and remote.api_url == "http://api:8000"


def test_database_urls_reach_libpq_as_given_and_bad_ones_are_refused_without_the_password() -> None:
    # The supervisor connects with libpq to the URLs users write for SQLAlchemy: same credentials, host, database and
    # parameters, percent-escapes kept (libpq reads them back).
    cases = {
        "postgresql+psycopg://owner:p%40ss%2Fword@db.internal:6432/rag?sslmode=require": {
            "user": "owner",
            "password": "p@ss/word",
            "host": "db.internal",
            "port": "6432",
            "dbname": "rag",
            "sslmode": "require",
        },
        "postgresql+psycopg2://dagster@127.0.0.1/dagster": {
            "user": "dagster",
            "host": "127.0.0.1",
            "dbname": "dagster",
        },
        "postgres://[::1]:5433/x": {"host": "::1", "port": "5433", "dbname": "x"},
    }
    for url, expected in cases.items():
        assert psycopg.conninfo.conninfo_to_dict(postgres_dsn(url)) == expected, url
    for url in ("not-a-url", "mysql+pymysql://u:hunter2@h/db", "postgresql+psycopg://u:hunter 2@h/db"):
        with pytest.raises(ValueError) as refused:
            postgres_dsn(url)
        assert "hunter" not in str(refused.value), "the reason never quotes the password"


def test_auto_shared_buffers_follow_the_data_on_disk_within_the_machine(tmp_path: Path) -> None:
    from streamrag_assets.runtime.postgres import auto_shared_buffers

    gib = 2**30
    cluster = tmp_path / "postgres"
    assert auto_shared_buffers(cluster, 24 * gib) == "256MB", "no cluster yet"
    database = cluster / "base" / "16384"
    database.mkdir(parents=True)
    for n, size in enumerate([gib, gib, gib // 2]):  # relation segments, sparse: only their size is read
        with (database / f"{16400 + n}").open("wb") as segment:
            segment.truncate(size)
    assert auto_shared_buffers(cluster, 24 * gib) == "853MB", "a third of 2.5 GiB"
    for n in range(30):
        with (database / f"16500.{n + 1}").open("wb") as segment:
            segment.truncate(gib)
    assert auto_shared_buffers(cluster, 24 * gib) == "6144MB", "a quarter of the machine's memory"
    assert auto_shared_buffers(cluster, 64 * gib) == "8192MB", "8GB at most"
    assert auto_shared_buffers(cluster, gib) == "256MB", "never under Postgres' floor here"
