"""CloudFormation custom resource (CDK Provider framework): create the service's Kafka topics on
the cluster the stack made, with the configured partitions, and grow the commands topic when
the mapping is paused and drained. Also invoked by `make partitions STAGE=…` (MSK is reachable
only from the VPC) with ``{"Operation": "describe" | "grow", ...}``. Every decision is in
payments_core (entrypoints.deploy); a raise fails the deploy."""

from typing import Any

from aws_lambda_powertools import Logger
from payments_core.entrypoints.deploy import ensure_topics, operate_partitions

logger = Logger()

PHYSICAL_RESOURCE_ID = "payment-service-kafka-topics"


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "Operation" in event:
        return operate_partitions(event)
    if event["RequestType"] == "Delete":
        # Topics hold the saga's commands and events: they outlive the stack's resource.
        return {"PhysicalResourceId": event.get("PhysicalResourceId", PHYSICAL_RESOURCE_ID)}
    props = event["ResourceProperties"]
    outcome = ensure_topics(
        list(props["Topics"]),
        int(props["Partitions"]),
        int(props["ReplicationFactor"]),
        grow_topic=props.get("GrowTopic"),
        consumer_group=props.get("ConsumerGroup"),
    )
    return {
        "PhysicalResourceId": PHYSICAL_RESOURCE_ID,
        "Data": {
            "Created": ",".join(t for t, state in outcome.items() if state == "created") or "none",
            "Grown": ",".join(t for t, state in outcome.items() if state == "grown") or "none",
        },
    }
