"""Managed Kafka: the SASL/SSL settings reach every client of the platform, and kafka-python accepts them."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaProducer
from pydantic import ValidationError

from streamrag_assets.kafka import offsets
from streamrag_assets.settings import Settings, get_settings

SASL = {
    "STREAMRAG_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "STREAMRAG_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "STREAMRAG_KAFKA_SASL_USERNAME": "streamrag",
    "STREAMRAG_KAFKA_SASL_PASSWORD": "s3cret",
}


@pytest.fixture
def managed_kafka(monkeypatch, tmp_path: Path):
    for name, value in SASL.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAMRAG_HOME", str(tmp_path))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_every_client_connects_with_the_configured_sasl_ssl(managed_kafka: Settings) -> None:
    assert managed_kafka.kafka_client_config() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "streamrag",
        "sasl_plain_password": "s3cret",
    }
    # api_version given: the clients are built without reaching a broker (there is none here).
    consumer = offsets.make_consumer("127.0.0.1:1", api_version=(2, 5))
    try:
        assert consumer.config["security_protocol"] == "SASL_SSL"
        assert consumer.config["sasl_mechanism"] == "SCRAM-SHA-512"
    finally:
        consumer.close()
    producer = KafkaProducer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5), **managed_kafka.kafka_client_config())
    try:
        assert producer.config["sasl_plain_username"] == "streamrag"
    finally:
        producer.close(timeout=1)
    assert "s3cret" not in repr(managed_kafka), "the password is a secret in the settings' repr"


def test_sasl_without_credentials_is_a_clear_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs STREAMRAG_KAFKA_SASL_MECHANISM"):
        Settings(home=tmp_path, kafka_security_protocol="SASL_SSL")
    assert Settings(home=tmp_path).kafka_client_config() == {"security_protocol": "PLAINTEXT"}
