"""Issue 17, item 1: deploying into campusG's VPC, synthesized offline from the shipped example
context file (infra/examples/import-vpc.context.json), the way `make synth CONTEXT_FILE=…` does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.app import ROOT
from tests.infra.conftest import Synth, resources, synth_dev
from tests.infra.test_template_checks import cfn_lint_errors, checkov_failures

pytestmark = pytest.mark.infra

EXAMPLE = "infra/examples/import-vpc.context.json"
IMPORTED_CLUSTER = (
    "arn:aws:kafka:ap-southeast-1:123456789012:cluster/campusg/11111111-2222-3333-4444-555555555555-1"
)


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    return dict(json.loads((ROOT / EXAMPLE).read_text())["defaults"]["network"])


@pytest.fixture(scope="module")
def imported_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cdk-import")
    synth_dev(root, context_file=EXAMPLE)
    return root


@pytest.fixture(scope="module")
def imported(imported_root: Path) -> dict[str, Any]:
    return Synth(imported_root / "cdk.out").raw("payment-service-dev")


@pytest.fixture(scope="module")
def imported_bare(tmp_path_factory: pytest.TempPathFactory, example: dict[str, Any]) -> dict[str, Any]:
    """The same VPC named without route tables, private DNS asked for, the execute-api endpoint
    reused and campusG's own MSK cluster: what made synth fail with CanTGatewayEndpointVpc."""
    network = {**example, "private_subnet_route_table_ids": [], "isolated_subnet_route_table_ids": []}
    network["endpoints"] = {**example["endpoints"], "execute_api": "vpce-0e0e0e0e0e0e0e009"}
    network["endpoint_private_dns"] = True
    kafka = {"cluster_arn": IMPORTED_CLUSTER, "bootstrap_servers": "b-1.campusg.example:9098"}
    return synth_dev(
        tmp_path_factory.mktemp("cdk-import-bare"),
        {"defaults": {"network": network, "kafka": kafka}},
    )


def _endpoints(raw: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        k: v["Properties"]
        for k, v in resources(raw, "AWS::EC2::VPCEndpoint").items()
        if v["Properties"]["VpcEndpointType"] == kind
    }


def _service(props: dict[str, Any]) -> str:
    return json.dumps(props["ServiceName"]).rsplit(".", 1)[-1].strip('"]} ')


def _ingress(raw: dict[str, Any], group: str) -> list[dict[str, Any]]:
    rules = list(raw["Resources"][group]["Properties"].get("SecurityGroupIngress", []))
    rules += [
        r["Properties"]
        for r in resources(raw, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}
    ]
    return rules


def _admits(
    rules: list[dict[str, Any]], port: int, *, group: str | None = None, cidr: str | None = None
) -> bool:
    return any(
        r["FromPort"] <= port <= r["ToPort"]
        and (group is None or r.get("SourceSecurityGroupId") == group)
        and (cidr is None or r.get("CidrIp") == cidr)
        for r in rules
    )


def test_the_vpc_is_imported_not_created(imported: dict[str, Any], example: dict[str, Any]) -> None:
    for kind in ("AWS::EC2::VPC", "AWS::EC2::Subnet", "AWS::EC2::NatGateway", "AWS::EC2::EIP"):
        assert not resources(imported, kind), kind
    for name, fn in resources(imported, "AWS::Lambda::Function").items():
        if "VpcConfig" in fn["Properties"]:
            assert fn["Properties"]["VpcConfig"]["SubnetIds"] == example["private_subnet_ids"], name
    (subnet_group,) = resources(imported, "AWS::RDS::DBSubnetGroup").values()
    assert subnet_group["Properties"]["SubnetIds"] == example["isolated_subnet_ids"]
    (cluster,) = resources(imported, "AWS::MSK::ServerlessCluster").values()
    assert cluster["Properties"]["VpcConfigs"][0]["SubnetIds"] == example["private_subnet_ids"]


def test_no_private_dns_in_a_vpc_the_stack_does_not_own(imported: dict[str, Any]) -> None:
    interface = _endpoints(imported, "Interface")
    assert interface  # the ones it does create (SQS, execute-api) ...
    for name, props in interface.items():
        assert props["PrivateDnsEnabled"] is False, name  # ... never capture campusG's DNS


def test_private_dns_only_when_the_context_asks(imported_bare: dict[str, Any]) -> None:
    interface = _endpoints(imported_bare, "Interface")
    assert interface and all(p["PrivateDnsEnabled"] is True for p in interface.values())


