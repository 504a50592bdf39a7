"""make bench (c): command to event through Kafka and the stack's event source mapping."""

from __future__ import annotations

import json
import os
import time
import uuid

from local.stack import control as stack
from tools.bench.harness import (
    authorize,
    localstripe_card,
)
from tools.bench.report import Report, Row, percentile, say


def bench_end_to_end(report: Report, count: int, timeout: float) -> None:
    rows = ("end_to_end_p50_s", "end to end p50 (command -> event)"), ("end_to_end_p99_s", "end to end p99")
    if not stack.is_running("event-source"):
        reason = "the local event source mapping (event-source) is not running"
        for key, label in rows:
            report.add(Row(key, label, None, "s", "<= 1 s" if key.endswith("p50_s") else "", note=reason))
        return
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    say(f"(c) {count} commands through Kafka and the local event source mapping ...")
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    customer_id, method_id = localstripe_card()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    partitions = [
        TopicPartition("payment_events", p) for p in consumer.partitions_for_topic("payment_events") or []
    ]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)  # resolve the end offsets now, before anything is produced
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    latencies: list[float] = []
    missing = 0
    for n in range(count):
        order_id = f"bench-c-{uuid.uuid4()}"
        started = time.perf_counter()
        producer.send("payment_commands", json.dumps(authorize(order_id, customer_id, method_id)).encode())
        producer.flush()
        deadline = started + timeout
        got = False
        while not got and time.perf_counter() < deadline:
            for records in consumer.poll(timeout_ms=50).values():
                if any(r.key is not None and r.key.decode() == order_id for r in records):
                    got = True
        if got:
            latencies.append(time.perf_counter() - started)
        else:
            missing += 1
            if not latencies:
                break  # the first one never arrived: the mapping is not consuming
        if (n + 1) % 10 == 0:
            say(f"    {n + 1}/{count}")
    producer.close()
    consumer.close()
    if not latencies:
        for key, label in rows:
            report.add(Row(key, label, None, "s", note=f"no event within {timeout:.0f} s of its command"))
        return
    note = f"{len(latencies)} commands sent one at a time, localstripe" + (
        f"; {missing} timed out" if missing else ""
    )
    p50 = percentile(latencies, 50)
    report.add(Row(rows[0][0], rows[0][1], p50, "s", "<= 1 s", p50 <= 1, note=note))
    report.add(Row(rows[1][0], rows[1][1], percentile(latencies, 99), "s"))
