"""Stage configuration, read from the ``payment-service`` context in cdk.json.

``defaults`` holds every setting with its documented default; ``stages.<name>`` overrides some
of them. Unknown keys are errors, so a typo in cdk.json fails the synth instead of being ignored.
Nothing here looks anything up in an AWS account: synth works offline, without credentials.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

CONTEXT_KEY = "payment-service"

T = TypeVar("T")


# The AWS services the stack gives an interface endpoint (plus S3's gateway endpoint), as named
# in ``network.endpoints``.
INTERFACE_ENDPOINTS = ("secrets_manager", "sqs", "sts", "lambda", "execute_api")
ENDPOINT_NAMES = (*INTERFACE_ENDPOINTS, "s3")
SKIP = "skip"

# api.callers: who may call which of the private API's routes when api.saga_auth is "iam".
CALLER_GROUPS = ("release_revert", "read")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
_ORIGIN = re.compile(r"https?://[^/\s*]+")
_IN_CONTEXT_FILE = (
    "set it in the deployment's context file (CONTEXT_FILE=…, e.g. infra/examples/prod.context.json)"
)


@dataclass(frozen=True)
class NetworkConfig:
    vpc_id: str | None  # import this VPC (needs the subnet ids below) instead of creating one
    vpc_cidr: str  # the created or imported VPC's range
    # Own VPC only: one NAT gateway, and so one Elastic IP, each (at most one per zone). The
    # default quota is 5 Elastic IPs per region, shared by every stage in the account.
    nat_gateways: int
    private_subnet_ids: list[str]  # imported VPC: subnets with egress (functions reach Stripe, Clerk)
    isolated_subnet_ids: list[str]  # imported VPC: subnets for the database (may equal the private ones)
    create_endpoints: bool  # false: no AWS-API endpoints at all (calls go through the NAT)
    # Imported VPC: the route table of each private/isolated subnet, in the same order (the S3
    # gateway endpoint needs them), and the zone of each private subnet (default: the app's).
    private_subnet_route_table_ids: list[str] = field(default_factory=list)
    isolated_subnet_route_table_ids: list[str] = field(default_factory=list)
    subnet_availability_zones: list[str] = field(default_factory=list)
    # Per endpoint (ENDPOINT_NAMES): "vpce-…" reuses that existing endpoint, "skip" creates none;
    # absent: created. execute_api cannot be skipped: the private API lives behind it.
    endpoints: dict[str, str] = field(default_factory=dict)
    # Private DNS on the interface endpoints the stack creates. None: on in a VPC of its own, off
    # in an imported one (it would capture every caller's *.amazonaws.com names in that VPC).
    endpoint_private_dns: bool | None = None
    # Who may call the private API (its execute-api endpoint, 443) and the Kafka cluster the
    # stack creates (9098): campusG's security groups and/or address ranges. With neither, the
    # endpoint admits vpc_cidr and the cluster admits only the stack's own functions.
    caller_security_group_ids: list[str] = field(default_factory=list)
    caller_cidrs: list[str] = field(default_factory=list)

    @property
    def imported(self) -> bool:
        return bool(self.vpc_id)

    def endpoint(self, name: str) -> str | None:
        """What to do for one endpoint: None (create), SKIP, or the id of one to reuse."""
        if name not in ENDPOINT_NAMES:
            raise ValueError(f"unknown endpoint {name!r}")
        return self.endpoints.get(name)

    def private_dns(self) -> bool:
        return (not self.imported) if self.endpoint_private_dns is None else self.endpoint_private_dns


@dataclass(frozen=True)
class KafkaConfig:
    cluster_arn: str | None  # an existing MSK cluster (IAM auth); none: create MSK Serverless
    bootstrap_servers: str | None  # SASL/IAM brokers of that cluster; derived when the stack creates it
    commands_topic: str
    events_topic: str
    dead_letter_topic: str
    consumer_group_id: str
    # For the topics the stack creates (own cluster only). None: derived from
    # capacity.orders_per_second (infra/capacity/sizing.py). Raising it adds partitions, which
    # remaps keys: drain first (docs/sizing-and-costs.md); lowering it never removes any.
    partitions: int | None
    replication_factor: int
    batch_size: int
    max_batching_window_seconds: int
    starting_position: str  # TRIM_HORIZON or LATEST
    retry_attempts: int
    max_record_age_seconds: int
    # Provisioned pollers (at least 1: the retry controls need provisioned mode). None: derived
    # from the partitions (5 concurrent invocations per poller).
    min_pollers: int | None
    max_pollers: int | None


@dataclass(frozen=True)
class DatabaseConfig:
    name: str
    instance_type: str | None  # None: the cheapest class that carries the rate (capacity model)
    allocated_storage_gb: int
    max_allocated_storage_gb: int
    multi_az: bool
    backup_retention_days: int
    deletion_protection: bool
    retain: bool
    secret_rotation_days: int
    # RDS Proxy: None derives them (infra/capacity/sizing.py): the share of max_connections left
    # after direct sessions and headroom, and the functions' own socket timeout.
    proxy_max_connections_percent: int | None = None
    proxy_borrow_timeout_seconds: int | None = None


@dataclass(frozen=True)
class FunctionsConfig:
    memory_mb: int
    # The authorize function runs a pool of command_workers threads (payments_core.entrypoints.batch): more
    # CPU for them, and a timeout that covers kafka.batch_size x Stripe p99 / command_workers
    # plus command_start_margin_ms (docs/sizing-and-costs.md, "Partitions, workers": 100 x 2 s / 16 + 15 s = 27.5 s < 60 s).
    authorize_memory_mb: int
    authorize_timeout_seconds: int
    # None: the partition count where capacity.reserve_concurrency is on, no reservation where
    # it is off. Lambda keeps 100 of the account's concurrency unreserved, so reserving anything
    # fails in an account whose quota is still low (docs/sizing-and-costs.md: the checklist).
    authorize_reserved_concurrency: int | None
    # The saga API's function. None: what capacity.orders_per_second needs where
    # capacity.reserve_concurrency is on, else no reservation (nothing bounds its database
    # sessions then); if set, at least what the rate needs and at most capacity.api_db_connections.
    api_reserved_concurrency: int | None
    command_workers: int
    stripe_max_in_flight: int  # per container; x partitions / Stripe latency must stay under Stripe's limit
    command_start_margin_ms: int
    log_level: str
    log_retention_days: int
    # The command function's Stripe requests per second, shared by its containers
    # (STRIPE_ACCOUNT_REQUESTS_PER_SECOND). None: the write rate the capacity plan asks Stripe to
    # grant (`make capacity`); set what Stripe actually granted (25 on a test-mode key).
    stripe_account_requests_per_second: float | None = None


@dataclass(frozen=True)
class ApiConfig:
    webhook_max_body_kb: int  # 16, 32, 48 or 64: WAF's body inspection sizes for API Gateway
    # The limits below are derived from capacity.orders_per_second (infra/capacity/) unless
    # set; a value set too low for that rate fails the synth.
    throttle_rate_limit: int | None = None  # the saga API's stage (and the public stage's default)
    throttle_burst_limit: int | None = None
    webhook_throttle_rate_limit: int | None = None  # the webhook's own route, apart from the saga's API
    webhook_throttle_burst_limit: int | None = None
    waf_rate_limit: int | None = None  # per source IP per 5 minutes on the public API, bar /history/
    # Stripe's published webhook addresses (https://docs.stripe.com/ips#webhook-notifications),
    # exempt from waf_rate_limit: Stripe sends every endpoint's webhooks from these few. Keep it
    # in step with Stripe's list (docs/sizing-and-costs.md, "Stripe's webhook addresses").
    stripe_webhook_ips: list[str] = field(default_factory=list)
    # "none": the private API admits any caller through its VPC endpoint (campusG's unsigned
    # calls); "iam": every saga route needs SigV4 too, and the resource policy names, per route,
    # the IAM roles in ``callers`` that may invoke it (the production setting)
    saga_auth: str = "none"
    # With saga_auth "iam": {"release_revert": [role ARNs], "read": [role ARNs]}. release_revert
    # (the complete-order saga) may POST release and revert and read; read may only GET status,
    # details, history and health. Account-specific: set in the deployment's context file.
    callers: dict[str, list[str]] = field(default_factory=dict)
    # The public history route (GET /history/{user_id} on the public API, Clerk-authenticated by
    # its function): created only once clerk_issuer is set.
    clerk_issuer: str | None = None  # e.g. https://clerk.campusg.example
    clerk_jwks_url: str | None = None  # default: <clerk_issuer>/.well-known/jwks.json
    frontend_origins: list[str] = field(default_factory=list)  # CORS: the only origins answered
    # Many students share a campus NAT's one address: the route's limits are sized for that
    # address, not for one person (docs/deploying.md, "The public history route").
    history_throttle_rate_limit: int = 100
    history_throttle_burst_limit: int = 200
    history_waf_rate_limit: int = 6000  # requests per source IP per 5 minutes on /history/

    @property
    def public_history(self) -> bool:
        return bool(self.clerk_issuer)

    def validate(self) -> None:
        self._validate_callers()
        for ip in self.stripe_webhook_ips:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise ValueError(f"api.stripe_webhook_ips: {ip!r} is not an IPv4 address") from None
        if not self.public_history:
            return
        if not str(self.clerk_issuer).startswith("https://"):
            raise ValueError(f"api.clerk_issuer must be an https:// URL, got {self.clerk_issuer!r}")
        if not self.frontend_origins:
            raise ValueError(
                "api.frontend_origins must list the frontend's origins when api.clerk_issuer is set"
            )
        for origin in self.frontend_origins:
            # An origin is scheme://host[:port]: no path, no wildcard (credentials are sent).
            if not origin.startswith("https://") or "*" in origin or origin.count("/") != 2:
                raise ValueError(f"api.frontend_origins: {origin!r} is not an https origin")

    def _validate_callers(self) -> None:
        unknown = set(self.callers) - set(CALLER_GROUPS)
        if unknown:
            raise ValueError(f"api.callers: unknown groups {sorted(unknown)}; use {list(CALLER_GROUPS)}")
        for group, arns in self.callers.items():
            for arn in arns:
                if not _ROLE_ARN.fullmatch(str(arn)):
                    raise ValueError(f"api.callers.{group}: {arn!r} is not an IAM role ARN")
        if self.saga_auth != "iam":
            if any(self.callers.values()):
                raise ValueError(
                    "api.callers is enforced only with api.saga_auth=iam: set it, or remove the callers"
                )
            return
        missing = [g for g in CALLER_GROUPS if not self.callers.get(g)]
        if missing:
            raise ValueError(
                f"api.saga_auth=iam needs api.callers.{' and api.callers.'.join(missing)}: the IAM role "
                "ARNs of campusG's callers (release_revert: the complete-order saga; read: the services "
                "that only read). They are account-specific: put them in the deployment's context file "
                "(CONTEXT_FILE=…, e.g. infra/examples/prod.context.json), or set api.saga_auth=none"
            )

    def jwks_url(self) -> str:
        assert self.clerk_issuer
        return self.clerk_jwks_url or f"{self.clerk_issuer.rstrip('/')}/.well-known/jwks.json"


@dataclass(frozen=True)
class BusinessConfig:
    stripe_api_base: str
    default_currency: str
    platform_fee_bps: int
    reconcile_pending_after_seconds: int
    reconcile_requires_action_after_seconds: int
    reconcile_authorized_after_seconds: int
    reconcile_batch_size: int
    # Payouts to one runner's account per hour above which the command function refuses a
    # release (PAYOUT_VELOCITY_MAX_PER_HOUR); None: the layer's own default.
    payout_velocity_max_per_hour: int | None = None
    # The reconciler's Stripe calls per second (AUDIT_STRIPE_READS_PER_SECOND): its share of the
    # account's Stripe budget, which sets how many final payments a day its audit keeps up with
    # (docs/operations.md). Raise it with the budget Stripe grants the account.
    audit_stripe_reads_per_second: float = 10.0
    # Delays before each further look at a stale payment still where it was (RECONCILE_BACKOFF_SECONDS)
    reconcile_backoff_seconds: list[int] = field(default_factory=lambda: [300, 900, 3600])

    def __post_init__(self) -> None:
        if not 0 < self.audit_stripe_reads_per_second <= 1000:
            raise ValueError(
                "business.audit_stripe_reads_per_second must be above 0 and at most 1000 (Stripe calls "
                f"per second), got {self.audit_stripe_reads_per_second}"
            )
        if not self.reconcile_backoff_seconds or min(self.reconcile_backoff_seconds) < 0:
            raise ValueError(
                "business.reconcile_backoff_seconds must be a non-empty list of whole seconds, got "
                f"{self.reconcile_backoff_seconds}"
            )


@dataclass(frozen=True)
class IntegrationsConfig:
    """campusG's other services and web origins the command function talks to or trusts."""

    # campusG's user service (USER_SERVICE_URL): where the command function checks a runner's
    # payout destination. Required in production.
    user_service_url: str | None = None
    # Origins a 3-D Secure return_url may point at (RETURN_URL_ORIGINS, comma-joined).
    return_url_origins: list[str] = field(default_factory=list)

    def validate(self, production: bool) -> None:
        for origin in self.return_url_origins:
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"integrations.return_url_origins: {origin!r} is not an origin (scheme://host[:port])"
                )
            if production and not origin.startswith("https://"):
                raise ValueError(f"integrations.return_url_origins: {origin!r} must be https in production")
        if self.user_service_url and not str(self.user_service_url).startswith(("https://", "http://")):
            raise ValueError(f"integrations.user_service_url must be a URL, got {self.user_service_url!r}")
        if production and not self.user_service_url:
            raise ValueError(
                "integrations.user_service_url is required in production: campusG's user service, "
                f"which the command function asks for a runner's payout destination; {_IN_CONTEXT_FILE}"
            )
        if production and not self.return_url_origins:
            raise ValueError(
                f"integrations.return_url_origins is required in production: the frontend's origins; "
                f"{_IN_CONTEXT_FILE}"
            )


