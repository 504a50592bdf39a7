"""Stripe webhook function: behind the public API Gateway, ``POST /api/stripe-webhook`` only.
It serves that one route of payments_core.entrypoints.api's resolver (signature check, deduplication, the
payment's new status, a stray hold's cancel): the saga's routes live in the payment_api function,
with other permissions, and a request for them here is answered 404 without being resolved."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from payments_core.entrypoints.api import app
from payments_core.entrypoints.routes import WEBHOOK
from payments_core.observability import logger, metrics, tracer

ROUTE = (WEBHOOK.method, WEBHOOK.path)  # API Gateway's resource template, not the stage's path
NOT_FOUND = {
    "statusCode": 404,
    "headers": {"Content-Type": "application/json"},
    "body": '{"success":false,"error":"NOT_FOUND","message":"No such route"}',
}


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if (event.get("httpMethod"), event.get("resource")) != ROUTE:
        return NOT_FOUND
    return app.resolve(event, context)
