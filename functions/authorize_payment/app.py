"""Authorize function: invoked by the MSK event source mapping on payment_commands.
Handles authorize_payment, release_payment and revert_payment; all decisions are in payments_core."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from payments_core.entrypoints.commands import handle_command_batch
from payments_core.observability import logger, metrics, tracer


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle_command_batch(event, context)
