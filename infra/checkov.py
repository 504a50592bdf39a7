"""checkov acknowledgements, each with its reason, written into the template as checkov reads
them (``Metadata.checkov.skip``). One table by resource type, applied by an aspect to every
stack, so the reason sits in code next to cdk-nag's (infra/nag.py) and a new resource of an
acknowledged type is covered the same way. Everything else checkov finds fails `make test`
(tests/infra/test_template_checks.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jsii
from aws_cdk import Aspects, CfnResource, IAspect
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_rds as rds
from constructs import IConstruct


@dataclass(frozen=True)
class Ack:
    id: str
    reason: str
    # Only for the resources this returns True for.
    when: Callable[[CfnResource], bool] | None = None


def _outside_vpc(node: CfnResource) -> bool:
    return isinstance(node, lambda_.CfnFunction) and node.vpc_config is None


def _single_az(node: CfnResource) -> bool:
    return isinstance(node, rds.CfnDBInstance) and not node.multi_az


ACKNOWLEDGED: dict[str, list[Ack]] = {
    "AWS::Lambda::Function": [
        Ack(
            "CKV_AWS_115",
            "Concurrency is reserved where it protects something (the authorize function in prod, "
            "cdk.json functions.authorize_reserved_concurrency); reserving it for the API, the "
            "scheduled jobs and deploy-time functions would only take capacity from the account.",
        ),
        Ack(
            "CKV_AWS_116",
            "No asynchronous invocation needs a function DLQ: the MSK mapping has its own on-failure "
            "SQS destination, API Gateway and the custom-resource providers invoke synchronously, and "
            "a missed scheduled tick (relay, reconciler) is covered by the next one.",
        ),
        Ack(
            "CKV_AWS_173",
            "The environment holds no secret, only names and settings (secrets are read from Secrets "
            "Manager at run time); the default AWS-managed key encrypts it at rest.",
        ),
        Ack(
            "CKV_AWS_117",
            "CDK's custom-resource provider functions call only CloudFormation and AWS APIs during "
            "deploys; every function of the service runs in the VPC (tests/infra checks it).",
            when=_outside_vpc,
        ),
    ],
    "AWS::Logs::LogGroup": [
        Ack(
            "CKV_AWS_158",
            "CloudWatch Logs encrypts every log group at rest; the logs carry no card data or "
            "secrets (payments_core logs ids and statuses only), so a customer key adds cost only.",
        )
    ],
    "AWS::SecretsManager::Secret": [
        Ack(
            "CKV_AWS_149",
            "Encrypted with the account's aws/secretsmanager key; access is limited by IAM to the roles "
            "that read each secret. A customer key would add cost and a key policy to keep in step.",
        )
    ],
    "AWS::SQS::Queue": [
        Ack("CKV_AWS_27", "Encrypted at rest with SQS-managed keys (SSE-SQS) and TLS enforced by policy.")
    ],
    "AWS::ApiGateway::Stage": [
        Ack(
            "CKV_AWS_120",
            "Payment statuses and webhook answers must be live: a cached status could tell the saga a "
            "payment is still pending after it succeeded.",
        )
    ],
    "AWS::ApiGateway::Method": [
        Ack(
            "CKV_AWS_59",
            "The webhook is open by necessity (Stripe cannot sign AWS requests; the function verifies "
            "the Stripe signature, WAF filters). The saga's routes are on a private API reachable only "
            "through the VPC endpoint named in its resource policy (api.saga_auth=iam adds SigV4).",
        )
    ],
    "AWS::RDS::DBInstance": [
        Ack(
            "CKV_AWS_118",
            "Basic CloudWatch metrics with alarms (CPU, storage, connections) cover on-call; enhanced "
            "monitoring would add an agent role and per-second OS metrics nobody reads at this size.",
        ),
        Ack(
            "CKV_AWS_157",
            "Non-production stages run single-AZ to save cost; prod sets database.multi_az.",
            when=_single_az,
        ),
    ],
}


@jsii.implements(IAspect)
class CheckovAcknowledgements:
    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, CfnResource):
            return
        acks = ACKNOWLEDGED.get(node.cfn_resource_type)
        if not acks:
            return
        skip = [{"id": a.id, "comment": a.reason} for a in acks if a.when is None or a.when(node)]
        if skip:
            node.add_metadata("checkov", {"skip": skip})


def acknowledge(scope: IConstruct) -> None:
    Aspects.of(scope).add(CheckovAcknowledgements())


def skip(resource: IConstruct, acks: list[Ack]) -> None:
    """Acknowledge findings on one construct's CloudFormation resource (its default child)."""
    cfn = resource if isinstance(resource, CfnResource) else resource.node.default_child
    assert isinstance(cfn, CfnResource), resource
    cfn.add_metadata("checkov", {"skip": [{"id": a.id, "comment": a.reason} for a in acks]})
