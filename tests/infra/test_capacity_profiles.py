"""Issue 19: the templates follow each stage's profile as the capacity model sizes it (dev 5,
prod 50, campus1000 500 orders/s): webhook and API throttles, the WAF limit, the topics'
partitions, the mapping's pollers, reserved concurrency, the database class and the proxy's
settings; and synth refuses a profile whose settings cannot carry its rate, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.app import ROOT, create_app
from infra.capacity import Sizing, plan
from infra.config import CONTEXT_KEY, load, merge
from tests.infra.conftest import PROD_SETTINGS, Synth, resources, stand_in_context, stand_in_layer
from tests.infra.test_capacity import _rate_rule, _throttles
from tests.infra.test_template_checks import cfn_lint_errors, checkov_failures

pytestmark = pytest.mark.infra

AUTHORIZE = "payment_commands consumer: authorize, release, revert"
API = "the saga's payment queries, release and revert"


def _service(**stages: Any) -> dict[str, Any]:
    service = stand_in_context()[CONTEXT_KEY]
    service["pipeline"]["connection_arn"] = None  # the stage's own stack is enough
    service["stages"]["campus1000"] = merge(service["stages"]["campus1000"], PROD_SETTINGS)
    return merge(service, {"stages": stages})


def _synth(root: Path, stage: str, service: dict[str, Any]) -> Synth:
    outdir = root / "cdk.out"
    context = {"layer_zip": str(stand_in_layer(root)), "stage": stage, CONTEXT_KEY: service}
    create_app(context=context, outdir=str(outdir)).synth()
    return Synth(outdir)


@pytest.fixture(scope="module")
def campus_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return _synth(tmp_path_factory.mktemp("cdk-campus1000"), "campus1000", _service())


@pytest.fixture(scope="module")
def campus(campus_synth: Synth) -> dict[str, Any]:
    return campus_synth.raw("payment-service-campus1000")


def test_campus1000_template_passes_cfn_lint_and_checkov(campus_synth: Synth) -> None:
    # The larger profile's own template (its classes, reservations, pollers) as AWS will read it.
    templates = campus_synth.templates()
    assert [t.name for t in templates] == ["payment-service-campus1000.template.json"]
    assert cfn_lint_errors(templates) == []
    assert checkov_failures(templates) == []


@pytest.fixture(scope="module")
def profiles(dev_raw: dict[str, Any], synth: Synth, campus: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"dev": dev_raw, "prod": synth.nested("Production"), "campus1000": campus}


def _plan(stage: str) -> Sizing:
    return plan(load(_service()).stage(stage))


def _one(raw: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = resources(raw, kind).values()
    return dict(found["Properties"])


def _reserved(raw: dict[str, Any]) -> dict[str, int]:
    return {
        v["Properties"]["Description"]: v["Properties"]["ReservedConcurrentExecutions"]
        for v in resources(raw, "AWS::Lambda::Function").values()
        if "ReservedConcurrentExecutions" in v["Properties"]
    }


def test_partitions_pollers_and_concurrency_follow_the_profile(profiles: dict[str, dict[str, Any]]) -> None:
    got = {}
    for stage, raw in profiles.items():
        esm = _one(raw, "AWS::Lambda::EventSourceMapping")["ProvisionedPollerConfig"]
        got[stage] = (
            _one(raw, "Custom::PaymentsKafkaTopics")["Partitions"],
            esm["MinimumPollers"],
            esm["MaximumPollers"],
            _reserved(raw),
        )
        sized = _plan(stage)  # the template says what the model says
        assert got[stage][:3] == (
            str(sized.partitions.value),
            sized.min_pollers.value,
            sized.max_pollers.value,
        )
    assert got == {
        "dev": ("3", 1, 2, {}),
        # prod: 100 commands/s need a 4th partition; reservations stay off (capacity.reserve_concurrency)
        "prod": ("4", 1, 5, {}),
        # one invocation per partition and 5 per poller; the API's need (6,000 calls/s x 0.1 s)
        "campus1000": ("40", 8, 16, {AUTHORIZE: 40, API: 600}),
    }


def test_topics_resource_adds_partitions_as_the_profile_grows(profiles: dict[str, dict[str, Any]]) -> None:
    # Same property the topics function reads ("Partitions"); a larger profile asks for more.
    counts = [int(_one(profiles[s], "Custom::PaymentsKafkaTopics")["Partitions"]) for s in profiles]
    assert counts == sorted(counts) and len(set(counts)) == 3
    topics = _one(profiles["campus1000"], "Custom::PaymentsKafkaTopics")["Topics"]
    assert topics == [
        "payment_commands.campus1000",
        "payment_events.campus1000",
        "payment_commands.campus1000.dlq",
    ]


def test_api_limits_follow_the_profile(profiles: dict[str, dict[str, Any]]) -> None:
    throttles = {s: _throttles(raw)["public webhook"] for s, raw in profiles.items()}
    saga = {s: _throttles(raw)["saga stage"] for s, raw in profiles.items()}
    waf = {s: _rate_rule(raw)["Limit"] for s, raw in profiles.items()}
    assert throttles == saga == {"dev": (60, 120), "prod": (600, 1200), "campus1000": (6000, 12000)}
    assert waf == {"dev": 1200, "prod": 12000, "campus1000": 120000}


def test_database_and_proxy_follow_the_profile(profiles: dict[str, dict[str, Any]]) -> None:
    got = {}
    for stage, raw in profiles.items():
        pool = _one(raw, "AWS::RDS::DBProxyTargetGroup")["ConnectionPoolConfigurationInfo"]
        got[stage] = (
            _one(raw, "AWS::RDS::DBInstance")["DBInstanceClass"],
            pool["MaxConnectionsPercent"],
            pool["ConnectionBorrowTimeout"],
        )
        sized = _plan(stage)
        assert got[stage] == (
            f"db.{sized.database.value.name}",
            sized.proxy_max_connections_percent.value,
            sized.proxy_borrow_timeout_s.value,
        )
    assert {s: g[0] for s, g in got.items()} == {
        "dev": "db.t4g.micro",
        "prod": "db.t4g.small",
        "campus1000": "db.m7g.2xlarge",
    }


def test_campus1000_is_not_deployed_by_the_pipeline() -> None:
    cdk = json.loads((ROOT / "cdk.json").read_text())["context"][CONTEXT_KEY]
    assert "campus1000" in cdk["stages"]
    assert "campus1000" not in cdk["pipeline"]["stages"]


def test_synth_refuses_a_profile_that_cannot_carry_its_rate(tmp_path: Path) -> None:
    service = _service(campus1000={"kafka": {"partitions": 12}})
    with pytest.raises(
        ValueError, match=r"^campus1000: kafka.partitions=12 cannot carry .*needs at least 40"
    ):
        _synth(tmp_path, "campus1000", service)


def test_synth_entry_point_says_why_in_one_line(tmp_path: Path) -> None:
    # What `make synth` runs (cdk.json "app"), with the context the CLI passes in CDK_CONTEXT_JSON.
    context_file = tmp_path / "undersized.json"
    dev_at_20 = {"capacity": {"orders_per_second": 20}, "database": {"instance_type": "t4g.micro"}}
    context_file.write_text(json.dumps({"stages": {"dev": dev_at_20}}))
    env = {
        **os.environ,
        "CDK_OUTDIR": str(tmp_path / "cdk.out"),
        "CDK_CONTEXT_JSON": json.dumps({"stage": "dev", "context_file": str(context_file)}),
    }
    run = subprocess.run(
        [sys.executable, "-m", "infra.app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr  # jsii may print a Node.js banner before it: the last line
    assert run.stderr.strip().splitlines()[-1] == (
        "synth: error: dev: database.instance_type=t4g.micro cannot carry capacity.orders_per_second=20 "
        "(needs 95 sessions through the proxy and 0.23 vCPU of PostgreSQL; it has 73 and 2); "
        "raise it, or remove it to derive t4g.small"
    )
