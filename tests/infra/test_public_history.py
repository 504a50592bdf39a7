"""Issue 17, item 3: the frontend's GET /history/{user_id} on the public API, served by its own
function (Clerk-checked, read-only use of the tables, no Stripe, no Kafka), with CORS for the
configured origins only, its own route throttle and its own WAF rate rule."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from infra.config import ApiConfig
from tests.infra.conftest import CLERK_ISSUER, FRONTEND_ORIGINS, resources, synth_dev
from tests.infra.test_api_exposure import _apis, _routes

pytestmark = pytest.mark.infra

ROUTE = "/history/{user_id}"


def _history_function(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (found,) = [
        (k, v["Properties"])
        for k, v in resources(raw, "AWS::Lambda::Function").items()
        if v["Properties"].get("Handler") == "app.handler"
    ]
    return found


def test_route_is_on_the_public_api_behind_its_own_function(dev_raw: dict[str, Any]) -> None:
    public, private = _apis(dev_raw)
    routes = _routes(dev_raw)
    get = routes[public][("GET", ROUTE)]
    name, _ = _history_function(dev_raw)
    assert name in json.dumps(get["Integration"]["Uri"])
    assert get["Integration"]["Type"] == "AWS_PROXY"
    assert get["RequestParameters"] == {"method.request.path.user_id": True}
    # The saga's own history route stays private and unauthenticated, on the saga's function.
    assert routes[private][("GET", ROUTE)]["AuthorizationType"] == "NONE"
    assert name not in json.dumps(routes[private][("GET", ROUTE)]["Integration"]["Uri"])


def test_preflight_allows_only_the_configured_origins(dev_raw: dict[str, Any]) -> None:
    public, _ = _apis(dev_raw)
    options = _routes(dev_raw)[public][("OPTIONS", ROUTE)]
    integration = options["Integration"]
    assert integration["Type"] == "MOCK"
    (response,) = integration["IntegrationResponses"]
    headers = response["ResponseParameters"]
    assert "Authorization" in headers["method.response.header.Access-Control-Allow-Headers"]
    assert "GET" in headers["method.response.header.Access-Control-Allow-Methods"]
    echoed = {headers["method.response.header.Access-Control-Allow-Origin"].strip("'")}
    echoed |= set(re.findall(r'\$origin == "([^"]+)"', response["ResponseTemplates"]["application/json"]))
    assert echoed == set(FRONTEND_ORIGINS)  # each configured origin, and nothing else (no '*')


def test_route_has_its_own_throttle(dev_raw: dict[str, Any]) -> None:
    public, _ = _apis(dev_raw)
    (stage,) = [
        v["Properties"]
        for v in resources(dev_raw, "AWS::ApiGateway::Stage").values()
        if v["Properties"]["RestApiId"] == {"Ref": public}
    ]
    settings = {(m["ResourcePath"], m["HttpMethod"]): m for m in stage["MethodSettings"]}
    history = settings[("/~1history~1{user_id}", "GET")]
    assert (history["ThrottlingRateLimit"], history["ThrottlingBurstLimit"]) == (100, 200)
    webhook = settings[("/~1api~1stripe-webhook", "POST")]
    # dev's 5 orders/s x 4 webhooks x 3 (infra/capacity/), burst 2 s of it
    assert (webhook["ThrottlingRateLimit"], webhook["ThrottlingBurstLimit"]) == (60, 120)


def test_waf_rate_rules_are_scoped_apart(dev_raw: dict[str, Any]) -> None:
    (acl,) = resources(dev_raw, "AWS::WAFv2::WebACL").values()
    rules = {r["Name"]: r["Statement"].get("RateBasedStatement") for r in acl["Properties"]["Rules"]}
    history_match = {
        "ByteMatchStatement": {
            "FieldToMatch": {"UriPath": {}},
            "PositionalConstraint": "CONTAINS",
            "SearchString": "/history/",
            "TextTransformations": [{"Priority": 0, "Type": "NONE"}],
        }
    }
    assert rules["HistoryRatePerIp"] == {
        "AggregateKeyType": "IP",
        "Limit": 6000,
        "ScopeDownStatement": history_match,
    }
    (ip_set,) = resources(dev_raw, "AWS::WAFv2::IPSet")
    not_stripe = {
        "NotStatement": {"Statement": {"IPSetReferenceStatement": {"Arn": {"Fn::GetAtt": [ip_set, "Arn"]}}}}
    }
    assert rules["RatePerIp"] == {
        "AggregateKeyType": "IP",
        "Limit": 1200,  # the webhook route's 60/s x 300 s / Stripe's 15 addresses
        "ScopeDownStatement": {
            "AndStatement": {"Statements": [{"NotStatement": {"Statement": history_match}}, not_stripe]}
        },
    }


def test_function_reads_the_tables_and_nothing_else(dev_raw: dict[str, Any]) -> None:
    name, props = _history_function(dev_raw)
    env = props["Environment"]["Variables"]
    assert env["CLERK_ISSUER"] == CLERK_ISSUER
    assert env["CLERK_JWKS_URL"] == f"{CLERK_ISSUER}/.well-known/jwks.json"
    assert env["FRONTEND_ORIGINS"] == ",".join(FRONTEND_ORIGINS)
    assert env["DB_IAM_AUTH"] == "true" and env["DB_USER"] == "payments_app"
    assert not [k for k in env if k.startswith(("STRIPE_", "KAFKA_", "PAYMENT_", "DEAD_LETTER"))]
    assert props["VpcConfig"]["SubnetIds"]  # in the VPC: the proxy, and Clerk through the NAT
    role = props["Role"]["Fn::GetAtt"][0]
    actions = {
        a
        for policy in resources(dev_raw, "AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        for a in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    }
    assert "rds-db:connect" in actions
    assert not [a for a in actions if a.startswith(("secretsmanager:", "kafka", "sqs:"))], actions
    # Its own log group with the stage's retention, and its own alarms.
    log_group = dev_raw["Resources"][props["LoggingConfig"]["LogGroup"]["Ref"]]["Properties"]
    assert log_group["RetentionInDays"] == 30
    alarmed = [
        a["Properties"]["MetricName"]
        for a in resources(dev_raw, "AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("Dimensions") == [{"Name": "FunctionName", "Value": {"Ref": name}}]
    ]
    assert sorted(alarmed) == ["Errors", "Throttles"]


def test_no_route_without_a_clerk_issuer(tmp_path_factory: pytest.TempPathFactory) -> None:
    raw = synth_dev(tmp_path_factory.mktemp("cdk-no-history"), {"defaults": {"api": {"clerk_issuer": None}}})
    public, _ = _apis(raw)
    assert not [r for r in _routes(raw)[public] if r[1].startswith("/history")]
    assert not [
        v
        for v in resources(raw, "AWS::Lambda::Function").values()
        if v["Properties"].get("Handler") == "app.handler"
    ]
    (acl,) = resources(raw, "AWS::WAFv2::WebACL").values()
    assert [r["Name"] for r in acl["Properties"]["Rules"] if "RateBasedStatement" in r["Statement"]] == [
        "RatePerIp"
    ]


@pytest.mark.parametrize(
    "origins",
    [[], ["*"], ["https://campusg.example/"], ["http://campusg.example"], ["https://*.campusg.example"]],
)
def test_origins_must_be_explicit_https_origins(origins: list[str]) -> None:
    config = ApiConfig(
        throttle_rate_limit=1,
        throttle_burst_limit=1,
        webhook_max_body_kb=64,
        webhook_throttle_rate_limit=1,
        webhook_throttle_burst_limit=1,
        waf_rate_limit=100,
        clerk_issuer=CLERK_ISSUER,
        frontend_origins=origins,
    )
    with pytest.raises(ValueError, match="frontend_origins"):
        config.validate()