@dataclass(frozen=True)
class MonitoringConfig:
    alarm_email: str | None
    outbox_backlog_threshold: int
    offset_lag_threshold: int
    api_5xx_threshold: int
    # WebhookSignatureRejected per 5 minutes at which on-call hears of it: a few are Stripe's
    # retries of a stale delivery, many are someone probing the public webhook or a rolled secret.
    webhook_signature_rejected_threshold: int = 10
    # How long the oldest check the reconciler left due (a stale payment's look, an uncertain
    # payment's audit) may have waited before on-call hears of it: a run every 5 minutes that
    # keeps up leaves nothing older than a few minutes.
    check_backlog_age_threshold_seconds: int = 1800


@dataclass(frozen=True)
class CapacityConfig:
    """What a stage is sized for; infra/capacity/ derives its limits and sizes from it."""

    orders_per_second: float  # the target rate of orders, end to end
    # The RDS Proxy sessions the saga API's function may hold (one per concurrent container):
    # the ceiling of functions.api_reserved_concurrency. None: what the rate needs; the database
    # class is chosen to hold it with every other function's sessions.
    api_db_connections: int | None = None
    # Reserve the authorize and API functions' concurrency (derived unless set). Off where the
    # account's Lambda concurrency quota is not known to allow it (docs/sizing-and-costs.md).
    reserve_concurrency: bool = False


