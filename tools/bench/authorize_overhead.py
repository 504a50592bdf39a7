"""make bench (a) and (b): what an authorize command costs the service itself.

make bench, sections (a) and (b): what an authorize command costs the service itself, with a
zero-latency Stripe double and against localstripe, through ``handle_command_batch``."""

from __future__ import annotations

import uuid

from tools.bench.harness import (
    InstantStripe,
    authorize,
    localstripe_card,
    make_services,
    run_batches,
)
from tools.bench.report import Report, Row, ms, percentile, say


def bench_authorize_double(report: Report, count: int, batch_size: int) -> None:
    say(f"(a) {count} authorize commands, batches of {batch_size}, zero-latency Stripe double ...")
    services = make_services(InstantStripe())
    warm = [authorize(f"bench-warm-{uuid.uuid4()}", "cus_bench", "pm_bench") for _ in range(batch_size)]
    run_batches(services, warm, batch_size)  # connection, producer and code paths warmed, not counted
    run = run_batches(
        services,
        [authorize(f"bench-a-{uuid.uuid4()}", "cus_bench", "pm_bench") for _ in range(count)],
        batch_size,
    )
    services.db.close()
    note = f"{count} commands in batches of {batch_size}; {run.item_failures} batch item failures"
    report.add(
        Row(
            "authorize_overhead_p50_ms",
            "authorize overhead p50 (batch/size)",
            ms(percentile(run.per_command, 50)),
            "ms",
            note=note,
        )
    )
    p99 = ms(percentile(run.per_command, 99))
    report.add(
        Row(
            "authorize_overhead_p99_ms", "authorize overhead p99 (batch/size)", p99, "ms", "<= 5 ms", p99 <= 5
        )
    )
    report.add(
        Row("authorize_record_p50_ms", "authorize per record p50", ms(percentile(run.per_record, 50)), "ms")
    )
    report.add(
        Row(
            "authorize_record_p99_ms",
            "authorize per record p99",
            ms(percentile(run.per_record, 99)),
            "ms",
            note="the record handler alone, without the batch's Kafka publish",
        )
    )
    report.add(
        Row("authorize_double_per_s", "authorize commands/s (double)", count / run.total_seconds, "/s")
    )


def bench_authorize_localstripe(report: Report, count: int, batch_size: int) -> None:
    from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
    from payments_core.config import get_settings

    say(f"(b) {count} authorize commands against localstripe ...")
    customer_id, method_id = localstripe_card()
    services = make_services(StripeApiGateway(get_settings()))
    commands = [authorize(f"bench-b-{uuid.uuid4()}", customer_id, method_id) for _ in range(count)]
    run = run_batches(services, commands, batch_size)
    services.db.close()
    report.add(
        Row(
            "authorize_localstripe_per_s",
            "authorize commands/s (localstripe)",
            count / run.total_seconds,
            "/s",
            note=f"p50 per record {ms(percentile(run.per_record, 50)):.1f} ms; "
            f"{run.item_failures} batch item failures",
        )
    )
