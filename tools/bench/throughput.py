"""make bench (g): throughput at Stripe's latency through the local mapping.

make bench, section (g): throughput at Stripe's latency through the local mapping, against
the latency-only double, localstripe behind a latency proxy and raw localstripe: commands/s,
command-to-event latency, duplicate holds, Lambda cost, and the database sessions tied up
while Stripe answers."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from local.doubles.db_activity import InFlightSampler, InFlightSummary
from local.stack.settings import STRIPE_SECRET_KEY
from local.stack.settings import load as load_local_settings
from tools.bench.harness import (
    STRIPE_LATENCY_S,
    authorize,
    localstripe_card,
)
from tools.bench.mapping import BenchMapping, answers, drop_topic, new_topic, read_events_from_now, warm_up
from tools.bench.report import Report, Row, percentile, say

# AWS Lambda on arm64 (ap-southeast-1): per GB-second and per request
LAMBDA_GB_SECOND_USD = 0.0000133334
LAMBDA_REQUEST_USD = 0.20 / 1_000_000


@dataclass
class ThroughputRun:
    commands: int
    seconds: float
    latencies: list[float]
    unanswered: int
    duplicate_holds: int | None
    billed_ms: float
    invocations: int
    backends: InFlightSummary | None = None  # sessions tied up while Stripe answers (the double)

    @property
    def per_second(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0


def run_through_mapping(
    stripe_base: str,
    partitions: int,
    workers: int,
    orders: int,
    copies: int,
    card: tuple[str, str],
    creates: Any,
    log_path: Path,
    stripe_in_flight: int | None = None,
    stripe_progress: Callable[[], tuple[int, int]] | None = None,
) -> ThroughputRun:
    """``stripe_progress``: the latency double's (requests received, answered); with it, the
    service's database sessions are sampled during the measured run (not the warm-up)."""
    import random

    from kafka import KafkaConsumer, KafkaProducer

    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    topic = new_topic(partitions)
    mapping = BenchMapping(topic, stripe_base, workers, log_path, stripe_in_flight)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        read_events_from_now(consumer)
        warm_up(producer, consumer, topic, partitions, workers, card, "bench-g", timeout=120)
        log_mark = len(mapping.text())

        rng = random.Random(13)
        order_ids = [f"bench-g-{uuid.uuid4()}" for _ in range(orders)]
        copied = set(rng.sample(order_ids, min(copies, orders)))
        sends: list[tuple[str, int]] = []
        for i, order_id in enumerate(order_ids):
            sends.append((order_id, i % partitions))
            if order_id in copied:  # the copy right behind it, on any partition
                sends.append((order_id, rng.randrange(partitions)))
        commands = {order_id: authorize(order_id, *card) for order_id in order_ids}
        sent_at: dict[str, float] = {}
        sampler = InFlightSampler(stripe_progress) if stripe_progress else None
        with sampler or nullcontext():
            started = time.perf_counter()
            for order_id, p in sends:
                sent_at.setdefault(order_id, time.perf_counter())
                producer.send(topic, json.dumps(commands[order_id]).encode(), partition=p)
            producer.flush()
            timeout = 60 + len(sends) * STRIPE_LATENCY_S * 2 / max(1, partitions)
            answered = answers(consumer, set(order_ids), timeout=timeout)
        finished = max(answered.values(), default=started)
        time.sleep(2)  # copies still in flight finish before holds are counted
        durations = mapping.reports(after=log_mark)
    finally:
        mapping.stop()
        producer.close()
        consumer.close()
        drop_topic(topic)
    duplicates = creates(order_ids) if creates is not None else None
    return ThroughputRun(
        commands=len(sends),
        seconds=finished - started,
        latencies=[answered[o] - sent_at[o] for o in answered],
        unanswered=len(order_ids) - len(answered),
        duplicate_holds=duplicates,
        billed_ms=sum(float(int(d) + 1) for d in durations),
        invocations=len(durations),
        backends=sampler.summary() if sampler else None,
    )


def _localstripe_duplicates(order_ids: list[str], customer_id: str) -> int:
    """Orders with more than one PaymentIntent in localstripe (read directly, no proxy)."""
    import stripe

    client: Any = stripe.StripeClient(
        STRIPE_SECRET_KEY, base_addresses={"api": os.environ["STRIPE_API_BASE"]}, max_network_retries=0
    )
    wanted = set(order_ids)
    per_order: dict[str, int] = {}
    params: dict[str, Any] = {"customer": customer_id, "limit": 100}
    while True:
        page = client.v1.payment_intents.list(params=params)
        for intent in page.data:
            order_id = (intent.to_dict().get("metadata") or {}).get("order_id")
            if order_id in wanted:
                per_order[order_id] = per_order.get(order_id, 0) + 1
        if not page.has_more or not page.data:
            break
        params["starting_after"] = page.data[-1].id
    return sum(1 for n in per_order.values() if n > 1)


THROUGHPUT_SETUPS = ("double3", "double1", "proxy", "raw")
# A session held across a Stripe call counts 1 per in-flight order for the call's whole length;
# other orders' short transactions running at the same moment count a fraction. Below half a
# session per in-flight order, no session is held across calls.
BUSY_PER_IN_FLIGHT_LIMIT = 0.5


