"""Issue 19: the authorize function's containers share the account's Stripe budget evenly, so
each is told how many of them can run at once (STRIPE_BUDGET_CONTAINERS): one per partition,
fewer when its reserved concurrency caps it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.conftest import Synth, resources, synth_dev

pytestmark = pytest.mark.infra

AUTHORIZE = "payment_commands consumer: authorize, release, revert"


def _authorize_env(raw: dict[str, Any]) -> dict[str, Any]:
    (props,) = [
        v["Properties"]
        for v in resources(raw, "AWS::Lambda::Function").values()
        if v["Properties"].get("Description") == AUTHORIZE
    ]
    return dict(props["Environment"]["Variables"])


def test_each_stage_tells_the_command_containers_how_many_share_the_budget(
    dev_raw: dict[str, Any], synth: Synth
) -> None:
    # cdk.json: 3 partitions everywhere, no reservation
    for raw in (dev_raw, synth.nested("Staging"), synth.nested("Production")):
        assert _authorize_env(raw)["STRIPE_BUDGET_CONTAINERS"] == "3"


def test_the_partitions_and_a_smaller_reservation_set_the_count(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    more = synth_dev(tmp_path_factory.mktemp("cdk-budget-12"), {"defaults": {"kafka": {"partitions": 12}}})
    assert _authorize_env(more)["STRIPE_BUDGET_CONTAINERS"] == "12"
    capped = synth_dev(
        tmp_path_factory.mktemp("cdk-budget-capped"),
        {"defaults": {"kafka": {"partitions": 12}, "functions": {"authorize_reserved_concurrency": 4}}},
    )
    assert _authorize_env(capped)["STRIPE_BUDGET_CONTAINERS"] == "4"
