"""Settings, read once from the environment. Nothing else in the service reads os.environ.

Secrets are never environment values: the environment names the Secrets Manager secret,
and ``secrets`` fetches (and caches) its value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from payments_core.domain.return_urls import parse_origins


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _str(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value else default


# Booleans are parsed strictly: a misspelt DB_SSL=ture must stop the function at start-up, not
# quietly turn TLS off.
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(name: str, default: bool, *, also_true: frozenset[str] = frozenset()) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE or value in also_true:
        return True
    if value in _FALSE:
        return False
    accepted = ", ".join(sorted(_TRUE | also_true | _FALSE))
    raise ValueError(f"{name} must be a boolean ({accepted}), got {raw!r}")


def _ints(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        values = tuple(int(part) for part in raw.split(","))
    except ValueError as exc:
        raise ValueError(f"{name} must be comma-separated whole seconds, got {raw!r}") from exc
    if not values or min(values) < 0:
        raise ValueError(f"{name} must be comma-separated whole seconds, got {raw!r}")
    return values


def _bounded(name: str, default: float, least: float, most: float) -> float:
    """A number of the environment within [least, most]; ValueError naming the range otherwise."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number between {least:g} and {most:g}, got {raw!r}") from exc
    if not least <= value <= most:
        raise ValueError(f"{name} must be between {least:g} and {most:g}, got {raw!r}")
    return value


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
        value = _int(env, RETENTION_DEFAULT_DAYS[table])
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
    batch = _int("RETENTION_BATCH_ROWS", DEFAULT_RETENTION_BATCH_ROWS)
    if not 1 <= batch <= 10_000:
        raise ValueError(f"RETENTION_BATCH_ROWS must be between 1 and 10000, got {batch}")
    return RetentionSettings(**days, batch_rows=batch)


COMMAND_WORKERS_CEILING = 32
RECONCILE_WORKERS_CEILING = 16  # database connections a reconciler run may hold besides its own
# Far above any limit Stripe grants one account: a larger value is a mistake, refused.
MAX_STRIPE_REQUESTS_PER_SECOND = 10_000.0
# A day: Stripe's verdict on an account is not trusted for longer (0 trusts it not at all).
MAX_PAYOUT_ACCOUNT_CHECK_TTL_SECONDS = 86_400.0
DEFAULT_SESSION_TOKEN_LEEWAY_SECONDS = 5
MAX_USER_SERVICE_TIMEOUT_SECONDS = 10.0
MAX_SESSION_TOKEN_LEEWAY_SECONDS = 60  # more would keep a lapsed 60 s token alive twice as long
DEFAULT_AUDIT_BACKOFF_SECONDS = (120, 900, 3600, 21600, 86400)
# A stale payment the reconciler's look leaves where it was (a hold waiting for its release) is
# looked at again after 5 min, 15 min, then hourly: a lapsed hold is found within the hour.
DEFAULT_RECONCILE_BACKOFF_SECONDS = (300, 900, 3600)
# Vite's local origin, where campusG's saga points return_url (https://localhost:5173/customer/history)
DEFAULT_RETURN_URL_ORIGINS = ("http://localhost:5173", "https://localhost:5173")


