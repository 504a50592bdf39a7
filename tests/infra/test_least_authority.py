"""Issue 18, infrastructure: per-caller authority on the private API, no test invocations, the
webhook's own function, a restricted Stripe key per caller, the secrets under a customer key that
admits only their functions, the payout and webhook alarms, and the new settings."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from infra.app import ROOT
from infra.components.api import SAGA_ROUTES
from infra.config import CONTEXT_KEY, ApiConfig, IntegrationsConfig, load
from tests.infra.conftest import (
    PAYOUT_VELOCITY_MAX_PER_HOUR,
    READER_ROLE,
    SAGA_ROLE,
    USER_SERVICE_URL,
    Synth,
    resources,
)
from tests.infra.test_api_exposure import _apis, _routes

pytestmark = pytest.mark.infra

AUTHORIZE = "payment_commands consumer: authorize, release, revert"
API = "the saga's payment queries, release and revert"
WEBHOOK = "Stripe webhook: verifies and applies signed events"
RECONCILER = "re-reads stale payments from Stripe"
POSTS = {f"execute-api:/*/POST/{p.replace('{id}', '*')}" for p, m in SAGA_ROUTES if m == "POST"}
GETS = {
    f"execute-api:/*/GET/{p.replace('{id}', '*').replace('{user_id}', '*')}"
    for p, m in SAGA_ROUTES
    if m == "GET"
}


def _functions(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        v["Properties"]["Description"]: {**v["Properties"], "_id": k}
        for k, v in resources(raw, "AWS::Lambda::Function").items()
        if v["Properties"].get("Handler") in ("app.lambda_handler", "app.handler")
    }


def _statements(raw: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in resources(raw, "AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"].get("Roles", [])
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def _role(fn: dict[str, Any]) -> str:
    return str(fn["Role"]["Fn::GetAtt"][0])


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _stripe_secrets(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: v["Properties"]
        for k, v in resources(raw, "AWS::SecretsManager::Secret").items()
        if "/stripe/" in str(v["Properties"].get("Name"))
    }


# ---- 1. the private API: per-caller authority ------------------------------------------------


def _policy(raw: dict[str, Any]) -> list[dict[str, Any]]:
    _, private = _apis(raw)
    return list(raw["Resources"][private]["Properties"]["Policy"]["Statement"])


def _allowed(statements: list[dict[str, Any]], role: str, route: str) -> bool:
    """What the resource policy says for ``role`` on ``route`` from the VPC endpoint: an Allow
    naming the role and no Deny matching it (Deny conditions: aws:PrincipalArn not listed)."""
    allow = any(
        s["Effect"] == "Allow" and role in _list(s["Principal"]["AWS"]) and route in _list(s["Resource"])
        for s in statements
    )
    denied = any(
        s["Effect"] == "Deny"
        and route in _list(s["Resource"])
        and role not in _list(s["Condition"]["StringNotEquals"]["aws:PrincipalArn"])
        for s in statements
        if "aws:PrincipalArn" in s.get("Condition", {}).get("StringNotEquals", {})
    )
    return allow and not denied


def test_release_and_revert_only_for_the_saga_reads_for_readers(iam_dev: dict[str, Any]) -> None:
    statements = _policy(iam_dev)
    assert len(POSTS) == 2 and len(GETS) == 4
    for route in POSTS:
        assert _allowed(statements, SAGA_ROLE, route), route
        assert not _allowed(statements, READER_ROLE, route), route
        assert not _allowed(statements, "arn:aws:iam::123456789012:role/someone-else", route)
    for route in GETS:
        assert _allowed(statements, READER_ROLE, route), route
        assert _allowed(statements, SAGA_ROLE, route), route  # the saga reads the status it acts on
        assert not _allowed(statements, "arn:aws:iam::123456789012:role/someone-else", route)
    # every route covered, and no statement allows anything wider than its routes
    allowed_routes = {r for s in statements if s["Effect"] == "Allow" for r in _list(s["Resource"])}
    assert allowed_routes == POSTS | GETS
    assert all(s["Principal"] != {"AWS": "*"} for s in statements if s["Effect"] == "Allow")


def test_iam_policy_keeps_the_vpc_endpoint_condition(iam_dev: dict[str, Any]) -> None:
    statements = _policy(iam_dev)
    (endpoint,) = [
        k
        for k, v in resources(iam_dev, "AWS::EC2::VPCEndpoint").items()
        if "execute-api" in str(v["Properties"]["ServiceName"])
    ]
    for s in statements:
        if s["Effect"] == "Allow":
            assert s["Condition"] == {"StringEquals": {"aws:SourceVpce": {"Ref": endpoint}}}, s
    assert any(
        s["Effect"] == "Deny"
        and s["Resource"] == "execute-api:/*"
        and s["Condition"] == {"StringNotEquals": {"aws:SourceVpce": {"Ref": endpoint}}}
        for s in statements
    )
    for route, method in _routes(iam_dev)[_apis(iam_dev)[1]].items():
        assert method["AuthorizationType"] == "AWS_IAM", route


def test_iam_without_callers_fails_with_a_clear_message() -> None:
    base = {
        "throttle_rate_limit": 1,
        "throttle_burst_limit": 1,
        "webhook_max_body_kb": 64,
        "webhook_throttle_rate_limit": 1,
        "webhook_throttle_burst_limit": 1,
        "waf_rate_limit": 100,
    }
    with pytest.raises(ValueError, match=r"api.saga_auth=iam needs api.callers.release_revert and"):
        ApiConfig(**base, saga_auth="iam").validate()
    with pytest.raises(ValueError, match=r"needs api.callers.read"):
        ApiConfig(**base, saga_auth="iam", callers={"release_revert": [SAGA_ROLE]}).validate()
    with pytest.raises(ValueError, match="not an IAM role ARN"):
        ApiConfig(
            **base, saga_auth="iam", callers={"release_revert": ["saga"], "read": [READER_ROLE]}
        ).validate()
    with pytest.raises(ValueError, match=r"only with api\.saga_auth=iam"):
        ApiConfig(**base, callers={"release_revert": [SAGA_ROLE], "read": []}).validate()
    ApiConfig(
        **base, saga_auth="iam", callers={"release_revert": [SAGA_ROLE], "read": [READER_ROLE]}
    ).validate()


def test_prod_is_iam_and_names_no_account_in_cdk_json() -> None:
    context = json.loads((ROOT / "cdk.json").read_text())["context"][CONTEXT_KEY]
    prod = load(copy.deepcopy(context)).stage("prod")
    assert prod.api.saga_auth == "iam"
    assert not any(prod.api.callers.values())  # account-specific: from the deployment's context file
    with pytest.raises(ValueError, match="CONTEXT_FILE"):
        prod.api.validate()
    with pytest.raises(ValueError, match=r"user_service_url is required in production.*CONTEXT_FILE"):
        prod.integrations.validate(production=prod.production)
    # the shipped example makes prod synthesizable offline
    example = json.loads((ROOT / "infra/examples/prod.context.json").read_text())
    from infra.config import merge

    prod = load(merge(context, example)).stage("prod")
    prod.api.validate()
    prod.integrations.validate(production=True)


# ---- 1b. no test invocations ------------------------------------------------------------------


def test_no_test_invoke_permission(dev_raw: dict[str, Any], iam_dev: dict[str, Any]) -> None:
    for raw in (dev_raw, iam_dev):
        permissions = resources(raw, "AWS::Lambda::Permission").values()
        from_apis = [p for p in permissions if p["Properties"]["Principal"] == "apigateway.amazonaws.com"]
        # the webhook, the six saga routes, the public history route
        assert len(from_apis) == 8
        assert not [p for p in from_apis if "test-invoke-stage" in json.dumps(p["Properties"]["SourceArn"])]


# ---- 2. the webhook's own function --------------------------------------------------------------


def test_webhook_function_serves_the_webhook_route(dev_raw: dict[str, Any]) -> None:
    functions = _functions(dev_raw)
    public, _ = _apis(dev_raw)
    uri = json.dumps(_routes(dev_raw)[public][("POST", "/api/stripe-webhook")]["Integration"]["Uri"])
    assert f'"{functions[WEBHOOK]["_id"]}"' in uri
    assert f'"{functions[API]["_id"]}"' not in uri
    assert functions[WEBHOOK]["Handler"] == "app.lambda_handler"


def test_webhook_role_has_no_command_topic_and_no_other_key(dev_raw: dict[str, Any]) -> None:
    functions = _functions(dev_raw)
    webhook = functions[WEBHOOK]
    env = webhook["Environment"]["Variables"]
    statements = _statements(dev_raw, _role(webhook))
    text = json.dumps(statements)
    assert "topic/" in text and "payment_events.dev" in text  # events, published after commit
    assert "payment_commands" not in text  # never a command
    read = {
        r["Ref"]
        for s in statements
        if "secretsmanager:GetSecretValue" in _list(s["Action"])
        for r in _list(s["Resource"])
    }
    secrets = _stripe_secrets(dev_raw)
    names = {secrets[r]["Name"] for r in read}
    assert names == {
        "payment-service-dev/stripe/stripe-webhook-key",
        "payment-service-dev/stripe/webhook-secret",
    }
    assert env["STRIPE_SECRET_KEY_SECRET_ID"] == {"Ref": _secret_named(dev_raw, "stripe-webhook-key")}
    assert env["STRIPE_WEBHOOK_SECRET_ID"] == {"Ref": _secret_named(dev_raw, "webhook-secret")}


def test_api_function_reads_no_stripe_secret(dev_raw: dict[str, Any]) -> None:
    api = _functions(dev_raw)[API]
    env = api["Environment"]["Variables"]
    assert "STRIPE_SECRET_KEY_SECRET_ID" not in env and "STRIPE_WEBHOOK_SECRET_ID" not in env
    statements = _statements(dev_raw, _role(api))
    assert not [s for s in statements if str(s["Action"]).startswith(("secretsmanager", "kms"))]
    assert "payment_commands.dev" in json.dumps(statements)  # release and revert queue commands


# ---- 3. a restricted key per Stripe caller -----------------------------------------------------


def _secret_named(raw: dict[str, Any], suffix: str) -> str:
    (found,) = [k for k, v in _stripe_secrets(raw).items() if v["Name"].endswith(f"/stripe/{suffix}")]
    return found


def test_each_stripe_caller_has_its_own_key(dev_raw: dict[str, Any]) -> None:
    functions = _functions(dev_raw)
    expected = {
        AUTHORIZE: "authorize-payment-key",
        WEBHOOK: "stripe-webhook-key",
        RECONCILER: "reconcile-payments-key",
    }
    seen = set()
    for description, fn in functions.items():
        env = fn["Environment"]["Variables"]
        key = env.get("STRIPE_SECRET_KEY_SECRET_ID")
        if description not in expected:
            assert key is None, description
            continue
        secret = _secret_named(dev_raw, expected[description])
        assert key == {"Ref": secret}, description
        granted = {
            r["Ref"]
            for s in _statements(dev_raw, _role(fn))
            if "secretsmanager:GetSecretValue" in _list(s["Action"])
            for r in _list(s["Resource"])
        }
        assert secret in granted and not (granted - {secret, _secret_named(dev_raw, "webhook-secret")})
        seen.add(secret)
    assert len(seen) == 3


# ---- 4. the customer-managed key and the secrets' resource policies ---------------------------


def test_stripe_secrets_under_a_rotating_customer_key(dev_raw: dict[str, Any]) -> None:
    secrets = _stripe_secrets(dev_raw)
    assert len(secrets) == 4  # three restricted keys and the signing secret
    keys = {json.dumps(p.get("KmsKeyId")) for p in secrets.values()}
    (key_ref,) = keys
    key = json.loads(key_ref)["Fn::GetAtt"][0]
    props = dev_raw["Resources"][key]["Properties"]
    assert dev_raw["Resources"][key]["Type"] == "AWS::KMS::Key"
    assert props["EnableKeyRotation"] is True
    # outside Secrets Manager nobody but the account root decrypts with it
    (deny,) = [s for s in props["KeyPolicy"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Action"] == "kms:Decrypt" and deny["Principal"] == {"AWS": "*"}
    assert set(deny["Condition"]["StringNotEquals"]) == {"kms:ViaService", "aws:PrincipalArn"}
    assert ":root" in json.dumps(deny["Condition"]["StringNotEquals"]["aws:PrincipalArn"])


def test_each_secret_denies_reading_to_all_but_its_functions(dev_raw: dict[str, Any]) -> None:
    functions = _functions(dev_raw)
    readers = {
        "authorize-payment-key": {_role(functions[AUTHORIZE])},
        "stripe-webhook-key": {_role(functions[WEBHOOK])},
        "reconcile-payments-key": {_role(functions[RECONCILER])},
        "webhook-secret": {_role(functions[WEBHOOK])},
    }
    policies = {
        p["Properties"]["SecretId"]["Ref"]: p["Properties"]["ResourcePolicy"]["Statement"]
        for p in resources(dev_raw, "AWS::SecretsManager::ResourcePolicy").values()
    }
    for suffix, roles in readers.items():
        (statement,) = policies[_secret_named(dev_raw, suffix)]
        assert statement["Effect"] == "Deny" and statement["Principal"] == {"AWS": "*"}
        # only reading: CloudFormation and the operator still create, describe and put values
        assert statement["Action"] == "secretsmanager:GetSecretValue"
        allowed = statement["Condition"]["StringNotEquals"]["aws:PrincipalArn"]
        named = {a["Fn::GetAtt"][0] for a in allowed if "Fn::GetAtt" in a}
        assert named == roles, suffix
        assert len(allowed) == len(roles) + 1 and ":root" in json.dumps(allowed)  # administration


# ---- 5. alarms and settings --------------------------------------------------------------------


def test_payout_and_webhook_signature_alarms(dev_raw: dict[str, Any]) -> None:
    (topic,) = resources(dev_raw, "AWS::SNS::Topic")
    alarms = {
        a["Properties"]["MetricName"]: a["Properties"]
        for a in resources(dev_raw, "AWS::CloudWatch::Alarm").values()
        if "MetricName" in a["Properties"]
    }
    for name in ("PayoutDestinationRefused", "PayoutVelocityHigh"):
        alarm = alarms[name]
        assert alarm["Namespace"] == "CampusG/Payments/dev"
        assert alarm["Dimensions"] == [{"Name": "service", "Value": "payment-service"}]
        assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
            "Sum",
            0,
            "GreaterThanThreshold",
        ), name  # any
        assert alarm["AlarmActions"] == [{"Ref": topic}]
    rejected = alarms["WebhookSignatureRejected"]
    assert rejected["Namespace"] == "CampusG/Payments/dev" and rejected["Period"] == 300
    assert (rejected["Statistic"], rejected["Threshold"], rejected["ComparisonOperator"]) == (
        "Sum",
        10,
        "GreaterThanOrEqualToThreshold",
    )
    assert rejected["AlarmActions"] == [{"Ref": topic}]


def test_command_function_environment(dev_raw: dict[str, Any], iam_dev: dict[str, Any]) -> None:
    dev_env = _functions(dev_raw)[AUTHORIZE]["Environment"]["Variables"]
    assert dev_env["RETURN_URL_ORIGINS"] == "http://localhost:5173,https://localhost:5173"
    assert "USER_SERVICE_URL" not in dev_env and "PAYOUT_VELOCITY_MAX_PER_HOUR" not in dev_env
    env = _functions(iam_dev)[AUTHORIZE]["Environment"]["Variables"]
    assert env["USER_SERVICE_URL"] == USER_SERVICE_URL
    assert env["PAYOUT_VELOCITY_MAX_PER_HOUR"] == str(PAYOUT_VELOCITY_MAX_PER_HOUR)
    for description, fn in _functions(iam_dev).items():
        if description != AUTHORIZE:
            assert not {"USER_SERVICE_URL", "PAYOUT_VELOCITY_MAX_PER_HOUR", "RETURN_URL_ORIGINS"} & set(
                fn["Environment"]["Variables"]
            ), description


def test_production_needs_the_user_service_and_https_origins(synth: Synth) -> None:
    staging = _functions(synth.nested("Staging"))[AUTHORIZE]["Environment"]["Variables"]
    assert "RETURN_URL_ORIGINS" not in staging and "USER_SERVICE_URL" not in staging  # layer defaults
    prod = _functions(synth.nested("Production"))[AUTHORIZE]["Environment"]["Variables"]
    assert prod["USER_SERVICE_URL"] == USER_SERVICE_URL
    assert prod["RETURN_URL_ORIGINS"] == "https://campusg.example"
    with pytest.raises(ValueError, match="must be https in production"):
        IntegrationsConfig(USER_SERVICE_URL, ["http://localhost:5173"]).validate(production=True)
    with pytest.raises(ValueError, match="not an origin"):
        IntegrationsConfig(None, ["https://campusg.example/path"]).validate(production=False)
    IntegrationsConfig(None, ["http://localhost:5173"]).validate(production=False)


def test_the_reconciler_paces_to_its_stripe_share_and_its_backlog_age_is_alarmed(
    dev_raw: dict[str, Any],
) -> None:
    env = _functions(dev_raw)[RECONCILER]["Environment"]["Variables"]
    assert env["AUDIT_STRIPE_READS_PER_SECOND"] == "10"  # business.audit_stripe_reads_per_second
    assert env["RECONCILE_BACKOFF_SECONDS"] == "300,900,3600"
    assert "AUDIT_STRIPE_READS_PER_SECOND" not in _functions(dev_raw)[AUTHORIZE]["Environment"]["Variables"]
    (topic,) = resources(dev_raw, "AWS::SNS::Topic")
    alarms = {
        a["Properties"]["MetricName"]: a["Properties"]
        for a in resources(dev_raw, "AWS::CloudWatch::Alarm").values()
        if "MetricName" in a["Properties"]
    }
    for name in ("StaleCheckBacklogAge", "AuditBacklogAge"):
        alarm = alarms[name]
        assert alarm["Namespace"] == "CampusG/Payments/dev"
        assert (alarm["Statistic"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
            "Maximum",
            1800,
            "GreaterThanThreshold",
        ), name
        assert alarm["EvaluationPeriods"] == 2 and alarm["Period"] == 300
        assert alarm["AlarmActions"] == [{"Ref": topic}]
    assert alarms["AuditBacklog"]["Statistic"] == "Minimum"  # the count's alarm stays as it was


def test_a_reconciler_pace_of_nothing_is_refused() -> None:
    from infra.config import BusinessConfig

    base = {
        "stripe_api_base": "https://api.stripe.com",
        "default_currency": "sgd",
        "platform_fee_bps": 0,
        "reconcile_pending_after_seconds": 60,
        "reconcile_requires_action_after_seconds": 3600,
        "reconcile_authorized_after_seconds": 561600,
        "reconcile_batch_size": 50,
    }
    with pytest.raises(ValueError, match="audit_stripe_reads_per_second must be above 0"):
        BusinessConfig(**base, audit_stripe_reads_per_second=0)
    with pytest.raises(ValueError, match="reconcile_backoff_seconds must be a non-empty list"):
        BusinessConfig(**base, reconcile_backoff_seconds=[])
