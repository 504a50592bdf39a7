"""Settings, read once from the environment: the one place the service's variables are named.

Nothing else reads os.environ for a setting, so what a function needs is visible here (and the
stack's environment is checked against it). Each value is read and checked by ``env_values``;
the retention periods, each with its floor and reason, are ``retention_periods``. Secrets are
never environment values: the environment names the Secrets Manager secret, and ``secrets``
fetches (and caches) its value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from payments_core.domain.return_urls import parse_origins
from payments_core.env_values import (
    env_bool,
    env_bounded,
    env_int,
    env_ints,
    env_origins,
    env_reads_per_second,
    env_str,
)
from payments_core.retention_periods import RetentionSettings, retention_settings

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
    # budget the other functions share. It bounds the reconciler's throughput
    # (docs/operations.md: the final payments a day it keeps up with).
    audit_stripe_reads_per_second: float = 10.0
    # Checks a reconciler run makes at once, each on its own database connection: with Stripe
    # ~300 ms away one at a time is ~2.5 checks/s, below the pace above (docs/operations.md).
    reconcile_workers: int = 4
    # A money call whose outcome we never learned (a timeout, a 5xx, a holder that died) may
    # still land at Stripe: its payment is not called settled until this long after the call.
    audit_in_doubt_seconds: float = 3600.0
    # How long a webhook waits for an order's lease before leaving its effect to the audit.
    webhook_lease_wait_seconds: float = 0.5
    # The command pool (payments_core.entrypoints.worker_pool): worker threads per container, each with its own
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
    # TransferFailed is alarmed (docs/contract.md, "Who gets paid is checked").
    payout_account_check_ttl_seconds: float = 3600.0
    # How long the retention job keeps each kind of row (payments_core.usecases.retention)
    retention: RetentionSettings = field(default_factory=RetentionSettings)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    issuer = env_str("CLERK_ISSUER", "").rstrip("/")
    return Settings(
        kafka_bootstrap_servers=env_str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        kafka_security_protocol=env_str("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        kafka_sasl_mechanism=env_str("KAFKA_SASL_MECHANISM", "AWS_MSK_IAM"),
        payment_events_topic=env_str("PAYMENT_EVENTS_TOPIC", "payment_events"),
        payment_commands_topic=env_str("PAYMENT_COMMANDS_TOPIC", "payment_commands"),
        dead_letter_topic=env_str("DEAD_LETTER_TOPIC", "payment_commands.dlq"),
        dead_letter_queue_url=env_str("DEAD_LETTER_QUEUE_URL", ""),
        kafka_send_timeout_seconds=float(env_str("KAFKA_SEND_TIMEOUT_SECONDS", "5")),
        db_secret_id=env_str("DB_SECRET_ID", "campusg/payments/db-credentials"),
        db_host=env_str("DB_HOST", ""),
        db_port=env_int("DB_PORT", 0),
        db_name=env_str("DB_NAME", ""),
        db_ssl=env_bool("DB_SSL", True, also_true=frozenset({"require"})),
        db_timeout_seconds=env_int("DB_TIMEOUT_SECONDS", 5),
        db_ca_bundle=env_str("DB_CA_BUNDLE", ""),
        db_iam_auth=env_bool("DB_IAM_AUTH", False),
        db_user=env_str("DB_USER", ""),
        db_app_secret_id=env_str("DB_APP_SECRET_ID", ""),
        db_retention_secret_id=env_str("DB_RETENTION_SECRET_ID", ""),
        stripe_secret_key_secret_id=env_str(
            "STRIPE_SECRET_KEY_SECRET_ID", "campusg/payments/stripe-secret-key"
        ),
        stripe_webhook_secret_id=env_str(
            "STRIPE_WEBHOOK_SECRET_ID", "campusg/payments/stripe-webhook-secret"
        ),
        stripe_api_base=env_str("STRIPE_API_BASE", "https://api.stripe.com"),
        stripe_timeout_seconds=env_int("STRIPE_TIMEOUT_SECONDS", 10),
        stripe_max_network_retries=env_int("STRIPE_MAX_NETWORK_RETRIES", 1),
        webhook_tolerance_seconds=env_int("WEBHOOK_TOLERANCE_SECONDS", 300),
        default_currency=env_str("DEFAULT_CURRENCY", "sgd").lower(),
        platform_fee_bps=env_int("PLATFORM_FEE_BPS", 0),
        minimum_amount_cents=env_int("MINIMUM_AMOUNT_CENTS", 50),
        reconcile_pending_after_seconds=env_int("RECONCILE_PENDING_AFTER_SECONDS", 60),
        reconcile_requires_action_after_seconds=env_int("RECONCILE_REQUIRES_ACTION_AFTER_SECONDS", 3600),
        reconcile_authorized_after_seconds=env_int(
            "RECONCILE_AUTHORIZED_AFTER_SECONDS", 6 * 86400 + 12 * 3600
        ),
        reconcile_batch_size=env_int("RECONCILE_BATCH_SIZE", 50),
        audit_backoff_seconds=env_ints("AUDIT_BACKOFF_SECONDS", DEFAULT_AUDIT_BACKOFF_SECONDS),
        reconcile_backoff_seconds=env_ints("RECONCILE_BACKOFF_SECONDS", DEFAULT_RECONCILE_BACKOFF_SECONDS),
        audit_stripe_reads_per_second=env_reads_per_second("AUDIT_STRIPE_READS_PER_SECOND", 10.0),
        reconcile_workers=max(1, min(RECONCILE_WORKERS_CEILING, env_int("RECONCILE_WORKERS", 4))),
        audit_in_doubt_seconds=float(env_str("AUDIT_IN_DOUBT_SECONDS", "3600")),
        webhook_lease_wait_seconds=float(env_str("WEBHOOK_LEASE_WAIT_SECONDS", "0.5")),
        aws_region=env_str("AWS_REGION", env_str("AWS_DEFAULT_REGION", "ap-southeast-1")),
        command_workers=max(1, min(COMMAND_WORKERS_CEILING, env_int("COMMAND_WORKERS", 16))),
        stripe_max_in_flight=max(1, env_int("STRIPE_MAX_IN_FLIGHT", 16)),
        stripe_account_requests_per_second=env_bounded(
            "STRIPE_ACCOUNT_REQUESTS_PER_SECOND", 80.0, 0.1, MAX_STRIPE_REQUESTS_PER_SECOND
        ),
        stripe_budget_containers=max(1, env_int("STRIPE_BUDGET_CONTAINERS", 1)),
        command_start_margin_ms=max(0, env_int("COMMAND_START_MARGIN_MS", 15_000)),
        metrics_namespace=env_str("POWERTOOLS_METRICS_NAMESPACE", "CampusG/Payments"),
        clerk_issuer=issuer,
        clerk_jwks_url=env_str("CLERK_JWKS_URL", f"{issuer}/.well-known/jwks.json" if issuer else ""),
        frontend_origins=env_origins("FRONTEND_ORIGINS"),
        session_token_leeway_seconds=max(
            0,
            min(
                MAX_SESSION_TOKEN_LEEWAY_SECONDS,
                env_int("SESSION_TOKEN_LEEWAY_SECONDS", DEFAULT_SESSION_TOKEN_LEEWAY_SECONDS),
            ),
        ),
        return_url_origins=parse_origins(env_str("RETURN_URL_ORIGINS", ",".join(DEFAULT_RETURN_URL_ORIGINS))),
        user_service_url=env_str("USER_SERVICE_URL", "").rstrip("/"),
        user_service_timeout_seconds=max(
            0.1, min(MAX_USER_SERVICE_TIMEOUT_SECONDS, float(env_str("USER_SERVICE_TIMEOUT_SECONDS", "5")))
        ),
        payout_velocity_max_per_hour=max(1, env_int("PAYOUT_VELOCITY_MAX_PER_HOUR", 40)),
        payout_account_check_ttl_seconds=env_bounded(
            "PAYOUT_ACCOUNT_CHECK_TTL_SECONDS", 3600.0, 0.0, MAX_PAYOUT_ACCOUNT_CHECK_TTL_SECONDS
        ),
        retention=retention_settings(),
    )
