"""The CDK app synthesized once per session (it takes seconds), with a stand-in layer zip so
these tests need neither `make build` nor the network. The layer itself is tested in
test_layer.py. cdk.json names no account and no pipeline connection; the tests supply
stand-ins for both (an AWS documentation account id), so the pipeline stack is synthesized too."""

from __future__ import annotations

import copy
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "1")

from aws_cdk.assertions import Template

from infra.app import PIPELINE_STACK, ROOT, create_app
from infra.config import CONTEXT_KEY, merge

TEST_ACCOUNT = "123456789012"
TEST_CONNECTION = (
    f"arn:aws:codeconnections:ap-southeast-1:{TEST_ACCOUNT}:connection/11111111-2222-3333-4444-555555555555"
)

# campusG's callers of the private API (api.callers), in the stand-in account: the saga's role may
# release and revert, the reader's only read. Prod sets api.saga_auth=iam in cdk.json and so needs
# them, with the other settings a production deploy must name (integrations).
SAGA_ROLE = f"arn:aws:iam::{TEST_ACCOUNT}:role/campusg-complete-order-saga"
READER_ROLE = f"arn:aws:iam::{TEST_ACCOUNT}:role/campusg-order-service"
CALLERS = {"release_revert": [SAGA_ROLE], "read": [READER_ROLE]}
USER_SERVICE_URL = "https://users.campusg.internal"
PROD_SETTINGS = {
    "api": {"callers": CALLERS},
    "integrations": {"user_service_url": USER_SERVICE_URL, "return_url_origins": ["https://campusg.example"]},
}

CLERK_ISSUER = "https://clerk.campusg.example"
FRONTEND_ORIGINS = ["https://campusg.example", "https://www.campusg.example"]


def stand_in_context(**api: Any) -> dict[str, Any]:
    """cdk.json's service context with the stand-in account and connection (and api overrides)."""
    context = copy.deepcopy(json.loads((ROOT / "cdk.json").read_text())["context"][CONTEXT_KEY])
    context["account"] = TEST_ACCOUNT
    context["pipeline"]["connection_arn"] = TEST_CONNECTION
    # The public history route exists once a Clerk issuer is set; two origins exercise the
    # preflight's origin check (one origin would be a fixed header).
    context["defaults"]["api"].update(
        {"clerk_issuer": CLERK_ISSUER, "frontend_origins": FRONTEND_ORIGINS, **api}
    )
    context["stages"]["prod"] = merge(context["stages"]["prod"], PROD_SETTINGS)
    return {CONTEXT_KEY: context}


def synth_dev(root: Path, service: dict[str, Any] | None = None, **context: Any) -> dict[str, Any]:
    """The dev stage's template alone (no pipeline), with ``service`` merged over the stand-in
    service context and ``context`` (e.g. ``context_file``) passed as app context."""
    stand_in = stand_in_context()[CONTEXT_KEY]
    stand_in["pipeline"]["connection_arn"] = None  # the service stack is enough
    app_context = {CONTEXT_KEY: merge(stand_in, service or {}), **context}
    outdir = root / "cdk.out"
    create_app(context={"layer_zip": str(stand_in_layer(root)), **app_context}, outdir=str(outdir)).synth()
    for manifest in outdir.rglob("manifest.json"):  # offline: no context lookup left to do
        assert not json.loads(manifest.read_text()).get("missing"), manifest
    return Synth(outdir).raw("payment-service-dev")


def stand_in_layer(root: Path) -> Path:
    layer_zip = root / "layer.zip"
    with zipfile.ZipFile(layer_zip, "w") as zf:
        zf.writestr("python/payments_core/__init__.py", "")
    return layer_zip


@dataclass(frozen=True)
class Synth:
    outdir: Path

    def raw(self, stack_name: str) -> dict[str, Any]:
        found = sorted(self.outdir.rglob(f"{stack_name}.template.json"))
        assert found, f"no template for {stack_name} under {self.outdir}"
        return dict(json.loads(found[0].read_text()))

    def template(self, stack_name: str) -> Template:
        return Template.from_json(self.raw(stack_name))

    def templates(self) -> list[Path]:
        """Every template CloudFormation would receive: the stacks and the pipeline's stages."""
        return sorted(self.outdir.rglob("*.template.json"))

    def nested(self, stage: str) -> dict[str, Any]:
        """The service template deployed by the pipeline's stage (Staging, Production)."""
        found = sorted((self.outdir / f"assembly-{PIPELINE_STACK}-{stage}").glob("*.template.json"))
        assert len(found) == 1, found
        return dict(json.loads(found[0].read_text()))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    root = tmp_path_factory.mktemp("cdk")
    layer_zip = stand_in_layer(root)
    outdir = root / "cdk.out"
    # The cdk-nag plugin (AwsSolutionsChecks) runs during synth and fails it on any finding not
    # acknowledged in code, so getting here at all is the first cdk-nag assertion.
    create_app(context={"layer_zip": str(layer_zip), **stand_in_context()}, outdir=str(outdir)).synth()
    return Synth(outdir)


@pytest.fixture(scope="session")
def dev(synth: Synth) -> Template:
    return synth.template("payment-service-dev")


@pytest.fixture(scope="session")
def dev_raw(synth: Synth) -> dict[str, Any]:
    return synth.raw("payment-service-dev")


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


# The settings a production-like deploy names, on the dev stage: SigV4 with per-route callers
# (api.saga_auth=iam) and every integration setting (issue 18).
PAYOUT_VELOCITY_MAX_PER_HOUR = 4
IAM_SETTINGS = {
    "defaults": {
        "api": {"saga_auth": "iam", "callers": CALLERS},
        "integrations": {"user_service_url": USER_SERVICE_URL},
        "business": {"payout_velocity_max_per_hour": PAYOUT_VELOCITY_MAX_PER_HOUR},
    }
}


@pytest.fixture(scope="session")
def iam_dev(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return synth_dev(tmp_path_factory.mktemp("cdk-iam"), IAM_SETTINGS)
