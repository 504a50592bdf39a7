"""checkov acknowledgements, each with its reason, written into the template as checkov reads
them (``Metadata.checkov.skip``) on the ONE resource they are about.

There is no table by resource type: a function, log group or secret added later starts with no
acknowledgement at all, so checkov (tests/infra/test_template_checks.py) reports it until someone
decides, next to that resource, which findings it accepts and why. Each skip's comment starts
with the resource's logical id, so the template says what was acknowledged where.

The reasons are kept here, one constant each, so the same decision reads the same everywhere;
``skip(resource, ...)`` is called where the resource is created."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_cdk import CfnResource
from constructs import IConstruct


@dataclass(frozen=True)
class Ack:
    id: str
    reason: str


# Lambda functions
FUNCTION_CONCURRENCY = Ack(
    "CKV_AWS_115",
    "No reserved concurrency: Lambda keeps 100 of the account's concurrency unreserved, so a "
    "reservation fails in an account whose quota is still low; capacity.reserve_concurrency reserves "
    "the authorize and API functions' (sized from the stage's rate) where the quota allows "
    "(docs/sizing-and-costs.md).",
)
FUNCTION_NO_DLQ = Ack(
    "CKV_AWS_116",
    "Never invoked asynchronously with work to lose: the MSK mapping has its own on-failure SQS "
    "destination, API Gateway and the custom-resource providers invoke synchronously, and a missed "
    "scheduled tick (relay, reconciler) is covered by the next one.",
)
FUNCTION_ENVIRONMENT_KEY = Ack(
    "CKV_AWS_173",
    "The environment holds no secret, only names and settings (secrets are read from Secrets "
    "Manager at run time); the default AWS-managed key encrypts it at rest.",
)
FUNCTION_OUTSIDE_VPC = Ack(
    "CKV_AWS_117",
    "A CDK custom-resource provider function: it calls only CloudFormation and AWS APIs during "
    "deploys. Every function of the service runs in the VPC (tests/infra checks it).",
)
SERVICE_FUNCTION = (FUNCTION_NO_DLQ, FUNCTION_ENVIRONMENT_KEY)
PROVIDER_FUNCTION = (FUNCTION_CONCURRENCY, FUNCTION_NO_DLQ, FUNCTION_ENVIRONMENT_KEY, FUNCTION_OUTSIDE_VPC)

LOG_GROUP_KEY = Ack(
    "CKV_AWS_158",
    "CloudWatch Logs encrypts every log group at rest; these logs carry no card data or secrets "
    "(payments_core logs ids and statuses; access logs carry no bodies), so a customer key adds cost only.",
)
SECRET_KEY = Ack(
    "CKV_AWS_149",
    "Encrypted with the account's aws/secretsmanager key; access is limited by IAM to the roles that "
    "read this secret. A customer key would add cost and a key policy to keep in step.",
)
QUEUE_KEY = Ack("CKV_AWS_27", "Encrypted at rest with SQS-managed keys (SSE-SQS) and TLS enforced by policy.")
STAGE_NO_CACHE = Ack(
    "CKV_AWS_120",
    "Payment statuses, histories and webhook answers must be live: a cached status could tell the "
    "saga a payment is still pending after it succeeded.",
)
WEBHOOK_OPEN = Ack(
    "CKV_AWS_59",
    "Stripe cannot sign AWS requests: the webhook is open and the function verifies the Stripe "
    "signature (required header checked by API Gateway first); WAF filters in front.",
)
SAGA_ROUTE_PRIVATE = Ack(
    "CKV_AWS_59",
    "A route of the private API, reachable only through the VPC endpoint its resource policy names "
    "(campusG's unsigned calls); api.saga_auth=iam adds SigV4.",
)
HISTORY_ROUTE_CLERK = Ack(
    "CKV_AWS_59",
    "The frontend's students sign in with Clerk: the function verifies the Clerk session token and "
    "that it is the student's own user_id (the preflight carries no data); WAF and a route throttle in front.",
)
DATABASE_MONITORING = Ack(
    "CKV_AWS_118",
    "Basic CloudWatch metrics with alarms (CPU, storage, connections) cover on-call; enhanced "
    "monitoring would add an agent role and per-second OS metrics nobody reads at this size.",
)
DATABASE_SINGLE_AZ = Ack(
    "CKV_AWS_157", "A non-production stage runs single-AZ to save cost; prod sets database.multi_az."
)


def skip(resource: IConstruct, *acks: Ack) -> None:
    """Acknowledge findings on one construct's CloudFormation resource (its default child)."""
    cfn = resource if isinstance(resource, CfnResource) else resource.node.default_child
    assert isinstance(cfn, CfnResource), resource
    # The logical id is a token here, resolved in the template: overrides are followed.
    named = [{"id": a.id, "comment": f"{cfn.logical_id}: {a.reason}"} for a in acks]
    existing: Any = cfn.get_metadata("checkov") or {}
    cfn.add_metadata("checkov", {"skip": [*existing.get("skip", []), *named]})
