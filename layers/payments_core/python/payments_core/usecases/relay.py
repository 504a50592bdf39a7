"""The outbox relay's scheduled run: publish what waits, oldest first, batch after batch until
the backlog is gone or the invocation's time is nearly up, then report the backlog.

After a broker outage the outbox can hold hours of events; one batch a minute (the schedule)
would take a day to drain them, so each invocation keeps going while batches move."""

from __future__ import annotations

import time

from payments_core.adapters.postgres import outbox
from payments_core.adapters.services import Services, get_services
from payments_core.observability import count

# A batch that starts before the deadline may still wait for Kafka: up to the producer's
# delivery timeout (KAFKA_SEND_TIMEOUT_SECONDS + 1 s, 6 s by default) when the broker dies
# mid-batch, plus its two statements. The margin keeps that whole batch inside the timeout.
RELAY_MARGIN_S = 15.0


def relay_outbox(
    services: Services | None = None, *, deadline: float | None = None, batch_orders: int = 200
) -> dict[str, int]:
    """Batches until one publishes nothing (the backlog is gone, the broker is failing, or
    every waiting order is held by another publisher) or ``deadline`` (monotonic) has passed;
    without a deadline, until the backlog is gone."""
    services = services or get_services()
    published = failed = batches = 0
    while deadline is None or time.monotonic() < deadline:
        report = outbox.relay(services.db, services.publisher, max_orders=batch_orders)
        batches += 1
        published += report.published
        failed += report.failed
        # Nothing moved: retrying at once would only wait on the same broker or the same
        # locks again; the next scheduled run tries later.
        if not report.published:
            break
    waiting, oldest_age = outbox.backlog(services.db)
    count("OutboxBacklog", waiting)
    count("OutboxPublished", published)
    return {
        "published": published,
        "failed": failed,
        "batches": batches,
        "backlog": waiting,
        "oldest_age_s": int(oldest_age),
    }