def busy_backends_row(key: str, setup: str, seen: InFlightSummary) -> Row:
    """Service sessions (application_name payment-service) active, idle in a transaction or
    holding a lock, per order in flight at the double, sampled every ~75 ms (issue 16)."""
    measured = seen.during_calls > 0
    return Row(
        f"{key}_busy_backends_per_order",
        f"  backends busy per in-flight order ({setup})",
        f"mean {seen.busy_mean:.2f}, max {seen.busy_max:.2f}" if measured else "no samples",
        target="0 while Stripe answers",
        within=seen.busy_mean < BUSY_PER_IN_FLIGHT_LIMIT if measured else None,
        note=(
            "busy: active, idle in a transaction or holding a lock; "
            f"advisory-lock holders per in-flight order mean {seen.advisory_mean:.2f}, max "
            f"{seen.advisory_max:.2f}; non-zero in {seen.nonzero_share:.0%} of {seen.during_calls} "
            f"samples with Stripe requests in flight ({seen.samples} taken, "
            f"{seen.in_flight_mean:.1f} in flight on average); status ok below "
            f"{BUSY_PER_IN_FLIGHT_LIMIT} per order"
        ),
        figures=asdict(seen),
    )


def bench_throughput(
    report: Report,
    orders: int,
    copies: int,
    memory_mb: int,
    default_workers: int,
    only: list[str] | None = None,
) -> None:
    from local.doubles.stripe_latency import StripeLatencyDouble, StripeLatencyProxy

    out = load_local_settings().state_dir / "bench"
    raw_base = os.environ["STRIPE_API_BASE"]
    double = StripeLatencyDouble(STRIPE_LATENCY_S).start()
    proxy = StripeLatencyProxy(raw_base, STRIPE_LATENCY_S).start()
    localstripe_customer, localstripe_method = localstripe_card()
    setups = [
        ("double3", "double, 3 partitions", double.url, 3, ("cus_bench", "pm_bench"), double.duplicate_holds),
        ("double1", "double, 1 partition", double.url, 1, ("cus_bench", "pm_bench"), double.duplicate_holds),
        (
            "proxy",
            "localstripe +300 ms, 3 partitions",
            proxy.url,
            3,
            (localstripe_customer, localstripe_method),
            lambda ids: _localstripe_duplicates(ids, localstripe_customer),
        ),
        (
            "raw",
            "raw localstripe, 3 partitions",
            raw_base,
            3,
            (localstripe_customer, localstripe_method),
            lambda ids: _localstripe_duplicates(ids, localstripe_customer),
        ),
    ]
    total = orders + min(copies, orders)
    try:
        for name, label, base, partitions, card, creates in setups:
            if only and name not in only:
                continue
            for workers in (1, default_workers):
                if label.startswith("raw") and workers == 1:
                    continue  # raw localstripe is measured for its ceiling, with the pool
                pool = "one at a time" if workers == 1 else f"pool of {workers}"
                say(f"(g) {total} commands, {label}, {pool} ...")
                run = run_through_mapping(
                    base,
                    partitions,
                    workers,
                    orders,
                    copies,
                    card,
                    creates,
                    out / f"mapping-{workers}.log",
                    stripe_in_flight=workers if name.startswith("double") else None,
                    stripe_progress=double.progress if name.startswith("double") else None,
                )
                key = f"throughput_{label.split(',')[0].replace(' ', '_').replace('+', '')}_{partitions}p_{workers}w"
                key = key.replace("__", "_")
                p50 = percentile(run.latencies, 50) if run.latencies else None
                p99 = percentile(run.latencies, 99) if run.latencies else None
                gb_s = run.billed_ms / 1000 * memory_mb / 1024
                cost = (
                    (gb_s * LAMBDA_GB_SECOND_USD + run.invocations * LAMBDA_REQUEST_USD) / run.commands * 1000
                )
                note = (
                    f"p50 {p50:.2f} s, p99 {p99:.2f} s; "
                    if p50 is not None and p99 is not None
                    else "no answers; "
                ) + (
                    f"duplicate holds {run.duplicate_holds}, unanswered {run.unanswered}; "
                    f"{run.invocations} invocations, ${cost:.5f} per 1,000 commands at {memory_mb} MB"
                )
                target = ""
                within: bool | None = None
                if workers != 1 and label.startswith("double"):
                    need = 80 if partitions == 3 else 40
                    target = f">= {need} /s" + (", p99 < 5 s" if partitions == 3 else "")
                    within = run.per_second >= need and (partitions != 3 or (p99 or 99) < 5)
                clean = run.duplicate_holds in (0, None) and run.unanswered == 0
                report.add(
                    Row(f"{key}_per_s", f"{label}, {pool}", run.per_second, "/s", target, within, note)
                )
                report.add(
                    Row(
                        f"{key}_p99_s",
                        f"  p99 command -> event ({label}, {pool})",
                        p99,
                        "s",
                        "dup 0, unanswered 0",
                        clean,
                        note=f"p50 {p50:.3f} s" if p50 is not None else "",
                    )
                )
                report.add(Row(f"{key}_cost_usd", f"  Lambda $ per 1,000 ({label}, {pool})", f"${cost:.5f}"))
                if run.backends is not None:
                    report.add(busy_backends_row(key, f"{label}, {pool}", run.backends))
    finally:
        double.stop()
        proxy.stop()
