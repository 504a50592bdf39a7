"""Issue 19, the API's limits: derived from each stage's capacity.orders_per_second
(infra/capacity/) unless set, refused when set too low; Stripe's webhook addresses exempt from
the per-IP WAF rule; the API function's reservation bounded by its database connections."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra import capacity
from infra.app import ROOT
from infra.config import CONTEXT_KEY, StageConfig, load, merge
from tests.infra.conftest import resources, stand_in_context, synth_dev

pytestmark = pytest.mark.infra

API_DESCRIPTION = "the saga's payment queries, release and revert"
# dev at 20 orders/s instead of 5, without the history route: the webhook's rule alone.
FASTER = {
    "stages": {"dev": {"capacity": {"orders_per_second": 20}}},
    "defaults": {"api": {"clerk_issuer": None}},
}


def apis(raw: dict[str, Any]) -> tuple[str, str]:
    """The logical ids of the public (regional) and the saga's (private) REST APIs."""
    found = {
        v["Properties"]["EndpointConfiguration"]["Types"][0]: k
        for k, v in resources(raw, "AWS::ApiGateway::RestApi").items()
    }
    return found["REGIONAL"], found["PRIVATE"]


def _stage(name: str = "dev", **overrides: Any) -> StageConfig:
    context = stand_in_context()[CONTEXT_KEY]
    context["stages"][name] = merge(context["stages"][name], overrides)
    return load(context).stage(name)


