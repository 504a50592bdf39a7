"""Public history function: behind the public API Gateway, ``GET`` and ``OPTIONS``
``/history/{user_id}`` from campusG's frontend with a Clerk session token. Every decision
(token, CORS, the totals) is in payments_core.entrypoints.public_api."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from payments_core.entrypoints.public_api import history_answer
from payments_core.observability import logger, metrics, tracer


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@metrics.log_metrics(raise_on_empty_metrics=False)
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return history_answer(event)


handler = lambda_handler  # `app.handler` and `app.lambda_handler` (the name every function here uses)
