"""CloudFormation custom resource (CDK Provider framework): apply the schema migrations shipped in
the layer (payments_core/migrations/*.sql) on deploy. The Provider framework talks to
CloudFormation; this handler only returns the result or raises, which fails the deploy."""

from typing import Any

from aws_lambda_powertools import Logger
from payments_core.entrypoints.deploy import apply_schema_migrations

logger = Logger()

PHYSICAL_RESOURCE_ID = "payments-schema-migrations"


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event["RequestType"] == "Delete":
        # The schema and its payment history outlive the stack (the database may be retained).
        return {"PhysicalResourceId": event.get("PhysicalResourceId", PHYSICAL_RESOURCE_ID)}
    applied = [str(version) for version in apply_schema_migrations()]
    logger.info("schema migrated", extra={"applied": applied})
    # A fixed id: an Update never makes CloudFormation "replace" (and so Delete) the schema.
    return {"PhysicalResourceId": PHYSICAL_RESOURCE_ID, "Data": {"Applied": ",".join(applied) or "none"}}
