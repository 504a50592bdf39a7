"""make bench (h): how fast the outbox drains after a Kafka outage, under a steady load."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from local.stack import control as stack
from local.stack.lambda_runtime import FakeLambdaContext
from tools.bench.harness import (
    InstantStripe,
    authorize,
    msk_event,
    run_batches,
)
from tools.bench.report import Report, Row, say


@dataclass
class SteadyLoad:
    """Authorize commands through ``handle_command_batch`` in-process (zero-latency Stripe double,
    real PostgreSQL, the real publisher after each batch) at ``rate`` per second, in one batch
    every ``interval`` s, each batch due at its slot (a late one is sent at once: catch-up)."""

    rate: float
    interval: float = 2.0
    produced: int = 0
    batches: int = 0
    late: int = 0  # batches that started after their slot
    failures: int = 0
    stop: Any = None
    error: BaseException | None = None

    def run(self, services: Any, prefix: str) -> None:
        from payments_core.entrypoints.commands import handle_command_batch

        context = FakeLambdaContext(function_name="authorize_payment", timeout_seconds=900)
        size = max(1, round(self.rate * self.interval))
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                due = started + self.batches * self.interval
                wait = due - time.monotonic()
                if wait > 0:
                    self.stop.wait(wait)
                    if self.stop.is_set():
                        break
                elif wait < -0.5:
                    self.late += 1
                batch = [authorize(f"{prefix}{uuid.uuid4()}", "cus_bench", "pm_bench") for _ in range(size)]
                response = handle_command_batch(msk_event(batch, self.produced), context, services)
                self.failures += len(response.get("batchItemFailures") or [])
                self.produced += size
                self.batches += 1
        except BaseException as exc:  # surfaced by the section: a thread's exception is otherwise lost
            self.error = exc


def _unsent_up_to(db: Any, last_id: int) -> int:
    rows = db.query(
        "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL AND id <= :last", last=last_id
    )
    return int(rows[0]["n"])


def bench_outbox_drain(report: Report, rate: float, outage_s: float, timeout: float = 600.0) -> None:
    """Authorize commands at a steady rate while the local Kafka broker is stopped for
    ``outage_s``; then how long the stack's scheduled relay (functions/outbox_relay, every second
    locally) takes to publish every row that waited when the broker was back, under the same load."""
    import dataclasses
    import threading

    keys = (
        ("outbox_drain_s", "outbox drain after a Kafka outage"),
        ("outbox_drain_per_s", "outbox drain rate"),
    )
    if not stack.is_running("scheduler"):
        for key, label in keys:
            report.add(Row(key, label, None, note="the local scheduler (the outbox relay) is not running"))
        return
    from payments_core.adapters.kafka.kafka_gateway import KafkaEventPublisher
    from payments_core.adapters.postgres.db import Database
    from payments_core.adapters.services import Services
    from payments_core.config import get_settings

    say(f"(h) {rate:.0f} authorize commands/s; the Kafka broker stopped for {outage_s:.0f} s ...")
    # The load's own publish after each batch waits for the broker at most ~1.5 s (not the
    # default 6 s), so a batch during the outage still fits its slot.
    settings = dataclasses.replace(get_settings(), kafka_send_timeout_seconds=0.5)
    stripe: Any = InstantStripe()  # the StripeGateway protocol, by duck typing as in make_services
    services = Services(
        db=Database(settings),
        stripe=stripe,
        publisher=KafkaEventPublisher(settings),
        settings=settings,
    )
    probe = Database(get_settings())
    load = SteadyLoad(rate, stop=threading.Event())
    warm = [authorize(f"bench-warm-{uuid.uuid4()}", "cus_bench", "pm_bench") for _ in range(10)]
    run_batches(services, warm, 10)
    thread = threading.Thread(
        target=load.run, args=(services, f"bench-h-{uuid.uuid4().hex[:8]}-"), daemon=True
    )
    thread.start()
    drained_at: float | None = None
    peak = backlog = 0
    try:
        time.sleep(10)  # steady state first: the outbox empties as fast as it fills
        before = _unsent_up_to(probe, 2**62)
        produced_before = load.produced
        stack.down(["kafka"])
        down_at = time.monotonic()
        try:
            time.sleep(outage_s)
        finally:
            stack.up(["kafka"])
        up_at = time.monotonic()
        produced_in_outage = load.produced - produced_before
        last_id = int(probe.query("SELECT coalesce(max(id), 0) AS m FROM outbox")[0]["m"])
        backlog = _unsent_up_to(probe, last_id)
        say(f"    broker back after {up_at - down_at:.0f} s; {backlog} rows waiting")
        while time.monotonic() - up_at < timeout:
            waiting = _unsent_up_to(probe, last_id)
            peak = max(peak, waiting)
            if waiting == 0:
                drained_at = time.monotonic()
                break
            time.sleep(0.25)
    finally:
        load.stop.set()
        thread.join(timeout=60)
    probe.close()
    services.db.close()
    if load.error is not None:
        raise load.error
    setup = (
        f"{rate:.0f} authorize commands/s in-process (zero-latency Stripe double, batches every "
        f"{load.interval:.0f} s; {load.produced} in all, {produced_in_outage} while the broker was down, "
        f"{load.late} batches late, {load.failures} item failures); broker stopped {outage_s:.0f} s, "
        f"back (ready) after {up_at - down_at:.0f} s; {before} rows unsent before the outage"
    )
    figures = {"backlog_rows": backlog, "outage_s": round(up_at - down_at, 1), "rate": rate}
    if drained_at is None:
        note = f"{backlog} rows waited when the broker was back; not drained within {timeout:.0f} s; {setup}"
        report.add(Row(keys[0][0], keys[0][1], None, "s", note=note, figures=figures))
        return
    seconds = drained_at - up_at
    figures["drain_s"] = round(seconds, 2)
    report.add(
        Row(
            keys[0][0],
            keys[0][1],
            seconds,
            "s",
            note=f"{backlog} rows waiting when the broker was back (ready), all published; {setup}",
            figures=figures,
        )
    )
    report.add(
        Row(
            keys[1][0],
            keys[1][1],
            backlog / seconds if seconds else None,
            "/s",
            note="rows of that backlog / drain time, load still running",
        )
    )
