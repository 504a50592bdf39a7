"""Issue 10, item 7: only the Stripe webhook faces the internet. The saga's routes are on a
private REST API that only the VPC's execute-api endpoint reaches (no signing, so campusG's
unmodified calls work); the ``api.saga_auth=iam`` switch makes every one of them AWS_IAM."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import resources

pytestmark = pytest.mark.infra

SAGA_ROUTES = {
    ("GET", "/payment/{id}/status"),
    ("GET", "/payment/{id}/details"),
    ("GET", "/history/{user_id}"),
    ("POST", "/payment/{id}/release"),
    ("POST", "/payment/{id}/revert"),
    ("GET", "/health"),
}
WEBHOOK = ("POST", "/api/stripe-webhook")
HISTORY = {("GET", "/history/{user_id}"), ("OPTIONS", "/history/{user_id}")}  # test_public_history.py


def _routes(raw: dict[str, Any]) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """{rest api logical id: {(method, full path): method properties}} from the template."""
    res = resources(raw, "AWS::ApiGateway::Resource")

    def path(ref: dict[str, Any], api: str) -> str:
        if "Fn::GetAtt" in ref:  # the root resource
            return ""
        props = res[ref["Ref"]]["Properties"]
        return f"{path(props['ParentId'], api)}/{props['PathPart']}"

    found: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for method in resources(raw, "AWS::ApiGateway::Method").values():
        props = method["Properties"]
        api = props["RestApiId"]["Ref"]
        full = path(props["ResourceId"], api) or "/"
        found.setdefault(api, {})[(props["HttpMethod"], full)] = props
    return found


def _apis(raw: dict[str, Any]) -> tuple[str, str]:
    apis = resources(raw, "AWS::ApiGateway::RestApi")
    (public,) = [
        k for k, v in apis.items() if v["Properties"]["EndpointConfiguration"]["Types"] == ["REGIONAL"]
    ]
    (private,) = [
        k for k, v in apis.items() if v["Properties"]["EndpointConfiguration"]["Types"] == ["PRIVATE"]
    ]
    return public, private


def test_only_the_webhook_and_the_history_route_are_public(dev_raw: dict[str, Any]) -> None:
    public, private = _apis(dev_raw)
    routes = _routes(dev_raw)
    assert set(routes[public]) == {WEBHOOK, *HISTORY}
    assert routes[public][WEBHOOK]["AuthorizationType"] == "NONE"
    assert routes[public][WEBHOOK]["RequestParameters"] == {"method.request.header.Stripe-Signature": True}
    assert set(routes[private]) == SAGA_ROUTES
    # One function behind all the saga's routes; the webhook and the history route have their own.
    saga_targets = {str(props["Integration"]["Uri"]) for props in routes[private].values()}
    assert len(saga_targets) == 1, saga_targets
    webhook_target = str(routes[public][WEBHOOK]["Integration"]["Uri"])
    assert webhook_target not in saga_targets
    assert "FunctionsStripeWebhook" in webhook_target
    # WAF guards the public API's stage only (WAF cannot attach to a private API).
    (assoc,) = resources(dev_raw, "AWS::WAFv2::WebACLAssociation").values()
    assert public in str(assoc["Properties"]["ResourceArn"]) or "ApiDeploymentStage" in str(
        assoc["Properties"]["ResourceArn"]
    )


def test_private_api_admits_only_its_vpc_endpoint(dev_raw: dict[str, Any]) -> None:
    _, private = _apis(dev_raw)
    props = dev_raw["Resources"][private]["Properties"]
    (endpoint,) = [
        k
        for k, v in resources(dev_raw, "AWS::EC2::VPCEndpoint").items()
        if "execute-api" in str(v["Properties"]["ServiceName"])
    ]
    endpoint_ref = {"Ref": endpoint}
    assert props["EndpointConfiguration"]["VpcEndpointIds"] == [endpoint_ref]
    statements = props["Policy"]["Statement"]
    allows = [s for s in statements if s["Effect"] == "Allow"]
    denies = [s for s in statements if s["Effect"] == "Deny"]
    assert allows and all(
        s["Condition"] == {"StringEquals": {"aws:SourceVpce": endpoint_ref}} for s in allows
    )
    assert any(s["Condition"] == {"StringNotEquals": {"aws:SourceVpce": endpoint_ref}} for s in denies)
    # Unsigned by default: campusG's plain requests calls work unmodified.
    for route, method in _routes(dev_raw)[private].items():
        assert method["AuthorizationType"] == "NONE", route
    # The endpoint itself admits the VPC on 443 only, and resolves the API's default name.
    ep = dev_raw["Resources"][endpoint]["Properties"]
    assert ep["PrivateDnsEnabled"] is True and ep["VpcEndpointType"] == "Interface"


def test_outputs_name_both_base_urls(dev_raw: dict[str, Any]) -> None:
    public, private = _apis(dev_raw)
    outputs = dev_raw["Outputs"]
    assert public in str(outputs["PublicApiUrl"]["Value"])
    assert private in str(outputs["SagaApiUrl"]["Value"])
    assert private in str(outputs["SagaApiEndpointUrl"]["Value"])


def test_iam_switch_signs_every_saga_route(iam_dev: dict[str, Any]) -> None:
    public, private = _apis(iam_dev)
    routes = _routes(iam_dev)
    assert set(routes[private]) == SAGA_ROUTES
    for route, method in routes[private].items():
        assert method["AuthorizationType"] == "AWS_IAM", route
    assert routes[public][WEBHOOK]["AuthorizationType"] == "NONE"  # Stripe cannot sign
