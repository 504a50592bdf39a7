"""Alarms, the SNS topic they notify, and a dashboard.

Custom metrics come from Powertools in the functions: namespace CampusG/Payments, dimension
service=payment-service.
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import MonitoringConfig

NAMESPACE = "CampusG/Payments"
SERVICE = "payment-service"


def service_metric(name: str, statistic: str) -> cw.Metric:
    return cw.Metric(
        namespace=NAMESPACE,
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
    ):
        super().__init__(scope, id)
        # CloudWatch can publish to an encrypted topic only with a customer key that allows it.
        key = kms.Key(
            self, "AlarmTopicKey", enable_key_rotation=True, description="payment service alarm topic"
        )
        key.grant_encrypt_decrypt(iam.ServicePrincipal("cloudwatch.amazonaws.com"))
        self.topic = sns.Topic(self, "AlarmTopic", master_key=key, enforce_ssl=True)
        if config.alarm_email:
            self.topic.add_subscription(subs.EmailSubscription(config.alarm_email))
        action = cw_actions.SnsAction(self.topic)
        self.alarms: list[cw.Alarm] = []

        def alarm(
            ident: str, metric: cw.IMetric, threshold: float, description: str, periods: int = 1
        ) -> cw.Alarm:
            created = cw.Alarm(
                self,
                ident,
                metric=metric,
                threshold=threshold,
                evaluation_periods=periods,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
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
            "DeadLetters",
            dead_letter_queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(5)),
            0,
            "messages are waiting in the dead-letter queue",
        )
        alarm(
            "DeadLettered",
            service_metric("DeadLettered", "Sum"),
            0,
            "the service dead-lettered a command or event",
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
            service_metric("OutboxBacklog", "Maximum"),
            config.outbox_backlog_threshold,
            "events are piling up in the outbox (Kafka unreachable?)",
            periods=3,
        )
        alarm(
            "AuthorizationsNearExpiry",
            service_metric("AuthorizationsNearExpiry", "Maximum"),
            0,
            "card holds are about to be released by Stripe without capture",
        )
        alarm("TransferFailed", service_metric("TransferFailed", "Sum"), 0, "a transfer to a runner failed")

        dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"{Stack.of(self).stack_name}-payments")
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Authorizations",
                left=[
                    service_metric(n, "Sum")
                    for n in (
                        "PaymentAuthorized",
                        "PaymentFailed",
                        "PaymentRequiresAction",
                        "CommandRejected",
                    )
                ],
                right=[service_metric("DuplicateCommand", "Sum")],
            ),
            cw.GraphWidget(
                title="Backlogs",
                left=[
                    service_metric("OutboxBacklog", "Maximum"),
                    service_metric("AuthorizationsNearExpiry", "Maximum"),
                ],
                right=[service_metric("DeadLettered", "Sum"), service_metric("TransferFailed", "Sum")],
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