def test_reused_and_skipped_endpoints_are_not_created(
    imported: dict[str, Any], example: dict[str, Any]
) -> None:
    assert example["endpoints"] == {
        "secrets_manager": "vpce-0e0e0e0e0e0e0e001",
        "sts": "vpce-0e0e0e0e0e0e0e002",
        "lambda": "skip",
    }
    created = {_service(p) for p in _endpoints(imported, "Interface").values()}
    assert created == {"sqs", "execute-api"}


def test_s3_gateway_endpoint_only_into_the_named_route_tables(
    imported: dict[str, Any], imported_bare: dict[str, Any], example: dict[str, Any]
) -> None:
    (gateway,) = _endpoints(imported, "Gateway").values()
    assert gateway["RouteTableIds"] == example["private_subnet_route_table_ids"]
    assert _endpoints(imported_bare, "Gateway") == {}  # no route tables named: none written


def test_campusg_callers_are_admitted_to_the_private_api_and_kafka(
    imported: dict[str, Any], example: dict[str, Any]
) -> None:
    (caller_group,) = example["caller_security_group_ids"]
    (caller_cidr,) = example["caller_cidrs"]
    (endpoint,) = [k for k, p in _endpoints(imported, "Interface").items() if _service(p) == "execute-api"]
    (endpoint_group,) = [
        g["Fn::GetAtt"][0] for g in _endpoints(imported, "Interface")[endpoint]["SecurityGroupIds"]
    ]
    rules = _ingress(imported, endpoint_group)
    assert _admits(rules, 443, group=caller_group) and _admits(rules, 443, cidr=caller_cidr)
    assert not _admits(rules, 443, cidr=example["vpc_cidr"])  # callers named: not the whole VPC
    (cluster,) = resources(imported, "AWS::MSK::ServerlessCluster").values()
    (cluster_group,) = [g["Fn::GetAtt"][0] for g in cluster["Properties"]["VpcConfigs"][0]["SecurityGroups"]]
    rules = _ingress(imported, cluster_group)
    assert _admits(rules, 9098, group=caller_group) and _admits(rules, 9098, cidr=caller_cidr)
    # The private API is behind that endpoint.
    (api,) = [
        v["Properties"]
        for v in resources(imported, "AWS::ApiGateway::RestApi").values()
        if v["Properties"]["EndpointConfiguration"]["Types"] == ["PRIVATE"]
    ]
    assert api["EndpointConfiguration"]["VpcEndpointIds"] == [{"Ref": endpoint}]


def test_reused_execute_api_endpoint_and_imported_kafka(imported_bare: dict[str, Any]) -> None:
    assert "execute-api" not in {_service(p) for p in _endpoints(imported_bare, "Interface").values()}
    (api,) = [
        v["Properties"]
        for v in resources(imported_bare, "AWS::ApiGateway::RestApi").values()
        if v["Properties"]["EndpointConfiguration"]["Types"] == ["PRIVATE"]
    ]
    assert api["EndpointConfiguration"]["VpcEndpointIds"] == ["vpce-0e0e0e0e0e0e0e009"]
    assert not resources(imported_bare, "AWS::MSK::ServerlessCluster")
    # campusG admits our functions on 9098 in its own cluster's group: the stack names the group.
    output = imported_bare["Outputs"]["FunctionSecurityGroupId"]["Value"]
    assert imported_bare["Resources"][output["Fn::GetAtt"][0]]["Type"] == "AWS::EC2::SecurityGroup"
    (esm,) = resources(imported_bare, "AWS::Lambda::EventSourceMapping").values()
    assert esm["Properties"]["EventSourceArn"] == IMPORTED_CLUSTER


def test_ids_come_from_the_context_file(imported: dict[str, Any], example: dict[str, Any]) -> None:
    # synth_dev fails on any context lookup left "missing" (Vpc.from_lookup would leave one).
    text = json.dumps(imported)
    assert example["vpc_id"] in text and all(s in text for s in example["private_subnet_ids"])


def test_cfn_lint_and_checkov_are_clean_in_campusgs_vpc(imported_root: Path) -> None:
    templates = Synth(imported_root / "cdk.out").templates()
    assert cfn_lint_errors(templates) == []
    assert checkov_failures(templates) == []


@pytest.mark.parametrize(
    "endpoints",
    [{"execute_api": "skip"}, {"sqs": "create"}, {"dynamodb": "skip"}],
    ids=["api-skip", "typo", "unknown"],
)
def test_endpoint_settings_are_checked(
    tmp_path_factory: pytest.TempPathFactory, endpoints: dict[str, str]
) -> None:
    with pytest.raises(Exception, match=r"network\.endpoints"):
        synth_dev(
            tmp_path_factory.mktemp("cdk-bad-endpoint"), {"defaults": {"network": {"endpoints": endpoints}}}
        )