def _throttles(raw: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(rate, burst) of the saga API's stage, the public API's stage and the webhook route."""
    public, private = apis(raw)
    found = {}
    for stage in resources(raw, "AWS::ApiGateway::Stage").values():
        props = stage["Properties"]
        for m in props["MethodSettings"]:
            key = {"/*": "stage", "/~1api~1stripe-webhook": "webhook"}.get(m["ResourcePath"])
            if key:
                api = "public" if props["RestApiId"] == {"Ref": public} else "saga"
                assert props["RestApiId"] == {"Ref": public if api == "public" else private}
                found[f"{api} {key}"] = (m["ThrottlingRateLimit"], m["ThrottlingBurstLimit"])
    return found


def _rate_rule(raw: dict[str, Any]) -> dict[str, Any]:
    (acl,) = resources(raw, "AWS::WAFv2::WebACL").values()
    (rule,) = [r for r in acl["Properties"]["Rules"] if r["Name"] == "RatePerIp"]
    return dict(rule["Statement"]["RateBasedStatement"])


@pytest.fixture(scope="module")
def faster(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return synth_dev(tmp_path_factory.mktemp("cdk-faster"), FASTER)


def test_throttles_follow_the_rate(dev_raw: dict[str, Any], faster: dict[str, Any]) -> None:
    # 4 webhooks or 4 saga calls per order, x 3 headroom; burst 2 s of the rate
    assert _throttles(dev_raw) == {
        "public stage": (60, 120),
        "saga stage": (60, 120),
        "public webhook": (60, 120),
    }
    assert _throttles(faster) == {
        "public stage": (240, 480),
        "saga stage": (240, 480),
        "public webhook": (240, 480),
    }
    assert _rate_rule(dev_raw)["Limit"] == 1200  # 60/s x 300 s / 15 Stripe addresses
    assert _rate_rule(faster)["Limit"] == 4800


def test_each_stage_has_its_rate_in_cdk_json() -> None:
    context = json.loads((ROOT / "cdk.json").read_text())["context"][CONTEXT_KEY]
    stages = load(context).stages
    assert {n: s.capacity.orders_per_second for n, s in stages.items()} == {
        "dev": 5,
        "staging": 20,
        "prod": 50,
        "campus1000": 500,  # synthesizes, never deployed by the pipeline (test_capacity_profiles.py)
    }
    assert [capacity.limits(stages[n]).webhook_rate for n in ("dev", "staging", "prod", "campus1000")] == [
        60,
        240,
        600,
        6000,
    ]


def test_stripe_addresses_are_exempt_from_the_per_ip_rule(faster: dict[str, Any]) -> None:
    configured = json.loads((ROOT / "cdk.json").read_text())["context"][CONTEXT_KEY]["defaults"]["api"][
        "stripe_webhook_ips"
    ]
    assert len(configured) >= 12
    ((name, ip_set),) = resources(faster, "AWS::WAFv2::IPSet").items()
    assert ip_set["Properties"]["Scope"] == "REGIONAL"
    assert sorted(ip_set["Properties"]["Addresses"]) == sorted(f"{ip}/32" for ip in configured)
    assert _rate_rule(faster)["ScopeDownStatement"] == {
        "NotStatement": {"Statement": {"IPSetReferenceStatement": {"Arn": {"Fn::GetAtt": [name, "Arn"]}}}}
    }


def test_without_a_list_nobody_is_exempt() -> None:
    stage = _stage(api={"stripe_webhook_ips": []})
    assert not stage.api.stripe_webhook_ips
    # one address may then carry the whole route: 60/s x 300 s
    assert capacity.limits(stage).waf_rate_per_ip == 18000


def test_an_explicit_limit_wins_when_it_carries_the_rate() -> None:
    limits = capacity.limits(_stage(api={"webhook_throttle_rate_limit": 25, "throttle_burst_limit": 20}))
    assert (limits.webhook_rate, limits.webhook_burst) == (25, 50)
    assert (limits.saga_rate, limits.saga_burst) == (60, 20)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api": {"webhook_throttle_rate_limit": 19}}, r"api.webhook_throttle_rate_limit=19 cannot carry"),
        ({"api": {"webhook_throttle_burst_limit": 19}}, r"api.webhook_throttle_burst_limit=19 cannot carry"),
        ({"api": {"throttle_rate_limit": 19}}, r"api.throttle_rate_limit=19 cannot carry"),
        ({"api": {"throttle_burst_limit": 19}}, r"api.throttle_burst_limit=19 cannot carry"),
        ({"api": {"waf_rate_limit": 399}}, r"api.waf_rate_limit=399 cannot carry"),  # 20/s x 300 / 15
        ({"functions": {"api_reserved_concurrency": 1}}, r"api_reserved_concurrency=1 cannot carry"),
        ({"functions": {"api_reserved_concurrency": 21}}, r"above capacity.api_db_connections=20"),
        ({"capacity": {"orders_per_second": 0}}, r"orders_per_second must be positive"),
    ],
)
def test_under_sized_limits_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        capacity.limits(_stage(**overrides))
    # just enough passes: the refusal is about the number, not the setting being there
    if "cannot carry" in message:
        section, values = next(iter(overrides.items()))
        ((key, value),) = values.items()
        capacity.limits(_stage(**{section: {key: value + 1}}))


def test_synth_refuses_an_under_sized_stage(tmp_path_factory: pytest.TempPathFactory) -> None:
    prod_rate = {
        "stages": {"dev": {"capacity": {"orders_per_second": 50}, "api": {"webhook_throttle_rate_limit": 20}}}
    }
    with pytest.raises(ValueError, match=r"^dev: api.webhook_throttle_rate_limit=20 cannot carry"):
        synth_dev(tmp_path_factory.mktemp("cdk-undersized"), prod_rate)


def _api_function(raw: dict[str, Any]) -> dict[str, Any]:
    (fn,) = [
        v
        for v in resources(raw, "AWS::Lambda::Function").values()
        if v["Properties"].get("Description") == API_DESCRIPTION
    ]
    return fn


def test_api_function_not_reserved_by_default(dev_raw: dict[str, Any]) -> None:
    # off by default (capacity.reserve_concurrency: a low quota cannot reserve): acknowledged to checkov
    fn = _api_function(dev_raw)
    assert "ReservedConcurrentExecutions" not in fn["Properties"]
    assert "CKV_AWS_115" in [s["id"] for s in fn["Metadata"]["checkov"]["skip"]]


def test_api_function_reservation(tmp_path_factory: pytest.TempPathFactory) -> None:
    stage = _stage(functions={"api_reserved_concurrency": 6})
    assert capacity.limits(stage).api_concurrency == 6  # 60 calls/s x 0.1 s
    raw = synth_dev(
        tmp_path_factory.mktemp("cdk-api-reserved"),
        {"defaults": {"functions": {"api_reserved_concurrency": 6}}},
    )
    fn = _api_function(raw)
    assert fn["Properties"]["ReservedConcurrentExecutions"] == 6
    assert "CKV_AWS_115" not in [s["id"] for s in fn["Metadata"]["checkov"]["skip"]]


AUTHORIZE_DESCRIPTION = "payment_commands consumer: authorize, release, revert"


def _authorize_env(raw: dict[str, Any]) -> dict[str, str]:
    (fn,) = [
        f
        for f in resources(raw, "AWS::Lambda::Function").values()
        if f["Properties"].get("Description", "").startswith(AUTHORIZE_DESCRIPTION)
    ]
    return dict(fn["Properties"]["Environment"]["Variables"])


def test_the_command_function_may_send_stripe_what_its_rate_needs(tmp_path_factory: Any) -> None:
    """The command function paces its Stripe requests to STRIPE_ACCOUNT_REQUESTS_PER_SECOND
    (80/s when unset): at 50 orders/s a release alone needs 150 writes/s, so an unset budget
    would cap the stage near 26 orders/s. The budget is what the plan asks Stripe to grant,
    unless the stage sets what Stripe granted."""
    rate = 50
    raw = synth_dev(
        tmp_path_factory.mktemp("cdk-budget"), {"stages": {"dev": {"capacity": {"orders_per_second": rate}}}}
    )
    plan = capacity.plan(_stage("dev", capacity={"orders_per_second": rate}))
    budget = float(_authorize_env(raw)["STRIPE_ACCOUNT_REQUESTS_PER_SECOND"])
    assert budget == plan.stripe_writes.value >= 3 * rate
    granted = synth_dev(
        tmp_path_factory.mktemp("cdk-granted"),
        {
            "stages": {
                "dev": {
                    "capacity": {"orders_per_second": rate},
                    "functions": {"stripe_account_requests_per_second": 400},
                }
            }
        },
    )
    assert float(_authorize_env(granted)["STRIPE_ACCOUNT_REQUESTS_PER_SECOND"]) == 400


def test_a_stripe_budget_below_the_rate_fails_with_one_line() -> None:
    with pytest.raises(
        ValueError, match=r"functions.stripe_account_requests_per_second=100.*needs at least 150"
    ):
        capacity.plan(
            _stage(
                "dev",
                capacity={"orders_per_second": 50},
                functions={"stripe_account_requests_per_second": 100},
            )
        )
    with pytest.raises(ValueError, match="must be above 0"):
        capacity.plan(_stage("dev", functions={"stripe_account_requests_per_second": 0}))


def test_the_connection_budget_counts_the_reconcilers_workers() -> None:
    """A reconciler run holds its own connection and one per worker (RECONCILE_WORKERS, not set
    by the stack: its default), beside the retention job's one."""
    from payments_core.config import Settings

    workers = Settings.__dataclass_fields__["reconcile_workers"].default
    assert isinstance(workers, int) and workers >= 1
    assert capacity.plan(_stage("dev")).sessions.audit == 1 + workers + 1
