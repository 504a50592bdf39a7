"""Alarms, the SNS topic they notify, and a dashboard.

Custom metrics come from Powertools in the functions: namespace CampusG/Payments/<stage>,
dimension service=payment-service. Per stage, as are the alarm names, so dev traffic never
trips prod's alarms. The alarm_email setting subscribes on-call to the topic.
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import MonitoringConfig

SERVICE = "payment-service"


def service_metric(namespace: str, name: str, statistic: str) -> cw.Metric:
    return cw.Metric(
        namespace=namespace,
        metric_name=name,
        dimensions_map={"service": SERVICE},
        statistic=statistic,
        period=Duration.minutes(5),
    )


class Monitoring(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: MonitoringConfig,
        functions: dict[str, lambda_.Function],
        kafka_consumer: lambda_.Function,
        dead_letter_queue: sqs.IQueue,
        api: apigw.RestApi,
        saga_api: apigw.RestApi,
        namespace: str,
        instance: rds.DatabaseInstance,
        proxy: rds.DatabaseProxy,
        secret_arns: list[str],
        kafka_mapping_id: str | None = None,
    ):
        super().__init__(scope, id)
        stack_name = Stack.of(self).stack_name

        def service_metric_(name: str, statistic: str) -> cw.Metric:
            return service_metric(namespace, name, statistic)

        # CloudWatch can publish to an encrypted topic only with a customer key that allows it.
        key = kms.Key(
            self, "AlarmTopicKey", enable_key_rotation=True, description="payment service alarm topic"
        )
        key.grant_encrypt_decrypt(iam.ServicePrincipal("cloudwatch.amazonaws.com"))
        key.grant_encrypt_decrypt(iam.ServicePrincipal("events.amazonaws.com"))
        self.topic = sns.Topic(self, "AlarmTopic", master_key=key, enforce_ssl=True)
        if config.alarm_email:
            self.topic.add_subscription(subs.EmailSubscription(config.alarm_email))
        action = cw_actions.SnsAction(self.topic)
        self.alarms: list[cw.Alarm] = []

        def alarm(
            ident: str,
            metric: cw.IMetric,
            threshold: float,
            description: str,
            periods: int = 1,
            below: bool = False,
        ) -> cw.Alarm:
            created = cw.Alarm(
                self,
                ident,
                alarm_name=f"{stack_name}-{ident}",
                metric=metric,
                threshold=threshold,
                evaluation_periods=periods,
                comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD
                if below
                else cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                alarm_description=description,
            )
            created.add_alarm_action(action)
            created.add_ok_action(action)
            self.alarms.append(created)
            return created

        for name, fn in functions.items():
            ident = "".join(p.title() for p in name.split("_"))
            alarm(f"{ident}Errors", fn.metric_errors(period=Duration.minutes(5)), 0, f"{name} raised errors")
            alarm(
                f"{ident}Throttles",
                fn.metric_throttles(period=Duration.minutes(5)),
                0,
                f"{name} was throttled",
            )
        alarm(
            "DeadLetters",
            dead_letter_queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(5)),
            0,
            "messages are waiting in the dead-letter queue",
        )
        alarm(
            "DeadLettered",
            service_metric_("DeadLettered", "Sum"),
            0,
            "the service dead-lettered a command or event",
        )
        if kafka_mapping_id is not None:
            # The mapping's on-failure destination is a Kafka topic (the record kept for redrive),
            # which the DeadLetters queue alarm cannot see: the mapping's own count of records it
            # delivered there (an EventCount metric of the mapping's MetricsConfig).
            alarm(
                "MappingDeadLettered",
                cw.Metric(
                    namespace="AWS/Lambda",
                    metric_name="OnFailureDestinationDeliveredEventCount",
                    dimensions_map={"EventSourceMappingUUID": kafka_mapping_id},
                    statistic="Sum",
                    period=Duration.minutes(5),
                ),
                0,
                "the payment_commands mapping gave up on records: they wait on the dead-letter topic "
                "(make redrive STAGE=<stage>)",
            )
        alarm(
            "ConsumerOffsetLag",
            cw.Metric(
                namespace="AWS/Lambda",
                metric_name="OffsetLag",
                dimensions_map={"FunctionName": kafka_consumer.function_name},
                statistic="Maximum",
                period=Duration.minutes(5),
            ),
            config.offset_lag_threshold,
            "payment_commands consumer is falling behind",
            periods=3,
        )
        alarm(
            "Api5xx",
            api.metric_server_error(period=Duration.minutes(5), statistic="Sum"),
            config.api_5xx_threshold,
            "the API answers 5xx",
        )
        alarm(
            "OutboxBacklog",
            service_metric_("OutboxBacklog", "Maximum"),
            config.outbox_backlog_threshold,
            "events are piling up in the outbox (Kafka unreachable?)",
            periods=3,
        )
        alarm(
            "AuthorizationsNearExpiry",
            service_metric_("AuthorizationsNearExpiry", "Maximum"),
            0,
            "card holds are about to be released by Stripe without capture",
        )
        alarm("TransferFailed", service_metric_("TransferFailed", "Sum"), 0, "a transfer to a runner failed")
        alarm(
            "RevertFailed",
            service_metric_("RevertFailed", "Sum"),
            0,
            "a revert failed: a hold or charge remains",
        )
        alarm(
            "AuditUnresolved",
            service_metric_("AuditUnresolved", "Sum"),
            0,
            "the settlement audit found money it cannot put right (a failed refund, money captured "
            "on a payment that says none was, a refused reversal): a person must look",
        )
        alarm(
            "RefundFailed",
            service_metric_("RefundFailed", "Sum"),
            0,
            "a refund failed at Stripe: the customer has not got the money back",
        )
        alarm(
            "AuditBacklog",
            service_metric_("AuditBacklog", "Minimum"),
            0,
            "uncertain payments stay due for their check against Stripe for an hour",
            periods=12,
        )
        # Emitted by every reconciler run: how long the oldest check it left due has waited.
        # Past the threshold for two runs, the reconciler is not keeping up (its Stripe share,
        # AUDIT_STRIPE_READS_PER_SECOND, is too small for the rate) or its checks keep failing.
        for name, what in (
            ("StaleCheckBacklogAge", "payments stuck in a non-final status wait"),
            ("AuditBacklogAge", "uncertain and final payments wait"),
        ):
            alarm(
                name,
                service_metric_(name, "Maximum"),
                config.check_backlog_age_threshold_seconds,
                f"{what} longer than {config.check_backlog_age_threshold_seconds} s for their check against "
                "Stripe: the reconciler is behind (docs/operations.md)",
                periods=2,
            )
        alarm(
            "TransferReversalFailed",
            service_metric_("TransferReversalFailed", "Sum"),
            0,
            "a runner's transfer could not be reversed",
        )
        alarm(
            "PayoutDestinationRefused",
            service_metric_("PayoutDestinationRefused", "Sum"),
            0,
            "a release was refused because the runner's payout destination is not the one campusG's "
            "user service knows: possible account takeover, a person must look",
        )
        alarm(
            "PayoutVelocityHigh",
            service_metric_("PayoutVelocityHigh", "Sum"),
            0,
            "payouts to one runner's account exceeded the hourly limit (PAYOUT_VELOCITY_MAX_PER_HOUR)",
        )
        rejected = cw.Alarm(
            self,
            "WebhookSignatureRejected",
            alarm_name=f"{stack_name}-WebhookSignatureRejected",
            metric=service_metric_("WebhookSignatureRejected", "Sum"),
            threshold=config.webhook_signature_rejected_threshold,
            evaluation_periods=1,
            # at least the threshold in 5 minutes: someone probing the webhook, or a rolled
            # signing secret that the operator has not stored yet
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description=f"{config.webhook_signature_rejected_threshold} or more webhooks with a bad "
            "Stripe signature in 5 minutes",
        )
        rejected.add_alarm_action(action)
        rejected.add_ok_action(action)
        self.alarms.append(rejected)
        alarm(
            "SecretMisconfigured",
            service_metric_("SecretMisconfigured", "Sum"),
            0,
            "a Stripe secret is empty, a placeholder or of the wrong kind: the service refuses to work",
        )
        five = Duration.minutes(5)
        alarm(
            "DatabaseCpu",
            instance.metric_cpu_utilization(period=five),
            80,
            "database CPU above 80%",
            periods=3,
        )
        alarm(
            "DatabaseFreeStorage",
            instance.metric_free_storage_space(period=five),
            2 * 1024**3,
            "database free storage below 2 GiB",
            below=True,
        )
        alarm(
            "DatabaseConnections",
            instance.metric_database_connections(period=five),
            60,
            "database connections near the instance limit",
            periods=3,
        )
        alarm(
            "ProxyAvailability",
            cw.Metric(
                namespace="AWS/RDS",
                metric_name="AvailabilityPercentage",
                # the proxy's health checks of the database, averaged over its nodes
                dimensions_map={
                    "ProxyName": proxy.db_proxy_name,
                    "TargetGroup": "default",
                    "TargetRole": "READ_WRITE",
                },
                statistic="Average",
                period=five,
            ),
            95,
            "the RDS Proxy cannot reach the database",
            periods=2,
            below=True,
        )
        alarm(
            "SagaApi5xx",
            saga_api.metric_server_error(period=five, statistic="Sum"),
            config.api_5xx_threshold,
            "the saga's private API answers 5xx",
        )
        # Secrets Manager publishes no rotation metric; a failed rotation is an event.
        events.Rule(
            self,
            "RotationFailed",
            description="a database secret rotation failed",
            event_pattern=events.EventPattern(
                source=["aws.secretsmanager"],
                detail_type=["AWS Service Event via CloudTrail"],
                detail={"eventName": ["RotationFailed"], "additionalEventData": {"SecretId": secret_arns}},
            ),
            targets=[targets.SnsTopic(self.topic)],
        )

        dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"{Stack.of(self).stack_name}-payments")
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Authorizations",
                left=[
                    service_metric_(n, "Sum")
                    for n in (
                        "PaymentAuthorized",
                        "PaymentFailed",
                        "PaymentRequiresAction",
                        "CommandRejected",
                    )
                ],
                right=[service_metric_("DuplicateCommand", "Sum")],
            ),
            cw.GraphWidget(
                title="Backlogs",
                left=[
                    service_metric_("OutboxBacklog", "Maximum"),
                    service_metric_("AuthorizationsNearExpiry", "Maximum"),
                ],
                right=[service_metric_("DeadLettered", "Sum"), service_metric_("TransferFailed", "Sum")],
            ),
            cw.GraphWidget(
                title="Function errors",
                left=[fn.metric_errors(period=Duration.minutes(5)) for fn in functions.values()],
            ),
            cw.GraphWidget(
                title="API", left=[api.metric_count(), api.metric_server_error(), api.metric_client_error()]
            ),
        )
        dashboard.add_widgets(cw.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms), width=24))
