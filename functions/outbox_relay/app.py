"""Outbox relay: run every minute by EventBridge; publishes events the command or webhook path
could not publish right away (broker down, function stopped after commit), in batches until
the backlog is gone or the invocation's time is nearly up."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from payments_core.entrypoints.jobs import run_outbox_relay
from payments_core.observability import logger, metrics, tracer


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    return run_outbox_relay(context.get_remaining_time_in_millis)
