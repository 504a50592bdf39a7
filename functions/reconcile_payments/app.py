"""Reconciler and settlement audit: run every 5 minutes by EventBridge; re-reads from Stripe the
payments that are not final (lost webhooks, interrupted calls, lapsed holds) and the uncertain
ones, until its invocation nears its end."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from payments_core.entrypoints.jobs import run_reconciler
from payments_core.observability import logger, metrics, tracer


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    return run_reconciler(context.get_remaining_time_in_millis)