@dataclass(frozen=True)
class Settings:
    # Kafka (MSK in AWS, a local broker in development)
    kafka_bootstrap_servers: str
    kafka_security_protocol: str  # PLAINTEXT locally, SASL_SSL on MSK
    kafka_sasl_mechanism: str  # AWS_MSK_IAM or OAUTHBEARER when SASL_SSL
    payment_events_topic: str
    payment_commands_topic: str  # the HTTP release/revert routes queue their commands here
    dead_letter_topic: str
    dead_letter_queue_url: str  # when set, dead letters go to this SQS queue instead of the topic
    kafka_send_timeout_seconds: float
    # PostgreSQL: credentials from Secrets Manager; host/port/name may be overridden (RDS Proxy)
    db_secret_id: str
    db_host: str
    db_port: int
    db_name: str
    db_ssl: bool
    db_timeout_seconds: int
    db_ca_bundle: str  # extra CAs to trust (PEM); empty: the RDS CA bundle shipped in the layer, if any
    db_iam_auth: bool  # connect as db_user with an IAM token (RDS Proxy), not the secret's password
    db_user: str  # with db_iam_auth: the application role to connect as
    db_app_secret_id: str  # migrations only: the application role's secret (its password is set from it)
    db_retention_secret_id: str  # migrations only: the retention job's role's secret, likewise
    # Stripe
    stripe_secret_key_secret_id: str
    stripe_webhook_secret_id: str
    stripe_api_base: str
    stripe_timeout_seconds: int
    stripe_max_network_retries: int
    webhook_tolerance_seconds: int
    # Business rules
    default_currency: str
    platform_fee_bps: int  # platform fee kept on release, in basis points of the captured amount
    minimum_amount_cents: int
    # Reconciler windows
    reconcile_pending_after_seconds: int
    reconcile_requires_action_after_seconds: int
    reconcile_authorized_after_seconds: int
    reconcile_batch_size: int  # payments read per query; a run loops until its deadline
    aws_region: str
    metrics_namespace: str  # per stage in AWS, so one stage's metrics never trip another's alarms
    # The settlement audit (reconciliation): an uncertain payment is re-checked against Stripe
    # after each of these delays in turn (the last repeats) until Stripe and the row agree. The
    # first also lets anything still in flight at Stripe land before the first look.
    audit_backoff_seconds: tuple[int, ...] = DEFAULT_AUDIT_BACKOFF_SECONDS
    # A stale payment still where it was after a look is looked at again after each of these
    # delays in turn (the last repeats) while it stays in that status (check_queue).
    reconcile_backoff_seconds: tuple[int, ...] = DEFAULT_RECONCILE_BACKOFF_SECONDS
    # The reconciler's Stripe calls per second (the audit and the stale checks): its share of
    # the account's request budget (live mode allows 100 reads/s), set per stage next to the
    # budget the other functions share. It bounds the reconciler's throughput (README,
    # "Operations": the final payments a day it keeps up with).
    audit_stripe_reads_per_second: float = 10.0
    # Checks a reconciler run makes at once, each on its own database connection: with Stripe
    # ~300 ms away one at a time is ~2.5 checks/s, below the pace above (README, "Operations").
    reconcile_workers: int = 4
    # A money call whose outcome we never learned (a timeout, a 5xx, a holder that died) may
    # still land at Stripe: its payment is not called settled until this long after the call.
    audit_in_doubt_seconds: float = 3600.0
    # How long a webhook waits for an order's lease before leaving its effect to the audit.
    webhook_lease_wait_seconds: float = 0.5
    # The command pool (payments_core.entrypoints.batch): worker threads per container, each with its own
    # database connection. Capped at COMMAND_WORKERS_CEILING: with Stripe at ~0.3-1 s a call,
    # 32 calls in flight is about Stripe's live write limit (100/s) for one container.
    command_workers: int = 16
    # Stripe requests in flight per container, across workers (a 429 lowers it for a while)
    stripe_max_in_flight: int = 16
    # Stripe limits requests per second per account (live mode 100, test mode 25, and 25 per
    # endpoint unless Stripe raised them); the command function's share of that budget is split
    # evenly between the containers that can run at once (its partitions, set by infra): each
    # container paces its requests to stripe_account_requests_per_second / stripe_budget_containers.
    # The default leaves live mode's other 20/s to the audit (10/s) and the webhook function.
    stripe_account_requests_per_second: float = 80.0
    stripe_budget_containers: int = 1
    # No record is started with less time left in the invocation than this: enough for one
    # Stripe call (STRIPE_TIMEOUT_SECONDS), its database commit and the events' publish.
    command_start_margin_ms: int = 15_000
    # The frontend's history route (public_history): Clerk session tokens. An empty issuer
    # verifies nothing (every request is answered 503); no origins, no CORS and no token's
    # azp accepted.
    clerk_issuer: str = ""
    clerk_jwks_url: str = ""  # default: the issuer's /.well-known/jwks.json
    frontend_origins: tuple[str, ...] = ()
    # clock skew allowed on exp and nbf (Clerk's session tokens live 60 s)
    session_token_leeway_seconds: int = DEFAULT_SESSION_TOKEN_LEEWAY_SECONDS
    # The origins an authorize's return_url may be on (Stripe appends the client secret to it)
    return_url_origins: tuple[str, ...] = DEFAULT_RETURN_URL_ORIGINS
    # campusG's user service: who a runner is and which Connect account is theirs. Every payout
    # destination is checked against it before anything is captured; empty: releases naming an
    # account wait (retried) until it is set. Its calls run under the order's lease, so the
    # timeout stays far below the lease's time to live (capped at MAX_USER_SERVICE_TIMEOUT_SECONDS).
    user_service_url: str = ""
    user_service_timeout_seconds: float = 5.0
    # More transfers than this to one Connect account within an hour raise PayoutVelocityHigh
    # (a warning and a metric to alarm on; the payout itself is not held back).
    payout_velocity_max_per_hour: int = 40
    # How long Stripe's word that a runner's Connect account can receive transfers is trusted
    # before a release reads the account again (0: read it on every release). An account
    # disconnected within this time is paid by a transfer Stripe refuses: the capture stands and
    # TransferFailed is alarmed (README, "Who gets paid").
    payout_account_check_ttl_seconds: float = 3600.0
    # How long the retention job keeps each kind of row (payments_core.usecases.retention)
    retention: RetentionSettings = RetentionSettings()


