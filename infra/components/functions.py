"""The Lambda functions: one code asset per ``functions/<name>`` (only its app.py), one shared
layer (payments_core and its dependencies), all in the VPC's private subnets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from aws_cdk.aws_secretsmanager import ISecret
from constructs import Construct

from infra import checkov
from infra.capacity import Sizing
from infra.components.data import APP_ROLE, RETENTION_ROLE, Database
from infra.components.messaging import Messaging
from infra.components.network import Network
from infra.components.secrets import StripeSecrets
from infra.config import StageConfig
from infra.nag import Suppression, suppress
from infra.runtime import ARCHITECTURE, PYTHON_VERSION

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = ROOT / "functions"
RUNTIME = lambda_.Runtime(f"python{PYTHON_VERSION}", lambda_.RuntimeFamily.PYTHON)
ARCH = lambda_.Architecture.ARM_64 if ARCHITECTURE == "arm64" else lambda_.Architecture.X86_64
# Lambda stops a Kafka-triggered invocation at 14 minutes; stay far below so a stuck Stripe call
# fails the batch (and is retried/bisected) long before that.
KAFKA_TIMEOUT_CEILING = Duration.minutes(5)
# Every function's entry point is app.lambda_handler, except these (module.function).
HANDLERS = {"public_history": "app.handler"}


def handler_of(function: str) -> str:
    return HANDLERS.get(function, "app.lambda_handler")


@dataclass(frozen=True)
class _Spec:
    name: str
    description: str
    timeout: Duration


class Functions(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        plan: Sizing,
        layer_zip: Path,
        network: Network,
        messaging: Messaging,
        database: Database,
        stripe: StripeSecrets,
    ):
        super().__init__(scope, id)
        fc = config.functions
        if fc.authorize_timeout_seconds > KAFKA_TIMEOUT_CEILING.to_seconds():
            raise ValueError(
                "functions.authorize_timeout_seconds must stay well under the 14-minute Kafka limit"
            )
        config.integrations.validate(config.production)
        if not layer_zip.is_file():
            raise FileNotFoundError(f"{layer_zip} is missing: run `make build` first")

        self.layer = lambda_.LayerVersion(
            self,
            "PaymentsCore",
            code=lambda_.Code.from_asset(str(layer_zip)),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCH],
            description=f"payments_core + dependencies (python{PYTHON_VERSION}, {ARCHITECTURE})",
        )
        kc = config.kafka
        bc = config.business
        self.environment = {
            "KAFKA_BOOTSTRAP_SERVERS": messaging.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM",
            "PAYMENT_EVENTS_TOPIC": kc.events_topic,
            "PAYMENT_COMMANDS_TOPIC": kc.commands_topic,  # the API queues release/revert commands
            "DEAD_LETTER_TOPIC": kc.dead_letter_topic,
            "DEAD_LETTER_QUEUE_URL": messaging.dead_letter_queue.queue_url,
            # The application role through the proxy, with IAM auth: no database secret to read.
            "DB_IAM_AUTH": "true",
            "DB_USER": APP_ROLE,
            "DB_HOST": database.proxy.endpoint,
            "DB_PORT": str(database.port),
            "DB_NAME": database.config.name,
            "DB_SSL": "true",
            # Each Stripe caller's own restricted key is added to its environment below.
            "STRIPE_API_BASE": bc.stripe_api_base,
            "DEFAULT_CURRENCY": bc.default_currency,
            "PLATFORM_FEE_BPS": str(bc.platform_fee_bps),
            "RECONCILE_PENDING_AFTER_SECONDS": str(bc.reconcile_pending_after_seconds),
            "RECONCILE_REQUIRES_ACTION_AFTER_SECONDS": str(bc.reconcile_requires_action_after_seconds),
            "RECONCILE_AUTHORIZED_AFTER_SECONDS": str(bc.reconcile_authorized_after_seconds),
            "RECONCILE_BATCH_SIZE": str(bc.reconcile_batch_size),
            "POWERTOOLS_SERVICE_NAME": "payment-service",
            "POWERTOOLS_METRICS_NAMESPACE": metric_namespace(config.name),
            "POWERTOOLS_LOG_LEVEL": fc.log_level,
        }
        self._config = config
        self._plan = plan
        self._network = network
        # The dead-letter topic is the mapping's on-failure destination (records kept whole, for
        # `make redrive`); the service's own dead letters (no order) go to the SQS queue.
        self.topics = [kc.commands_topic, kc.events_topic, kc.dead_letter_topic]

        self.authorize_payment = self._function(
            _Spec(
                "authorize_payment",
                "payment_commands consumer: authorize, release, revert",
                Duration.seconds(fc.authorize_timeout_seconds),
            ),
            reserved_concurrency=plan.authorize_reserved,  # the partitions, or set (infra/capacity/)
            memory_mb=fc.authorize_memory_mb,
            environment={
                **self.environment,
                **self._stripe_key(stripe, "authorize_payment"),
                "COMMAND_WORKERS": str(fc.command_workers),
                "STRIPE_MAX_IN_FLIGHT": str(fc.stripe_max_in_flight),
                # The account's Stripe budget is shared evenly by the containers that can run at
                # once: one invocation per partition (payments_core.adapters.stripe_api.stripe_throttle)
                "STRIPE_BUDGET_CONTAINERS": str(plan.partitions.value),
                "STRIPE_ACCOUNT_REQUESTS_PER_SECOND": f"{fc.stripe_account_requests_per_second or plan.stripe_writes.value:g}",
                "COMMAND_START_MARGIN_MS": str(fc.command_start_margin_ms),
                **_command_integrations(config),
            },
        )
        self.payment_api = self._function(
            _Spec(
                "payment_api", "the saga's payment queries, release and revert", Duration.seconds(20)
            ),  # API GW waits 29 s
            # Bounds its RDS Proxy sessions (one per container); sized in infra/capacity/.
            reserved_concurrency=plan.api.api_reserved_concurrency,
        )
        # Stripe's webhook has a function of its own: the signing secret and a restricted key
        # that can only cancel, and no command topic (it publishes events only).
        self.stripe_webhook = self._function(
            _Spec(
                "stripe_webhook", "Stripe webhook: verifies and applies signed events", Duration.seconds(20)
            ),
            environment={
                **self.environment,
                **self._stripe_key(stripe, "stripe_webhook"),
                "STRIPE_WEBHOOK_SECRET_ID": stripe.webhook_secret.secret_arn,
            },
        )
        self.outbox_relay = self._function(
            _Spec(
                "outbox_relay", "publishes the outbox to payment_events", Duration.seconds(50)
            )  # < 1 min rate
        )
        self.reconcile_payments = self._function(
            _Spec(
                "reconcile_payments", "re-reads stale payments from Stripe", Duration.minutes(4)
            ),  # < 5 min rate
            environment={
                **self.environment,
                **self._stripe_key(stripe, "reconcile_payments"),
                "AUDIT_STRIPE_READS_PER_SECOND": f"{bc.audit_stripe_reads_per_second:g}",
                "RECONCILE_BACKOFF_SECONDS": ",".join(str(s) for s in bc.reconcile_backoff_seconds),
            },
        )
        self.service_functions = [
            self.authorize_payment,
            self.payment_api,
            self.stripe_webhook,
            self.outbox_relay,
            self.reconcile_payments,
        ]

        # Schema migrations: its own security group, the only function allowed to reach the instance
        # directly (DDL through the proxy would pin the connection anyway), as the master user.
        migrate_sg = network.client_security_group(self, "MigrateSecurityGroup", "schema migrations")
        self.migrate_database = self._function(
            _Spec("migrate_database", "applies payments_core's SQL migrations", Duration.minutes(5)),
            security_group=migrate_sg,
            environment={
                **{k: v for k, v in self._only("DB_", "POWERTOOLS_").items() if k != "DB_USER"},
                "DB_HOST": database.instance.db_instance_endpoint_address,
                "DB_IAM_AUTH": "false",
                "DB_SECRET_ID": database.secret.secret_arn,
                "DB_APP_SECRET_ID": database.app_secret.secret_arn,
                "DB_RETENTION_SECRET_ID": database.retention_secret.secret_arn,
            },
        )
        database.instance.connections.allow_default_port_from(migrate_sg, "schema migrations")
        _read_secret(self.migrate_database, database.secret)
        _read_secret(self.migrate_database, database.app_secret)
        _read_secret(self.migrate_database, database.retention_secret)
        database.proxy.connections.allow_from(
            network.function_security_group, ec2.Port.tcp(database.port), "functions"
        )
        self.custom_resource_functions = [self.migrate_database]

        # Topics on a cluster of our own (MSK Serverless creates none by itself).
        self.create_topics: lambda_.Function | None = None
        if messaging.creates_topics:
            self.create_topics = self._function(
                _Spec("create_topics", "creates the service's Kafka topics", Duration.minutes(2)),
                environment=self._only("KAFKA_", "PAYMENT_", "DEAD_LETTER_TOPIC", "POWERTOOLS_"),
            )
            messaging.grant_create_topics(self.create_topics, *self.topics)
            messaging.grant_grow_topic(self.create_topics, kc.commands_topic, kc.consumer_group_id)
            self.custom_resource_functions.append(self.create_topics)

        # What each function's code calls (tests/infra/test_template_checks.py derives the same
        # from payments_core and fails on any difference): the Stripe key where a module calls
        # services.stripe, the dead-letter queue where dead_letters is imported (in AWS it is the
        # SQS queue, never the topic), events everywhere, the database as the application role.
        kafka_topics = {fn: [kc.events_topic] for fn in self.service_functions}
        # The API queues release/revert commands for the authorize function (issue 10) and,
        # since the webhook has its own function, publishes no event itself.
        kafka_topics[self.payment_api] = [kc.commands_topic]
        for fn in self.service_functions:
            database.proxy.grant_connect(fn, APP_ROLE)
            messaging.grant_produce(fn, *kafka_topics[fn])
        # Each Stripe caller reads its own restricted key, and only the webhook function the
        # signing secret; the secrets' resource policies name exactly these roles (seal).
        # The webhook function calls Stripe too: a webhook reporting a hold on a payment that
        # is already final cancels it (reconciliation.cancel_stray_hold).
        for name, fn in (
            ("authorize_payment", self.authorize_payment),
            ("stripe_webhook", self.stripe_webhook),
            ("reconcile_payments", self.reconcile_payments),
        ):
            stripe.grant_read(stripe.restricted_keys[name], fn)
        stripe.grant_read(stripe.webhook_secret, self.stripe_webhook)
        stripe.seal()
        # Only what payments_core.adapters.kafka.dead_letters calls (sqs:SendMessage), not CDK's send group.
        self.authorize_payment.add_to_role_policy(
            iam.PolicyStatement(
                actions=["sqs:SendMessage"], resources=[messaging.dead_letter_queue.queue_arn]
            )
        )

        self._add_kafka_trigger(messaging)
        # Redrive (`make redrive STAGE=…` invokes it: MSK is reachable only from the VPC): reads the
        # dead-letter topic without a consumer group and re-queues commands to payment_commands.
        self.redrive_commands = self._function(
            _Spec(
                "redrive_commands",
                "re-queues dead-lettered commands to payment_commands",
                Duration.minutes(1),
            ),
            environment=self._only("KAFKA_", "PAYMENT_COMMANDS_TOPIC", "DEAD_LETTER_TOPIC", "POWERTOOLS_"),
        )
        messaging.grant_read(self.redrive_commands, kc.dead_letter_topic)
        messaging.grant_produce(self.redrive_commands, kc.commands_topic)
        self.kafka_mappings = [
            child
            for child in self.authorize_payment.node.children
            if isinstance(child, lambda_.EventSourceMapping)
        ]
        # Everything that reads or writes the application's tables (not the migration itself).
        self.database_functions: list[lambda_.Function] = list(self.service_functions)
        self.public_history = self._add_public_history(database) if config.api.public_history else None
        self.retain_data = self._add_retention(database)
        for fn in [*self.service_functions, *self.custom_resource_functions, self.redrive_commands]:
            self._suppress_managed_and_wildcards(fn)

    def _add_public_history(self, database: Database) -> lambda_.Function:
        """The frontend's history route: a student's own history, checked against their Clerk
        session token by the function. Reads the tables; no Stripe secret, no Kafka. It fetches
        Clerk's signing keys (JWKS) over the internet, through the NAT gateway."""
        api = self._config.api
        fn = self._function(
            _Spec("public_history", "public history for the frontend (Clerk sign-in)", Duration.seconds(10)),
            environment={
                **self._only("DB_", "POWERTOOLS_"),
                "CLERK_ISSUER": str(api.clerk_issuer),
                "CLERK_JWKS_URL": api.jwks_url(),
                "FRONTEND_ORIGINS": ",".join(api.frontend_origins),
            },
        )
        # The application role: the only one the proxy serves. The code only reads.
        database.proxy.grant_connect(fn, APP_ROLE)
        self.database_functions.append(fn)
        self._suppress_managed_and_wildcards(fn)
        return fn

    def _add_retention(self, database: Database) -> lambda_.Function:
        """The daily retention job (payments_core.usecases.retention): deletes expired rows of the outbox,
        webhook ids, leases, money calls and command outcomes, archives old payments. The
        database only, as its own role (payments_retention: exactly the privileges it uses,
        payments_core.adapters.postgres.migrate.RETENTION_GRANTS; the application role deletes nothing); no
        Stripe key, no Kafka, no secret to read (IAM auth through the proxy, which holds the
        role's secret)."""
        fn = self._function(
            # Batches of 1,000 until done: the first run on a grown table may need several days'
            # runs; each stops 10 s before its timeout and the next goes on.
            _Spec("retain_data", "deletes rows past their retention", Duration.minutes(10)),
            environment={**self._only("DB_", "POWERTOOLS_"), "DB_USER": RETENTION_ROLE},
        )
        database.proxy.grant_connect(fn, RETENTION_ROLE)
        self.database_functions.append(fn)
        self._suppress_managed_and_wildcards(fn)
        return fn

    def _stripe_key(self, stripe: StripeSecrets, function: str) -> dict[str, str]:
        """The function's own restricted key (payments_core.config: STRIPE_SECRET_KEY_SECRET_ID)."""
        return {"STRIPE_SECRET_KEY_SECRET_ID": stripe.restricted_keys[function].secret_arn}

    def _only(self, *prefixes: str) -> dict[str, str]:
        """The shared environment's variables a deploy-time function uses, and no others."""
        return {k: v for k, v in self.environment.items() if k.startswith(prefixes)}

    def _function(
        self,
        spec: _Spec,
        *,
        reserved_concurrency: int | None = None,
        memory_mb: int | None = None,
        security_group: ec2.ISecurityGroup | None = None,
        environment: dict[str, str] | None = None,
    ) -> lambda_.Function:
        fc = self._config.functions
        source = FUNCTIONS_DIR / spec.name
        ident = "".join(part.title() for part in spec.name.split("_"))
        log_group = logs.LogGroup(self, f"{ident}Logs", retention=_retention(fc.log_retention_days))
        checkov.skip(log_group, checkov.LOG_GROUP_KEY)
        fn = lambda_.Function(
            self,
            ident,
            description=spec.description,
            runtime=RUNTIME,
            architecture=ARCH,
            handler=handler_of(spec.name),
            # Only app.py: everything else the function needs is in the shared layer.
            code=lambda_.Code.from_asset(str(source), exclude=["*", "!app.py"]),
            layers=[self.layer],
            memory_size=memory_mb or fc.memory_mb,
            timeout=spec.timeout,
            reserved_concurrent_executions=reserved_concurrency,
            vpc=self._network.vpc,
            vpc_subnets=self._network.function_subnets,
            security_groups=[security_group or self._network.function_security_group],
            environment=environment if environment is not None else self.environment,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
        )
        reserved = () if reserved_concurrency else (checkov.FUNCTION_CONCURRENCY,)
        checkov.skip(fn, *checkov.SERVICE_FUNCTION, *reserved)
        return fn

    def _add_kafka_trigger(self, messaging: Messaging) -> None:
        kc = self._config.kafka
        # Provisioned mode (min_pollers >= 1, checked in infra/capacity/sizing.py): Lambda accepts
        # retry limits, bisecting and partial batch responses for Kafka only there.
        self.trigger = sources.ManagedKafkaEventSource(
            cluster_arn=messaging.cluster_arn,
            topic=kc.commands_topic,
            consumer_group_id=kc.consumer_group_id,
            starting_position=lambda_.StartingPosition[kc.starting_position],
            batch_size=kc.batch_size,
            max_batching_window=Duration.seconds(kc.max_batching_window_seconds),
            report_batch_item_failures=True,
            bisect_batch_on_error=True,
            retry_attempts=kc.retry_attempts,
            max_record_age=Duration.seconds(kc.max_record_age_seconds),
            # A Kafka topic keeps the failed record itself (an SQS destination gets only its topic,
            # partition and offsets): what `make redrive` re-queues. Same cluster, created with the
            # others (an imported cluster's operator creates it).
            on_failure=sources.KafkaDlq(kc.dead_letter_topic),
            provisioned_poller_config=sources.ProvisionedPollerConfig(
                minimum_pollers=self._plan.min_pollers.value, maximum_pollers=self._plan.max_pollers.value
            ),
            # The mapping's own metrics (offset lag, event and error counts) for the alarms.
            metrics_config=lambda_.MetricsConfig(
                metrics=[
                    lambda_.MetricType.EVENT_COUNT,
                    lambda_.MetricType.ERROR_COUNT,
                    lambda_.MetricType.KAFKA_METRICS,
                ]
            ),
        )
        self.authorize_payment.add_event_source(self.trigger)
        # The mapping writes the records it gives up on with the function's role.
        self.authorize_payment.add_to_role_policy(
            iam.PolicyStatement(
                actions=["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"],
                resources=[messaging.topic_arn(kc.dead_letter_topic)],
            )
        )
        messaging.grant_consume(self.authorize_payment, kc.commands_topic, kc.consumer_group_id)

    def _suppress_managed_and_wildcards(self, fn: lambda_.Function) -> None:
        assert fn.role is not None
        suppress(
            fn.role,
            [
                Suppression(
                    id="AwsSolutions-IAM4",
                    reason="AWS-maintained Lambda execution policies: basic logging, VPC ENI management "
                    "and, for the MSK trigger, AWSLambdaMSKExecutionRole (describe cluster, ENIs).",
                    applies_to=[
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaMSKExecutionRole",
                    ],
                ),
                Suppression(
                    id="AwsSolutions-IAM5",
                    reason="X-Ray's PutTraceSegments/PutTelemetryRecords accept no resource ARN, so CDK "
                    "grants them on '*'; every other statement names its resource.",
                    applies_to=["Resource::*"],
                ),
            ],
        )
        suppress(
            fn,
            [
                Suppression(
                    id="AwsSolutions-L1",
                    reason=f"Pinned to python{PYTHON_VERSION}: the layer's wheels are built for exactly "
                    "this runtime (infra/runtime.py); upgrading is a deliberate change of both.",
                )
            ],
        )


