"""How long the retention job keeps each kind of row: RETAIN_*_DAYS, their floors and defaults.

Apart from the other settings because each period carries its own reason (below) and the
periods are checked against each other (payments outlive every other live table's rows).
"""

from __future__ import annotations

from dataclasses import dataclass

from payments_core.env_values import env_int

# Retention (payments_core.usecases.retention): how long each kind of row is kept, in days, and the
# least each setting accepts. A floor is what correctness needs, not taste: a lower value would
# delete rows something may still read, so it is refused (ValueError) rather than clamped.
# - stripe_events: Stripe retries a webhook for up to 3 days; an id forgotten sooner would let
#   a retried event be applied twice.
# - command_outcomes: a Kafka record can be re-delivered while the topic keeps it (7 days, the
#   MSK and Kafka default retention.ms: topics.py sets none); once its answer is gone a
#   re-delivery is judged afresh against a payment that has moved on.
# - outbox: published rows; the order's latest row and rows a kept command_outcome names are
#   kept regardless (a re-delivery re-queues its answer only while it is the latest).
# - order_leases / stripe_money_calls: only of payments that are over and settled (see the
#   retention module); a day is far beyond any lease (40 s) or the audit's in-doubt horizon.
# - payments: over (SUCCEEDED, REVERTED, FAILED) and settled payments move to the archive
#   (payments_core.adapters.postgres.archive), after which no webhook or refund changes them. The floor is past
#   the card networks' 120-day dispute filing window (Visa allows up to 540 days for a few
#   reasons: docs/retention.md) and must exceed every other period here.
# - payments_archive: archived payments are deleted this long after their last change; their
#   totals stay in the roll-ups. 7 years: a common accounting-records period (Singapore asks
#   for at least 5); finance decides.
RETENTION_FLOOR_DAYS = {
    "outbox": 4,
    "stripe_events": 4,
    "order_leases": 1,
    "stripe_money_calls": 1,
    "command_outcomes": 8,
    "payments": 130,
    "payments_archive": 366,
}
RETENTION_DEFAULT_DAYS = {
    "outbox": 7,
    "stripe_events": 30,
    "order_leases": 7,
    "stripe_money_calls": 30,
    "command_outcomes": 8,
    "payments": 400,
    "payments_archive": 2557,
}
RETENTION_ENV = {
    "outbox": "RETAIN_OUTBOX_DAYS",
    "stripe_events": "RETAIN_STRIPE_EVENTS_DAYS",
    "order_leases": "RETAIN_ORDER_LEASES_DAYS",
    "stripe_money_calls": "RETAIN_MONEY_CALLS_DAYS",
    "command_outcomes": "RETAIN_COMMAND_OUTCOMES_DAYS",
    "payments": "RETAIN_PAYMENTS_DAYS",
    "payments_archive": "RETAIN_ARCHIVED_PAYMENTS_DAYS",
}
# Kept in payments until everything else about the order has gone (its outbox rows, leases and
# money calls are deleted with it), and archived long before the archive's own period ends.
_LIVE_TABLES = ("outbox", "stripe_events", "order_leases", "stripe_money_calls", "command_outcomes")
DEFAULT_RETENTION_BATCH_ROWS = 1000


@dataclass(frozen=True)
class RetentionSettings:
    """Days each table's rows are kept (see RETENTION_DEFAULT_DAYS for the defaults' reasons)."""

    outbox_days: int = RETENTION_DEFAULT_DAYS["outbox"]
    stripe_events_days: int = RETENTION_DEFAULT_DAYS["stripe_events"]
    order_leases_days: int = RETENTION_DEFAULT_DAYS["order_leases"]
    stripe_money_calls_days: int = RETENTION_DEFAULT_DAYS["stripe_money_calls"]
    command_outcomes_days: int = RETENTION_DEFAULT_DAYS["command_outcomes"]
    payments_days: int = RETENTION_DEFAULT_DAYS["payments"]
    payments_archive_days: int = RETENTION_DEFAULT_DAYS["payments_archive"]
    # rows per DELETE statement: each one is short, so no lock is held for long
    batch_rows: int = DEFAULT_RETENTION_BATCH_ROWS

    def days(self, table: str) -> int:
        return int(getattr(self, f"{table}_days"))


def retention_settings() -> RetentionSettings:
    """RETAIN_*_DAYS (whole days, at least the table's floor; payments longer than every other
    live period, the archive longer than payments) and RETENTION_BATCH_ROWS (1-10000)."""
    days: dict[str, int] = {}
    for table, env in RETENTION_ENV.items():
        value = env_int(env, RETENTION_DEFAULT_DAYS[table])
        if value < RETENTION_FLOOR_DAYS[table]:
            raise ValueError(
                f"{env} must be at least {RETENTION_FLOOR_DAYS[table]} days (rows still needed), got {value}"
            )
        days[f"{table}_days"] = value
    longest = max(_LIVE_TABLES, key=lambda t: days[f"{t}_days"])
    if days["payments_days"] <= days[f"{longest}_days"]:
        raise ValueError(
            f"RETAIN_PAYMENTS_DAYS must exceed {RETENTION_ENV[longest]} ({days[f'{longest}_days']}):"
            " a payment is archived only after the rest of its order's rows"
        )
    if days["payments_archive_days"] <= days["payments_days"]:
        raise ValueError(
            "RETAIN_ARCHIVED_PAYMENTS_DAYS must exceed RETAIN_PAYMENTS_DAYS"
            f" ({days['payments_days']}): an archived payment would be deleted as soon as it is archived"
        )
    batch = env_int("RETENTION_BATCH_ROWS", DEFAULT_RETENTION_BATCH_ROWS)
    if not 1 <= batch <= 10_000:
        raise ValueError(f"RETENTION_BATCH_ROWS must be between 1 and 10000, got {batch}")
    return RetentionSettings(**days, batch_rows=batch)