def _reads_per_second(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of Stripe requests per second, got {raw!r}") from exc
    if not 0 < value <= 1000:  # 0 would stop every call for ever; above live mode's limits is a typo
        raise ValueError(f"{name} must be above 0 and at most 1000 requests per second, got {raw!r}")
    return value


def _origins(name: str) -> tuple[str, ...]:
    """Comma-separated origins (``scheme://host[:port]``), compared exactly as browsers send them."""
    raw = os.environ.get(name) or ""
    return tuple(dict.fromkeys(o.strip().rstrip("/") for o in raw.split(",") if o.strip()))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    issuer = _str("CLERK_ISSUER", "").rstrip("/")
    return Settings(
        kafka_bootstrap_servers=_str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        kafka_security_protocol=_str("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        kafka_sasl_mechanism=_str("KAFKA_SASL_MECHANISM", "AWS_MSK_IAM"),
        payment_events_topic=_str("PAYMENT_EVENTS_TOPIC", "payment_events"),
        payment_commands_topic=_str("PAYMENT_COMMANDS_TOPIC", "payment_commands"),
        dead_letter_topic=_str("DEAD_LETTER_TOPIC", "payment_commands.dlq"),
        dead_letter_queue_url=_str("DEAD_LETTER_QUEUE_URL", ""),
        kafka_send_timeout_seconds=float(_str("KAFKA_SEND_TIMEOUT_SECONDS", "5")),
        db_secret_id=_str("DB_SECRET_ID", "campusg/payments/db-credentials"),
        db_host=_str("DB_HOST", ""),
        db_port=_int("DB_PORT", 0),
        db_name=_str("DB_NAME", ""),
        db_ssl=_bool("DB_SSL", True, also_true=frozenset({"require"})),
        db_timeout_seconds=_int("DB_TIMEOUT_SECONDS", 5),
        db_ca_bundle=_str("DB_CA_BUNDLE", ""),
        db_iam_auth=_bool("DB_IAM_AUTH", False),
        db_user=_str("DB_USER", ""),
        db_app_secret_id=_str("DB_APP_SECRET_ID", ""),
        db_retention_secret_id=_str("DB_RETENTION_SECRET_ID", ""),
        stripe_secret_key_secret_id=_str("STRIPE_SECRET_KEY_SECRET_ID", "campusg/payments/stripe-secret-key"),
        stripe_webhook_secret_id=_str("STRIPE_WEBHOOK_SECRET_ID", "campusg/payments/stripe-webhook-secret"),
        stripe_api_base=_str("STRIPE_API_BASE", "https://api.stripe.com"),
        stripe_timeout_seconds=_int("STRIPE_TIMEOUT_SECONDS", 10),
        stripe_max_network_retries=_int("STRIPE_MAX_NETWORK_RETRIES", 1),
        webhook_tolerance_seconds=_int("WEBHOOK_TOLERANCE_SECONDS", 300),
        default_currency=_str("DEFAULT_CURRENCY", "sgd").lower(),
        platform_fee_bps=_int("PLATFORM_FEE_BPS", 0),
        minimum_amount_cents=_int("MINIMUM_AMOUNT_CENTS", 50),
        reconcile_pending_after_seconds=_int("RECONCILE_PENDING_AFTER_SECONDS", 60),
        reconcile_requires_action_after_seconds=_int("RECONCILE_REQUIRES_ACTION_AFTER_SECONDS", 3600),
        reconcile_authorized_after_seconds=_int("RECONCILE_AUTHORIZED_AFTER_SECONDS", 6 * 86400 + 12 * 3600),
        reconcile_batch_size=_int("RECONCILE_BATCH_SIZE", 50),
        audit_backoff_seconds=_ints("AUDIT_BACKOFF_SECONDS", DEFAULT_AUDIT_BACKOFF_SECONDS),
        reconcile_backoff_seconds=_ints("RECONCILE_BACKOFF_SECONDS", DEFAULT_RECONCILE_BACKOFF_SECONDS),
        audit_stripe_reads_per_second=_reads_per_second("AUDIT_STRIPE_READS_PER_SECOND", 10.0),
        reconcile_workers=max(1, min(RECONCILE_WORKERS_CEILING, _int("RECONCILE_WORKERS", 4))),
        audit_in_doubt_seconds=float(_str("AUDIT_IN_DOUBT_SECONDS", "3600")),
        webhook_lease_wait_seconds=float(_str("WEBHOOK_LEASE_WAIT_SECONDS", "0.5")),
        aws_region=_str("AWS_REGION", _str("AWS_DEFAULT_REGION", "ap-southeast-1")),
        command_workers=max(1, min(COMMAND_WORKERS_CEILING, _int("COMMAND_WORKERS", 16))),
        stripe_max_in_flight=max(1, _int("STRIPE_MAX_IN_FLIGHT", 16)),
        stripe_account_requests_per_second=_bounded(
            "STRIPE_ACCOUNT_REQUESTS_PER_SECOND", 80.0, 0.1, MAX_STRIPE_REQUESTS_PER_SECOND
        ),
        stripe_budget_containers=max(1, _int("STRIPE_BUDGET_CONTAINERS", 1)),
        command_start_margin_ms=max(0, _int("COMMAND_START_MARGIN_MS", 15_000)),
        metrics_namespace=_str("POWERTOOLS_METRICS_NAMESPACE", "CampusG/Payments"),
        clerk_issuer=issuer,
        clerk_jwks_url=_str("CLERK_JWKS_URL", f"{issuer}/.well-known/jwks.json" if issuer else ""),
        frontend_origins=_origins("FRONTEND_ORIGINS"),
        session_token_leeway_seconds=max(
            0,
            min(
                MAX_SESSION_TOKEN_LEEWAY_SECONDS,
                _int("SESSION_TOKEN_LEEWAY_SECONDS", DEFAULT_SESSION_TOKEN_LEEWAY_SECONDS),
            ),
        ),
        return_url_origins=parse_origins(_str("RETURN_URL_ORIGINS", ",".join(DEFAULT_RETURN_URL_ORIGINS))),
        user_service_url=_str("USER_SERVICE_URL", "").rstrip("/"),
        user_service_timeout_seconds=max(
            0.1, min(MAX_USER_SERVICE_TIMEOUT_SECONDS, float(_str("USER_SERVICE_TIMEOUT_SECONDS", "5")))
        ),
        payout_velocity_max_per_hour=max(1, _int("PAYOUT_VELOCITY_MAX_PER_HOUR", 40)),
        payout_account_check_ttl_seconds=_bounded(
            "PAYOUT_ACCOUNT_CHECK_TTL_SECONDS", 3600.0, 0.0, MAX_PAYOUT_ACCOUNT_CHECK_TTL_SECONDS
        ),
        retention=retention_settings(),
    )
