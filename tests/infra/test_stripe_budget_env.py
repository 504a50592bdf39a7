"""Issue 19: the authorize function's containers share the account's Stripe budget evenly, so
each is told how many of them can run at once (STRIPE_BUDGET_CONTAINERS): one per partition
(a reservation below the partitions is refused by the capacity model)."""

from __future__ import annotations

from typing import Any

import pytest

from infra.capacity import plan
from infra.config import CONTEXT_KEY, load
from tests.infra.conftest import Synth, resources, stand_in_context, synth_dev

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
    # the partitions each stage's rate needs (infra/capacity/sizing.py)
    stages = load(stand_in_context()[CONTEXT_KEY])
    for stage, raw in (
        ("dev", dev_raw),
        ("staging", synth.nested("Staging")),
        ("prod", synth.nested("Production")),
    ):
        partitions = plan(stages.stage(stage)).partitions.value
        assert _authorize_env(raw)["STRIPE_BUDGET_CONTAINERS"] == str(partitions), stage
    assert plan(stages.stage("prod")).partitions.value == 4, "50 orders/s need more than the 3 of dev"


def test_more_partitions_mean_a_smaller_share_each(tmp_path_factory: pytest.TempPathFactory) -> None:
    more = synth_dev(tmp_path_factory.mktemp("cdk-budget-12"), {"defaults": {"kafka": {"partitions": 12}}})
    assert _authorize_env(more)["STRIPE_BUDGET_CONTAINERS"] == "12"
