"""The Stripe credentials: created with a placeholder, filled in by the operator afterwards
(``aws secretsmanager put-secret-value``). The real values never appear in code, context or
the template, and later deploys do not overwrite what the operator stored."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, SecretValue, Stack
from aws_cdk import aws_secretsmanager as sm
from constructs import Construct

from infra import checkov
from infra.nag import Suppression, suppress

PLACEHOLDER = "REPLACE_ME"


class StripeSecrets(Construct):
    def __init__(self, scope: Construct, id: str, *, retain: bool):
        super().__init__(scope, id)
        prefix = f"{Stack.of(self).stack_name}/stripe"
        self.secret_key = sm.Secret(
            self,
            "SecretKey",
            secret_name=f"{prefix}/secret-key",
            description="Stripe secret API key (sk_live_… / sk_test_…); set by the operator",
            secret_string_value=SecretValue.unsafe_plain_text(PLACEHOLDER),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
        self.webhook_secret = sm.Secret(
            self,
            "WebhookSecret",
            secret_name=f"{prefix}/webhook-secret",
            description="Stripe webhook signing secret (whsec_…) of the WebhookUrl endpoint; set by the operator",
            secret_string_value=SecretValue.unsafe_plain_text(PLACEHOLDER),
            removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
        )
        for secret in (self.secret_key, self.webhook_secret):
            checkov.skip(secret, checkov.SECRET_KEY)
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
