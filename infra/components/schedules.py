"""EventBridge rules driving the background jobs."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from constructs import Construct


class Schedules(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        outbox_relay: lambda_.IFunction,
        reconciler: lambda_.IFunction,
        retention: lambda_.IFunction,
    ):
        super().__init__(scope, id)
        # No retries: a missed tick is covered by the next one, and overlapping runs only compete
        # for the same rows (both jobs claim rows with SKIP LOCKED).
        self.outbox_relay = events.Rule(
            self,
            "OutboxRelayEveryMinute",
            description="publish the outbox to Kafka",
            schedule=events.Schedule.rate(Duration.minutes(1)),
            targets=[
                targets.LambdaFunction(outbox_relay, retry_attempts=0, max_event_age=Duration.minutes(1))
            ],
        )
        self.reconciler = events.Rule(
            self,
            "ReconcileEveryFiveMinutes",
            description="re-read stale payments from Stripe",
            schedule=events.Schedule.rate(Duration.minutes(5)),
            targets=[targets.LambdaFunction(reconciler, retry_attempts=0, max_event_age=Duration.minutes(5))],
        )
        # Daily at 03:30 Singapore time (19:30 UTC), when campus orders are fewest: its deletes
        # are small batches, but they still compete with the day's writes for I/O.
        self.retention = events.Rule(
            self,
            "RetainDataDaily",
            description="delete rows past their retention",
            schedule=events.Schedule.cron(minute="30", hour="19"),
            targets=[targets.LambdaFunction(retention, retry_attempts=0, max_event_age=Duration.hours(1))],
        )
