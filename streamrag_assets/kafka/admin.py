"""Topic administration: the raw topic is created once, by whichever process reaches the broker first."""

from __future__ import annotations

import logging
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streamrag_assets.settings import Settings

log = logging.getLogger(__name__)


def ensure_topic(settings: Settings, timeout_s: float = 60.0) -> None:
    """Create the raw topic if missing (partitions from settings); an existing topic is left as it is."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=settings.bootstrap_servers,
                request_timeout_ms=10_000,
                **settings.kafka_client_config(),
            )
            break
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka at {settings.bootstrap_servers} is not reachable: {exc}") from exc
            time.sleep(1)
    try:
        if settings.topic not in admin.list_topics():
            admin.create_topics([NewTopic(settings.topic, settings.topic_partitions, 1)])
            log.info("created topic %s with %d partitions", settings.topic, settings.topic_partitions)
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
