"""The service's Kafka topics, created when missing (deploy-time custom resource).

MSK Serverless never auto-creates topics, so without this the event source mapping would find
no ``payment_commands`` and the producers no ``payment_events``. Idempotent: a topic that
exists keeps its partitions, because adding partitions moves keys to other partitions and so
could break the per-order ordering of commands. The one exception is ``grow_topic`` (the
commands topic): a larger configured count grows it, but only through
``payments_core.adapters.kafka.partitions.grow_partitions``, i.e. only while the event source mapping is
paused and drained; otherwise the deploy fails with the procedure to follow.
"""

from __future__ import annotations

from payments_core.adapters.kafka.partitions import PartitionGrowthRefused, admin_client, grow_partitions
from payments_core.config import Settings
from payments_core.observability import logger

GROW_PROCEDURE = (
    "adding partitions moves orders to other partitions, so it is done only with the mapping paused "
    "and drained: run `make partitions STAGE=<stage> PARTITIONS={target}` (pauses the mapping, waits "
    "for zero lag, grows, resumes), then deploy again (docs/operations-partitions.md)"
)


def ensure_topics(
    topics: list[str],
    partitions: int,
    replication_factor: int,
    settings: Settings | None = None,
    grow_topic: str | None = None,
    consumer_group: str | None = None,
) -> dict[str, str]:
    """Create each missing topic; grow ``grow_topic`` when it has fewer than ``partitions`` and
    ``consumer_group`` is paused and drained. Returns ``{topic: "created" | "exists" | "grown"}``."""
    from kafka.errors import TopicAlreadyExistsError

    admin = admin_client(settings)
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
            topic, count = (
                described.get("topic") or described.get("name"),
                len(described.get("partitions") or []),
            )
            if count == partitions:
                continue
            if topic == grow_topic and consumer_group and count < partitions:
                try:
                    grow_partitions(topic, partitions, consumer_group, admin=admin)
                except PartitionGrowthRefused as exc:
                    raise PartitionGrowthRefused(
                        f"{exc}; {GROW_PROCEDURE.format(target=partitions)}"
                    ) from exc
                outcome[topic] = "grown"
                continue
            # Fewer configured than present (a rollback, or grown ahead of the profile): never shrink.
            logger.warning(
                "topic exists with another partition count; left unchanged",
                extra={"topic": topic, "partitions": count, "configured": partitions},
            )
    finally:
        admin.close()
    logger.info("kafka topics ensured", extra={"topics": outcome})
    return outcome
