"""The benchmark's own MSK event source mapping, on a topic of its own (sections g and i)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from local.stack.settings import REPO_ROOT
from tools.bench.harness import (
    authorize,
)
from tools.bench.report import say


def new_topic(partitions: int) -> str:
    from kafka.admin import KafkaAdminClient

    name = f"bench.commands.{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], client_id="bench")
    try:
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True
        )
    finally:
        admin.close()
    return name


def drop_topic(name: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], client_id="bench")
    try:
        admin.delete_topics([name])
    except Exception as exc:  # a leftover benchmark topic harms nothing
        say(f"    (could not delete {name}: {exc})")
    finally:
        admin.close()


class BenchMapping:
    """A local event source mapping in its own process, on its own topic and consumer group,
    with the service's environment changed for this run (Stripe base, pool size)."""

    def __init__(
        self, topic: str, stripe_base: str, workers: int, log_path: Path, stripe_in_flight: int | None
    ) -> None:
        env = {
            **os.environ,
            "LOCAL_ESM_TOPIC": topic,
            "LOCAL_ESM_GROUP_ID": f"bench-esm-{uuid.uuid4().hex[:8]}",
            "STRIPE_API_BASE": stripe_base,
            "COMMAND_WORKERS": str(workers),
            # the double stands for live Stripe (the service's default cap); localstripe keeps
            # the local mapping's test-mode cap
            **({"STRIPE_MAX_IN_FLIGHT": str(stripe_in_flight)} if stripe_in_flight else {}),
            "POWERTOOLS_LOG_LEVEL": "WARNING",  # the REPORT lines are the mapping's own, at INFO
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "local.stack.event_source"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while "READY" not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the benchmark's event source mapping did not start: see {log_path}")
            time.sleep(0.1)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def reports(self, after: int = 0) -> list[float]:
        """Invocation durations (ms) from the REPORT lines after character ``after``."""
        import re

        return [
            float(m) for m in re.findall(r"REPORT \S+ records=\d+ duration_ms=([0-9.]+)", self.text()[after:])
        ]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def read_events_from_now(consumer: Any) -> None:
    """Assign ``consumer`` every payment_events partition, positioned at its end."""
    from kafka import TopicPartition

    events = [
        TopicPartition("payment_events", p) for p in consumer.partitions_for_topic("payment_events") or []
    ]
    consumer.assign(events)
    consumer.seek_to_end(*events)
    for tp in events:
        consumer.position(tp)


def warm_up(
    producer: Any,
    consumer: Any,
    topic: str,
    partitions: int,
    workers: int,
    card: tuple[str, str],
    prefix: str,
    *,
    timeout: float,
) -> None:
    """Not counted: enough orders per partition to start each partition's container and open
    every worker's database connection, as in a warm function; returns once all are answered."""
    warm = {f"{prefix}-warm-{uuid.uuid4()}": p for p in range(partitions) for _ in range(workers)}
    for order_id, p in warm.items():
        producer.send(topic, json.dumps(authorize(order_id, *card)).encode(), partition=p)
    producer.flush()
    answers(consumer, set(warm), timeout=timeout)


def answers(consumer: Any, wanted: set[str], timeout: float) -> dict[str, float]:
    """First payment_events arrival time per wanted order."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=100).values():
            now = time.perf_counter()
            for r in records:
                key = r.key.decode() if r.key is not None else ""
                if key in wanted and key not in seen:
                    seen[key] = now
    return seen
