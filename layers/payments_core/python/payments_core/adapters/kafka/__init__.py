"""Kafka: publishing events (``kafka_gateway``), the service's topics and their partitions,
and the dead-letter destination for records no order can be answered for."""
