"""PaymentServiceStack: the whole service in one account and region, composed of constructs
that mirror the runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CfnElement, CfnOutput, CustomResource, Stack, Tags
from aws_cdk import aws_secretsmanager as sm
from aws_cdk import custom_resources as cr
from constructs import Construct

from infra import capacity, checkov
from infra.components.api import PaymentApi
from infra.components.data import Database
from infra.components.functions import Functions, metric_namespace
from infra.components.messaging import Messaging
from infra.components.monitoring import Monitoring
from infra.components.network import Network
from infra.components.schedules import Schedules
from infra.components.secrets import StripeSecrets
from infra.config import StageConfig
from infra.nag import Suppression, suppress


class PaymentServiceStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: StageConfig,
        availability_zones: list[str],
        layer_zip: Path,
        **kwargs: Any,
    ):
        super().__init__(scope, id, **kwargs)
        # CloudFormation's DBProxyTargetGroup takes no tags, though CDK would render them.
        untaggable = ["AWS::RDS::DBProxyTargetGroup"]
        Tags.of(self).add("service", "payment-service", exclude_resource_types=untaggable)
        Tags.of(self).add("stage", config.name, exclude_resource_types=untaggable)

        # Before anything: a stage whose settings cannot carry its rate fails here (infra/capacity/).
        self.plan = plan = capacity.plan(config)
        network = Network(self, "Network", config=config.network, availability_zones=availability_zones)
        messaging = Messaging(self, "Messaging", config=config.kafka, network=network)
        database = Database(
            self,
            "Data",
            config=config.database,
            network=network,
            production=config.production,
            instance_type=plan.database.value.name,
            proxy_max_connections_percent=plan.proxy_max_connections_percent.value,
            proxy_borrow_timeout_seconds=plan.proxy_borrow_timeout_s.value,
        )
        stripe = StripeSecrets(self, "Stripe", retain=config.production)
        functions = Functions(
            self,
            "Functions",
            config=config,
            plan=plan,
            layer_zip=layer_zip,
            network=network,
            messaging=messaging,
            database=database,
            stripe=stripe,
        )
        api = PaymentApi(
            self,
            "Api",
            config=config.api,
            limits=plan.api,
            handler=functions.payment_api,
            webhook_handler=functions.stripe_webhook,
            stage=config.name,
            vpc_endpoint=network.execute_api_endpoint,
            history_handler=functions.public_history,
        )
        schedules = Schedules(
            self,
            "Schedules",
            outbox_relay=functions.outbox_relay,
            reconciler=functions.reconcile_payments,
            retention=functions.retain_data,
        )
        monitoring = Monitoring(
            self,
            "Monitoring",
            config=config.monitoring,
            functions={fn.node.id: fn for fn in functions.database_functions},
            kafka_consumer=functions.authorize_payment,
            kafka_mapping_id=functions.trigger.event_source_mapping_id,
            dead_letter_queue=messaging.dead_letter_queue,
            api=api.api,
            saga_api=api.private_api,
            namespace=metric_namespace(config.name),
            instance=database.instance,
            proxy=database.proxy,
            secret_arns=[database.secret.secret_arn, database.app_secret.secret_arn],
        )
        self.network, self.messaging, self.database, self.stripe = network, messaging, database, stripe
        self.functions, self.api, self.schedules, self.monitoring = functions, api, schedules, monitoring

        self._add_migrations(functions)
        self._add_topics(functions, config)
        self._add_outputs()

    def _add_migrations(self, functions: Functions) -> None:
        provider = cr.Provider(self, "MigrationsProvider", on_event_handler=functions.migrate_database)
        # The layer carries the SQL files, so a new layer version (new code or new migrations) is
        # what makes CloudFormation send an Update, i.e. migrate, on the deploy that ships it.
        # Migrations are idempotent, so forcing a run (-c migrate_nonce=…) is always safe.
        self.migrations = CustomResource(
            self,
            "SchemaMigrations",
            service_token=provider.service_token,
            properties={
                "Layer": functions.layer.layer_version_arn,
                "Nonce": str(self.node.try_get_context("migrate_nonce") or ""),
            },
            resource_type="Custom::PaymentsSchemaMigrations",
        )
        self.migrations.node.add_dependency(self.database.instance.node.default_child)  # not its secret
        # Updates wait for the migration: CloudFormation updates a function (new layer, new
        # code) or the Kafka mapping only once the schema it needs is in place. Only the
        # functions themselves and the mapping: their roles and log groups need not wait.
        # A migration must still work with the code deployed before it (docs/migrations.md):
        # the old code runs against the new schema until these updates are done.
        for fn in functions.database_functions:
            cfn_function = fn.node.default_child
            assert cfn_function is not None
            cfn_function.node.add_dependency(self.migrations)
        for mapping in functions.kafka_mappings:
            mapping.node.add_dependency(self.migrations)
        # Rotations start once the schema migration has run: it creates the application and
        # retention roles (whose first rotation would otherwise fail), and it reads the master
        # secret, which a rotation running at the same moment could change under it.
        for secret in (
            self.database.secret,
            self.database.app_secret_attached,
            self.database.retention_secret_attached,
        ):
            for child in secret.node.children:
                if isinstance(child, sm.RotationSchedule):
                    child.node.add_dependency(self.migrations)
        self._suppress_provider(provider, functions.migrate_database)

    def _add_topics(self, functions: Functions, config: StageConfig) -> None:
        if functions.create_topics is None:
            return
        provider = cr.Provider(self, "TopicsProvider", on_event_handler=functions.create_topics)
        kc = config.kafka
        self.topics = CustomResource(
            self,
            "KafkaTopics",
            service_token=provider.service_token,
            properties={
                "Topics": functions.topics,
                # Grows with the profile (after a drain: docs/sizing-and-costs.md); a lower value never
                # removes partitions (payments_core.adapters.kafka.topics leaves an existing topic's count alone).
                "Partitions": str(self.plan.partitions.value),
                "ReplicationFactor": str(kc.replication_factor),
                # A larger Partitions grows the commands topic only while its mapping is paused
                # and drained (payments_core.adapters.kafka.partitions); otherwise the deploy fails with the
                # procedure (make partitions). The events topic is never grown here.
                "GrowTopic": kc.commands_topic,
                "ConsumerGroup": kc.consumer_group_id,
            },
            resource_type="Custom::PaymentsKafkaTopics",
        )
        # The mapping starts polling only once its topic exists.
        for mapping in functions.kafka_mappings:
            mapping.node.add_dependency(self.topics)
        self._suppress_provider(provider, functions.create_topics)

    def _suppress_provider(self, provider: cr.Provider, target: Any) -> None:
        checkov.skip(provider.node.find_child("framework-onEvent"), *checkov.PROVIDER_FUNCTION)
        target_fn = target.node.default_child
        assert isinstance(target_fn, CfnElement)
        suppress(
            provider,
            [
                Suppression(
                    id="AwsSolutions-IAM4",
                    reason="The CDK Provider framework function logs with AWSLambdaBasicExecutionRole; it "
                    "only relays CloudFormation events to its handler function during deploys.",
                    applies_to=[
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
                    ],
                ),
                Suppression(
                    id="AwsSolutions-IAM5",
                    reason="The Provider framework may invoke any version of its handler function "
                    "(<arn>:*), a wildcard on that one function only.",
                    applies_to=[f"Resource::<{self.get_logical_id(target_fn)}.Arn>:*"],
                ),
            ],
        )

    def _add_outputs(self) -> None:
        outputs: dict[str, tuple[str, str]] = {
            "WebhookUrl": (self.api.webhook_url, "paste into Stripe dashboard > Developers > Webhooks"),
            "PublicApiUrl": (
                self.api.api.url,
                "base URL of the public API (the Stripe webhook, the history route)",
            ),
            "SagaApiUrl": (
                self.api.saga_url,
                "campusG's PAYMENT_SERVICE_URL: the private API, from inside the VPC (private DNS)",
            ),
            "SagaApiEndpointUrl": (
                self.api.saga_endpoint_url,
                "the private API through the VPC endpoint's own name: for callers in a peered VPC",
            ),
            "DeadLetterQueueUrl": (self.messaging.dead_letter_queue.queue_url, "failed commands and events"),
            "DeadLetterQueueArn": (self.messaging.dead_letter_queue.queue_arn, "failed commands and events"),
            **{
                f"Stripe{''.join(p.title() for p in function.split('_'))}KeySecretName": (
                    secret.secret_name,
                    f"{function}'s Stripe restricted key: aws secretsmanager put-secret-value "
                    "--secret-id <this> --secret-string rk_…",
                )
                for function, secret in self.stripe.restricted_keys.items()
            },
            "StripeWebhookSecretName": (
                self.stripe.webhook_secret.secret_name,
                "aws secretsmanager put-secret-value --secret-id <this> --secret-string whsec_…",
            ),
            "DatabaseSecretArn": (self.database.secret.secret_arn, "generated database credentials"),
            "FunctionSecurityGroupId": (
                self.network.function_security_group.security_group_id,
                "admit this group on port 9098 in an imported MSK cluster's security group",
            ),
            "AlarmTopicArn": (self.monitoring.topic.topic_arn, "subscribe on-call here"),
            "RedriveFunctionName": (
                self.functions.redrive_commands.function_name,
                "lists and re-queues dead-lettered commands: make redrive STAGE=<stage>",
            ),
        }
        outputs["CommandsMappingId"] = (
            self.functions.trigger.event_source_mapping_id,
            "the payment_commands event source mapping's UUID: make partitions STAGE=<stage> pauses it",
        )
        if self.functions.create_topics:
            outputs["TopicsFunctionName"] = (
                self.functions.create_topics.function_name,
                "creates and grows the Kafka topics in the VPC: make partitions STAGE=<stage>",
            )
        if self.functions.public_history:
            outputs["PublicHistoryUrl"] = (
                self.api.history_url,
                "the frontend's history route: GET <this>/{user_id} with the Clerk session token",
            )
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)
