"""The Stripe credentials: created with a placeholder, filled in by the operator afterwards
(``aws secretsmanager put-secret-value``). The real values never appear in code, context or
the template, and later deploys do not overwrite what the operator stored.

One restricted key (``rk_…``) per function that calls Stripe, each with only the Stripe
permissions its code needs (docs/deploying.md, "Stripe restricted keys"), and the webhook signing secret.
All of them are encrypted with one customer-managed KMS key (rotated yearly) and each carries a
resource policy that refuses ``GetSecretValue`` to every principal but the function roles that
read it and the account root (administration, break-glass): AWS's documented
``aws:PrincipalArn`` deny pattern. Only reading is refused, so CloudFormation and the operator
still create, describe and put values."""

from __future__ import annotations

from aws_cdk import Aws, RemovalPolicy, SecretValue, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

from infra.nag import Suppression, suppress

PLACEHOLDER = "REPLACE_ME"
# The functions that call Stripe, each with a restricted key of its own: (function, what for).
RESTRICTED_KEYS = {
    "authorize_payment": "authorize, capture, transfer, cancel and refund (the command function)",
    "stripe_webhook": "cancel a stray hold reported by a webhook",
    "reconcile_payments": "re-read, cancel, refund and reverse transfers (reconciler and audit)",
}


class StripeSecrets(Construct):
    def __init__(self, scope: Construct, id: str, *, retain: bool):
        super().__init__(scope, id)
        prefix = f"{Stack.of(self).stack_name}/stripe"
        removal = RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY
        self.key = kms.Key(
            self,
            "Key",
            description=f"{Stack.of(self).stack_name}: encrypts the Stripe secrets",
            enable_key_rotation=True,
            removal_policy=removal,
        )
        # The key decrypts only for Secrets Manager (reading a secret), or for the account root.
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="DecryptOnlyThroughSecretsManager",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["kms:Decrypt"],
                resources=["*"],
                conditions={
                    "StringNotEquals": {
                        "kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com",
                        "aws:PrincipalArn": f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:root",
                    }
                },
            )
        )
        self.restricted_keys = {
            function: sm.Secret(
                self,
                "".join(p.title() for p in function.split("_")) + "Key",
                secret_name=f"{prefix}/{function.replace('_', '-')}-key",
                description=f"Stripe restricted key (rk_…) of {function}: {purpose}; set by the operator",
                secret_string_value=SecretValue.unsafe_plain_text(PLACEHOLDER),
                encryption_key=self.key,
                removal_policy=removal,
            )
            for function, purpose in RESTRICTED_KEYS.items()
        }
        self.webhook_secret = sm.Secret(
            self,
            "WebhookSecret",
            secret_name=f"{prefix}/webhook-secret",
            description="Stripe webhook signing secret (whsec_…) of the WebhookUrl endpoint; set by the operator",
            secret_string_value=SecretValue.unsafe_plain_text(PLACEHOLDER),
            encryption_key=self.key,
            removal_policy=removal,
        )
        self.readers: dict[sm.Secret, list[iam.IRole]] = {s: [] for s in self.all}
        for secret in self.all:
            suppress(
                secret,
                [
                    Suppression(
                        id="AwsSolutions-SMG4",
                        reason="Issued by Stripe, not by AWS: rotation happens in the Stripe dashboard "
                        "(roll key / roll signing secret) and the operator stores the new value.",
                    )
                ],
            )

    @property
    def all(self) -> list[sm.Secret]:
        return [*self.restricted_keys.values(), self.webhook_secret]

    def grant_read(self, secret: sm.Secret, fn: lambda_.Function) -> None:
        """What payments_core.adapters.secrets calls (GetSecretValue, not CDK's grant_read's
        DescribeSecret) on this one secret, Decrypt with the key through Secrets Manager only,
        and a place in the secret's resource policy's allow list."""
        assert fn.role is not None
        fn.add_to_role_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[secret.secret_arn])
        )
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt"],
                resources=[self.key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com"}},
            )
        )
        self.readers[secret].append(fn.role)

    def seal(self) -> None:
        """Write each secret's resource policy: once every reader has been granted."""
        for secret, roles in self.readers.items():
            if not roles:
                raise ValueError(f"{secret.node.path}: no function reads it")
            secret.add_to_resource_policy(
                iam.PolicyStatement(
                    sid="OnlyItsFunctionsRead",
                    effect=iam.Effect.DENY,
                    principals=[iam.AnyPrincipal()],
                    actions=["secretsmanager:GetSecretValue"],
                    resources=["*"],
                    conditions={
                        "StringNotEquals": {
                            "aws:PrincipalArn": [
                                *(role.role_arn for role in roles),
                                f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:root",
                            ]
                        }
                    },
                )
            )
