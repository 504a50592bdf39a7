"""Redrive: invoked by an operator (``make redrive STAGE=…`` runs ``aws lambda invoke``), since
MSK is reachable only from the VPC. ``{}`` lists the dead letters with their commands;
``{"ids": ["0:12"]}`` or ``{"all": true}`` re-queues them to payment_commands."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from payments_core.entrypoints.jobs import run_redrive
from payments_core.observability import logger, metrics, tracer


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_redrive(event)
