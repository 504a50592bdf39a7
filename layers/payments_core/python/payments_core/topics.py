"""The service's Kafka topics, created when missing (deploy-time custom resource).

MSK Serverless never auto-creates topics, so without this the event source mapping would find
no ``payment_commands`` and the producers no ``payment_events``. Idempotent: a topic that
exists is left exactly as it is, even with another partition count, because adding partitions
moves keys to other partitions and so breaks the per-order ordering of commands.
"""

from __future__ import annotations

from typing import Any

from payments_core.config import Settings, get_settings
from payments_core.observability import logger


def ensure_topics(
    topics: list[str], partitions: int, replication_factor: int, settings: Settings | None = None
) -> dict[str, str]:
    """Create each missing topic; return ``{topic: "created" | "exists"}``."""
    from kafka.admin import KafkaAdminClient  # imported on first use: cold start
    from kafka.errors import TopicAlreadyExistsError

    s = settings or get_settings()
    config: dict[str, Any] = {
        "bootstrap_servers": s.kafka_bootstrap_servers.split(","),
        "security_protocol": s.kafka_security_protocol,
        "client_id": "payment-service-topics",
        "request_timeout_ms": 30_000,
    }
    if s.kafka_security_protocol.startswith("SASL"):
        config["sasl_mechanism"] = s.kafka_sasl_mechanism  # AWS_MSK_IAM: the function's own role
    admin = KafkaAdminClient(**config)
    try:
        existing = set(admin.list_topics())
        outcome = {topic: "exists" if topic in existing else "created" for topic in topics}
        missing = [topic for topic, state in outcome.items() if state == "created"]
        for topic in missing:
            try:
                admin.create_topics(
                    {topic: {"num_partitions": partitions, "replication_factor": replication_factor}},
                    wait_for_metadata=True,
                )
            except TopicAlreadyExistsError:  # created meanwhile by a concurrent deploy
                outcome[topic] = "exists"
        for described in admin.describe_topics([t for t, state in outcome.items() if state == "exists"]):
            count = len(described.get("partitions") or [])
            if count != partitions:
                logger.warning(
                    "topic exists with another partition count; left unchanged",
                    extra={"topic": described.get("topic"), "partitions": count, "configured": partitions},
                )
    finally:
        admin.close()
    logger.info("kafka topics ensured", extra={"topics": outcome})
    return outcome
