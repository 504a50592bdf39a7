"""Retention: run daily by EventBridge; deletes rows past their retention (published outbox rows,
webhook event ids, old leases, settled money calls, command outcomes) in small batches until done
or its invocation nears its end. Payments themselves are kept."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from payments_core.entrypoints.jobs import run_retention
from payments_core.observability import logger, metrics, tracer


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, object]:
    return run_retention(context.get_remaining_time_in_millis)