def _read_secret(fn: lambda_.Function, secret: ISecret) -> None:
    """What payments_core.adapters.secrets calls (GetSecretValue), not CDK's grant_read (+DescribeSecret)."""
    fn.add_to_role_policy(
        iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[secret.secret_arn])
    )


def _command_integrations(config: StageConfig) -> dict[str, str]:
    """What the command function needs of campusG's other services and the business limits."""
    integrations = config.integrations
    env = {}
    # None set: the layer's default (the local frontend, http and https://localhost:5173).
    if integrations.return_url_origins:
        env["RETURN_URL_ORIGINS"] = ",".join(integrations.return_url_origins)
    if integrations.user_service_url:
        env["USER_SERVICE_URL"] = integrations.user_service_url
    if config.business.payout_velocity_max_per_hour is not None:
        env["PAYOUT_VELOCITY_MAX_PER_HOUR"] = str(config.business.payout_velocity_max_per_hour)
    return env


def metric_namespace(stage: str) -> str:
    """Custom metrics per stage: dev traffic never moves prod's alarms."""
    return f"CampusG/Payments/{stage}"


_RETENTION = {
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
}


def _retention(days: int) -> logs.RetentionDays:
    try:
        return _RETENTION[days]
    except KeyError:
        raise ValueError(f"functions.log_retention_days must be one of {sorted(_RETENTION)}") from None
