"""CloudFormation custom resource (CDK Provider framework): create the service's Kafka topics on
the cluster the stack made, with the configured partitions. Every decision is in
payments_core.topics; a raise fails the deploy."""

from typing import Any

from aws_lambda_powertools import Logger
from payments_core.topics import ensure_topics

logger = Logger()

PHYSICAL_RESOURCE_ID = "payment-service-kafka-topics"


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event["RequestType"] == "Delete":
        # Topics hold the saga's commands and events: they outlive the stack's resource.
        return {"PhysicalResourceId": event.get("PhysicalResourceId", PHYSICAL_RESOURCE_ID)}
    props = event["ResourceProperties"]
    outcome = ensure_topics(list(props["Topics"]), int(props["Partitions"]), int(props["ReplicationFactor"]))
    return {
        "PhysicalResourceId": PHYSICAL_RESOURCE_ID,
        "Data": {"Created": ",".join(t for t, state in outcome.items() if state == "created") or "none"},
    }
