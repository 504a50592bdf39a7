"""Issue 17, item 5: what failed in real accounts, each now a setting or fixed: reserved
concurrency (off by default), NAT gateways per stage (Elastic IP quota), checkov skips on named
resources only, the pipeline's pinned CLI, its own stack names and its Chromium."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import pytest

from infra import checkov
from infra.app import ROOT
from infra.config import CONTEXT_KEY, load
from infra.stacks.pipeline import BUILD_IMAGE, cdk_cli_version, pipeline_stack_name, stack_name
from tests.infra.conftest import Synth, resources, synth_dev

pytestmark = pytest.mark.infra

ELASTIC_IP_QUOTA = 5  # per region, by default


def _reserved(raw: dict[str, Any]) -> dict[str, int]:
    return {
        v["Properties"]["Description"]: v["Properties"]["ReservedConcurrentExecutions"]
        for v in resources(raw, "AWS::Lambda::Function").values()
        if "ReservedConcurrentExecutions" in v["Properties"]
    }


@pytest.fixture(scope="module")
def reserved_two_nats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    settings = {"functions": {"authorize_reserved_concurrency": 3}, "network": {"nat_gateways": 2}}
    return synth_dev(tmp_path_factory.mktemp("cdk-reserved"), {"defaults": settings})


def test_no_reserved_concurrency_by_default(dev_raw: dict[str, Any], synth: Synth) -> None:
    # capacity.reserve_concurrency is off in these stages: Lambda keeps 100 unreserved, so any
    # reservation fails in an account whose quota is still low (the checklist: make capacity).
    for raw in (dev_raw, synth.nested("Staging"), synth.nested("Production")):
        assert _reserved(raw) == {}


def test_reserved_concurrency_when_set(reserved_two_nats: dict[str, Any]) -> None:
    assert _reserved(reserved_two_nats) == {"payment_commands consumer: authorize, release, revert": 3}


def _nat_count(raw: dict[str, Any]) -> tuple[int, int]:
    return len(resources(raw, "AWS::EC2::NatGateway")), len(resources(raw, "AWS::EC2::EIP"))


def test_nat_gateways_per_stage(
    dev_raw: dict[str, Any], synth: Synth, reserved_two_nats: dict[str, Any]
) -> None:
    assert _nat_count(dev_raw) == (1, 1)
    assert _nat_count(synth.nested("Staging")) == (1, 1)
    assert _nat_count(synth.nested("Production")) == (2, 2)
    assert _nat_count(reserved_two_nats) == (2, 2)  # the setting, not a constant


def test_committed_stages_fit_the_default_elastic_ip_quota() -> None:
    cfg = load(json.loads((ROOT / "cdk.json").read_text())["context"][CONTEXT_KEY])
    # The stages deployed in one account: dev by hand, the pipeline's; not a sizing profile such
    # as campus1000 (it synthesizes, nothing deploys it: docs/sizing-and-costs.md).
    deployed = ["dev", *cfg.pipeline.stages]
    own_vpc = [cfg.stage(s).network for s in deployed if not cfg.stage(s).network.vpc_id]
    assert sum(n.nat_gateways for n in own_vpc) < ELASTIC_IP_QUOTA


def test_nat_gateways_must_fit_the_zones(tmp_path_factory: pytest.TempPathFactory) -> None:
    for count in (0, 3):  # none: Stripe and Clerk unreachable; 3: more than the two zones
        with pytest.raises(Exception, match="nat_gateways"):
            synth_dev(tmp_path_factory.mktemp("cdk-nat"), {"defaults": {"network": {"nat_gateways": count}}})


# ---- checkov: skips on named resources only ----------------------------------------------------


def test_checkov_module_has_no_type_wide_skips() -> None:
    source = (ROOT / "infra" / "checkov.py").read_text()
    tree = ast.parse(source)
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [s for s in strings if re.fullmatch(r"AWS::\w+::\w+", s)]  # no table by resource type
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
    }
    assert not names & {"Aspects", "IAspect", "cfn_resource_type", "ACKNOWLEDGED"}


def test_every_checkov_skip_names_its_resource(synth: Synth) -> None:
    found = 0
    for template in synth.templates():
        for logical_id, resource in json.loads(template.read_text())["Resources"].items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                found += 1
                assert skip["comment"].startswith(f"{logical_id}: "), (template.name, logical_id, skip)
    assert found > 0


def test_a_new_resource_inherits_no_skip() -> None:
    from aws_cdk import App, Stack
    from aws_cdk import aws_logs as logs

    app = App()
    stack = Stack(app, "Probe")
    named = logs.LogGroup(stack, "Named")
    logs.LogGroup(stack, "Added")
    checkov.skip(named, checkov.LOG_GROUP_KEY)
    template = app.synth().get_stack_by_name("Probe").template
    skipped = {k for k, v in template["Resources"].items() if "checkov" in v.get("Metadata", {})}
    assert skipped == {stack.resolve(named.node.default_child.logical_id)}  # type: ignore[union-attr]


# ---- the pipeline -------------------------------------------------------------------------------


def _projects(synth: Synth) -> dict[str, dict[str, Any]]:
    pipeline = synth.raw("payment-service-pipeline")
    return {k: v["Properties"] for k, v in resources(pipeline, "AWS::CodeBuild::Project").items()}


def test_pipeline_pins_the_cli_version_of_package_json(synth: Synth) -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["aws-cdk"]
    assert cdk_cli_version() == pinned and re.fullmatch(r"\d+\.\d+\.\d+", pinned)
    (mutation,) = [p for k, p in _projects(synth).items() if "SelfMutation" in k]
    assert f"npm install -g aws-cdk@{pinned}" in mutation["Source"]["BuildSpec"]
    assert "aws-cdk@latest" not in json.dumps(_projects(synth))


def test_pipeline_build_installs_chromium(synth: Synth) -> None:
    (build,) = [p for k, p in _projects(synth).items() if "Synth" in k]
    spec = json.loads(build["Source"]["BuildSpec"])
    installs = " ".join(spec["phases"]["install"]["commands"])
    assert re.search(r"apt-get install -y .*\bchromium\b", installs)
    assert spec["phases"]["build"]["commands"] == ["make test", "make synth"]
    assert {p["Environment"]["Image"] for p in _projects(synth).values()} == {BUILD_IMAGE}


def test_pipeline_stacks_are_not_make_deploys_stacks(synth: Synth) -> None:
    for stage, name in (("Staging", "staging"), ("Production", "prod")):
        manifest = json.loads(
            (synth.outdir / f"assembly-payment-service-pipeline-{stage}" / "manifest.json").read_text()
        )
        names = [
            a["properties"]["stackName"]
            for a in manifest["artifacts"].values()
            if a["type"] == "aws:cloudformation:stack"
        ]
        assert names == [pipeline_stack_name(name)]
        assert names[0] != stack_name(name)


def test_pipeline_build_runs_the_lambda_runtimes_python(synth: Synth) -> None:
    """Debian bookworm's python3 is 3.11: the build installs the runtime's Python with the uv of
    the lock, so `make venv` builds .venv on it there as here (tools/venv_python.py)."""
    from infra.runtime import PYTHON_VERSION

    (build,) = [p for k, p in _projects(synth).items() if "Synth" in k]
    installs = json.loads(build["Source"]["BuildSpec"])["phases"]["install"]["commands"]
    locked = re.search(r"^uv==([\d.]+)", (ROOT / "requirements" / "dev.txt").read_text(), re.MULTILINE)
    assert locked, "uv is in the lock"
    assert any(f"uv=={locked.group(1)}" in c for c in installs), installs
    assert f"uv python install {PYTHON_VERSION}" in installs
