"""The outbox relay's scheduled pass: publish what waits, oldest first, and report the backlog."""

from __future__ import annotations

from payments_core import outbox
from payments_core.observability import count
from payments_core.services import Services, get_services


def relay_outbox(services: Services | None = None) -> dict[str, int]:
    services = services or get_services()
    report = outbox.relay(services.db, services.publisher)
    waiting, oldest_age = outbox.backlog(services.db)
    count("OutboxBacklog", waiting)
    return {
        "published": report.published,
        "failed": report.failed,
        "backlog": waiting,
        "oldest_age_s": int(oldest_age),
    }