@dataclass(frozen=True)
class StageConfig:
    production: bool
    capacity: CapacityConfig
    network: NetworkConfig
    kafka: KafkaConfig
    database: DatabaseConfig
    functions: FunctionsConfig
    api: ApiConfig
    business: BusinessConfig
    monitoring: MonitoringConfig
    integrations: IntegrationsConfig = field(default_factory=IntegrationsConfig)
    name: str = "dev"


@dataclass(frozen=True)
class PipelineConfig:
    connection_arn: str | None  # a CodeStar/CodeConnections ARN; none: no pipeline stack
    repository: str
    branch: str
    stages: list[str] = field(default_factory=lambda: ["staging", "prod"])


@dataclass(frozen=True)
class AppConfig:
    account: str | None  # none: CDK_DEFAULT_ACCOUNT (the CLI's credentials), else environment-agnostic
    region: str
    availability_zones: list[str]
    layer_zip: str
    pipeline: PipelineConfig
    stages: dict[str, StageConfig]

    def stage(self, name: str) -> StageConfig:
        try:
            return self.stages[name]
        except KeyError:
            raise ValueError(f"unknown stage {name!r}; cdk.json defines {sorted(self.stages)}") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(base.get(key), dict) and isinstance(value, dict):
            merged[key] = merge(base[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown settings {sorted(unknown)}")
    # jsii drops null context values, so a missing optional setting means None.
    kwargs: dict[str, Any] = {name: None for name in names - set(data) if type(None) in get_args(hints[name])}
    for name in names & set(data):
        hint = hints[name]
        value = data[name]
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            value = _build(hint, value, f"{where}.{name}")
        elif get_origin(hint) in (Union, types.UnionType) and value is not None:
            inner = next(a for a in get_args(hint) if a is not type(None))
            if inner in (int, str) and not isinstance(value, inner):
                raise ValueError(f"{where}.{name}: expected {inner.__name__}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def load(context: dict[str, Any]) -> AppConfig:
    """Build the typed configuration from the ``payment-service`` context value."""
    defaults = context["defaults"]
    stages = {
        name: _build(StageConfig, {**merge(defaults, overrides or {}), "name": name}, name)
        for name, overrides in context["stages"].items()
    }
    return AppConfig(
        account=str(context["account"]) if context.get("account") else None,
        region=context["region"],
        availability_zones=list(context["availability_zones"]),
        layer_zip=context["layer_zip"],
        pipeline=_build(PipelineConfig, context["pipeline"], "pipeline"),
        stages=stages,
    )
