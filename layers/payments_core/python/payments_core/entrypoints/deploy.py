"""What a deploy runs (CloudFormation custom resources) and ``make partitions`` asks for: the
schema migrations, the Kafka topics, and growing the commands topic."""

from __future__ import annotations

from payments_core.adapters.kafka.partitions import operate as operate_partitions
from payments_core.adapters.kafka.topics import ensure_topics
from payments_core.adapters.postgres.migrate import run as apply_schema_migrations

__all__ = ["apply_schema_migrations", "ensure_topics", "operate_partitions"]
