"""Issue 19, the capacity model (infra/capacity/): each formula against the published limit it
cites, the refusals of settings that cannot carry their stage's rate, the cost's arithmetic and
`make capacity`'s output and checklist. No synth here (tests/infra/test_capacity_profiles.py)."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from infra.capacity import plan
from infra.capacity import published as pub
from infra.capacity.cost import HOURS_PER_MONTH, MSK_CLUSTER_HOUR_USD, monthly_cost
from infra.capacity.database import PG_CPU_S_PER_COMMAND, PG_CPU_TARGET
from infra.capacity.report import ROOT, main, stage_config
from infra.capacity.sizing import (
    COMMANDS_PER_ORDER,
    COMMANDS_PER_PARTITION_S,
    STRIPE_READS_PER_ORDER,
    STRIPE_WRITES_PER_ORDER,
    TOPICS,
)
from infra.config import CONTEXT_KEY, StageConfig, merge

STAGES = ("dev", "staging", "prod", "campus1000")


def _service() -> dict[str, Any]:
    return copy.deepcopy(json.loads((ROOT / "cdk.json").read_text())["context"][CONTEXT_KEY])


def _stage(name: str = "dev", rate: float | None = None, **overrides: Any) -> StageConfig:
    service = _service()
    service["stages"][name] = merge(service["stages"][name], overrides)
    return stage_config(name, rate, context=service)


@pytest.mark.parametrize("name", STAGES)
def test_kafka_and_lambda_within_published_limits(name: str) -> None:
    config = _stage(name)
    sized = plan(config)
    r, p = config.capacity.orders_per_second, sized.partitions.value
    # a partition carries 25 commands/s (measured); 3 at least
    assert p == max(3, math.ceil(COMMANDS_PER_ORDER * r / COMMANDS_PER_PARTITION_S))
    assert p * COMMANDS_PER_PARTITION_S >= COMMANDS_PER_ORDER * r
    assert TOPICS * p <= pub.MSK_SERVERLESS_PARTITIONS
    assert COMMANDS_PER_ORDER * r / p * 2 / 1024 <= pub.MSK_PARTITION_INGRESS_MB_S
    # one invocation per partition, five per poller: every partition can be invoked at once
    assert sized.max_pollers.value * pub.INVOCATIONS_PER_POLLER >= p
    assert pub.MIN_POLLERS_RANGE[0] <= sized.min_pollers.value <= pub.MIN_POLLERS_RANGE[1]
    assert sized.min_pollers.value <= sized.max_pollers.value <= pub.MAX_POLLERS_RANGE[1]
    assert sized.authorize_concurrency.value == p * pub.INVOCATIONS_PER_PARTITION
    assert sized.batch.value <= pub.ESM_MAX_BATCH_SIZE
    # what this stack reserves leaves Lambda's 100 unreserved within the default 1,000
    assert sized.reserved_total + pub.LAMBDA_UNRESERVED_MINIMUM <= pub.LAMBDA_CONCURRENCY_DEFAULT


def test_partitions_pollers_and_concurrency_follow_the_rate() -> None:
    got = {n: plan(_stage(n)) for n in STAGES}
    assert {n: s.partitions.value for n, s in got.items()} == {
        "dev": 3,
        "staging": 3,
        "prod": 4,  # 100 commands/s over 25 a partition
        "campus1000": 40,
    }
    assert {n: (s.min_pollers.value, s.max_pollers.value) for n, s in got.items()} == {
        "dev": (1, 2),
        "staging": (1, 2),
        "prod": (1, 5),  # max set in cdk.json, above the 1 needed
        "campus1000": (8, 16),
    }
    # reserved only where capacity.reserve_concurrency is on: the partitions, and the API's need
    assert {n: s.authorize_reserved for n, s in got.items()} == {
        "dev": None,
        "staging": None,
        "prod": None,
        "campus1000": 40,
    }
    assert got["campus1000"].api.api_reserved_concurrency == 600  # 6,000 saga calls/s x 0.1 s


def test_database_class_holds_every_session_and_the_cpu() -> None:
    for name in STAGES:
        config = _stage(name)
        sized = plan(config)
        cls, s = sized.database.value, sized.sessions
        proxy = cls.max_connections * sized.proxy_max_connections_percent.value // 100
        assert s.through_proxy <= proxy, name
        assert cls.vcpus * PG_CPU_TARGET >= sized.commands_per_s * PG_CPU_S_PER_COMMAND
        # the room left outside the proxy holds the migration, two rotations and the superuser reserve
        assert cls.max_connections - proxy >= 3 + pub.PG_SUPERUSER_RESERVED
        # and it is the cheapest that does: every cheaper class falls short of one or the other
        cpu = sized.commands_per_s * PG_CPU_S_PER_COMMAND / PG_CPU_TARGET
        for cheaper in pub.INSTANCE_CLASSES[: pub.INSTANCE_CLASSES.index(cls)]:
            room = cheaper.max_connections - 3 - 5 - pub.PG_SUPERUSER_RESERVED  # direct, operators
            assert room < s.through_proxy or cheaper.vcpus < cpu, (name, cheaper.name)
    assert [plan(_stage(n)).database.value.name for n in STAGES] == [
        "t4g.micro",
        "t4g.small",
        "t4g.small",
        "m7g.2xlarge",
    ]


@pytest.mark.parametrize(
    ("memory_gib", "published"),
    # max_connections RDS reports with the default LEAST({DBInstanceClassMemory/9531392}, 5000)
    [(2, 198), (4, 413), (8, 856), (15.25, 1660)],
)
def test_max_connections_formula_against_published_figures(memory_gib: float, published: int) -> None:
    assert pub.InstanceClass("x", 2, memory_gib, 0).max_connections == pytest.approx(published, rel=0.015)


def test_max_connections_capped_at_5000() -> None:
    assert pub.instance_class("m7g.8xlarge").max_connections == pub.PG_MAX_CONNECTIONS_CAP


def test_stripe_requests_cover_calls_per_order_times_rate() -> None:
    for name in STAGES:
        config = _stage(name)
        sized, r = plan(config), config.capacity.orders_per_second
        assert sized.stripe_writes.value >= STRIPE_WRITES_PER_ORDER * r
        assert sized.stripe_reads.value >= STRIPE_READS_PER_ORDER * r + 10
        assert sized.stripe_endpoint.value >= r
        # never below Stripe's live defaults: nothing to ask below them
        assert sized.stripe_writes.value >= pub.STRIPE_LIVE_WRITES_PER_S
        assert sized.stripe_reads.value >= pub.STRIPE_LIVE_READS_PER_S
        assert sized.stripe_endpoint.value >= pub.STRIPE_ENDPOINT_PER_S
    assert plan(_stage("prod")).stripe_writes.value == 250  # 150/s x 1.5, above the default 100
    campus = plan(_stage("campus1000"))
    assert (campus.stripe_writes.value, campus.stripe_reads.value, campus.stripe_endpoint.value) == (
        2250,
        100,  # no read per released order on a first attempt: the audit's 10/s, under the default
        750,
    )
    # its containers (40 x 32 in flight at 0.4 s) can send what the rate needs
    assert campus.stripe_ceiling.value >= 5 * 500 + 10
    assert "SHORT" not in campus.stripe_ceiling.formula
    # so can prod's (4 x 16 at 0.4 s for 3 x 50 + 10)
    assert "SHORT" not in plan(_stage("prod")).stripe_ceiling.formula
    # staging's 3 in flight (Stripe's test mode: 25/s) cannot: said, not refused (it caps on purpose)
    assert "SHORT of 70/s" in plan(_stage("staging")).stripe_ceiling.formula


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kafka": {"partitions": 3}}, r"^prod: kafka.partitions=3 cannot carry .*needs at least 4"),
        ({"kafka": {"max_pollers": 0}}, r"kafka.max_pollers=0 cannot carry"),
        ({"kafka": {"min_pollers": 0}}, r"kafka.min_pollers must be >= 1"),
        ({"kafka": {"min_pollers": 6}}, r"kafka.min_pollers=6 must be 1 to 200 and at most max_pollers=5"),
        (
            {"functions": {"authorize_reserved_concurrency": 3}},
            r"authorize_reserved_concurrency=3 cannot carry",
        ),
        (
            {"database": {"instance_type": "t4g.micro"}},
            r"instance_type=t4g.micro cannot carry.*derive t4g.small",
        ),
        ({"database": {"instance_type": "db.r5.large"}}, r"not in the capacity model's classes"),
        ({"kafka": {"batch_size": 400}}, r"kafka.batch_size=400 takes 65 s"),
        ({"capacity": {"api_db_connections": 19}}, r"api_db_connections=19 cannot carry"),
    ],
)
def test_settings_that_cannot_carry_the_rate_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan(_stage("prod", **overrides))


def test_explicit_settings_that_carry_the_rate_are_kept() -> None:
    sized = plan(
        _stage(
            "prod",
            kafka={"partitions": 6, "min_pollers": 2},
            functions={"authorize_reserved_concurrency": 6},
            database={"instance_type": "m7g.large"},
        )
    )
    assert (sized.partitions.value, sized.min_pollers.value, sized.authorize_reserved) == (6, 2, 6)
    assert sized.database.value.name == "m7g.large"
    assert sized.partitions.formula.startswith("set to 6")


def test_more_partitions_than_msk_serverless_allows_is_refused() -> None:
    with pytest.raises(ValueError, match=r"above MSK Serverless's 2400 partitions per cluster"):
        plan(_stage("campus1000", rate=20_000))


def test_monthly_cost_adds_up_with_its_prices() -> None:
    config = _stage("campus1000")
    lines = {line.item: line.usd for line in monthly_cost(config, plan(config))}
    assert lines["MSK Serverless"] == pytest.approx(
        HOURS_PER_MONTH * MSK_CLUSTER_HOUR_USD
        + 3 * 40 * HOURS_PER_MONTH * 0.0015
        + 25 * 0.10
        + 50 * 0.05
        + 25 * 0.10
    )
    # Multi-AZ: two copies of the instance and its storage
    assert lines["RDS db.m7g.2xlarge Multi-AZ"] == pytest.approx(2 * (0.836 * 730 + 20 * 0.138))
    assert lines["RDS Proxy"] == pytest.approx(8 * 730 * 0.018)
    assert all(usd > 0 for usd in lines.values())
    single = _stage("campus1000", database={"multi_az": False})
    assert "RDS db.m7g.2xlarge" in {line.item for line in monthly_cost(single, plan(single))}
    imported = _stage("campus1000", kafka={"cluster_arn": "arn:aws:kafka:x", "bootstrap_servers": "b:9098"})
    msk = next(line for line in monthly_cost(imported, plan(imported)) if line.item.startswith("MSK"))
    assert msk.usd < lines["MSK Serverless"] - HOURS_PER_MONTH * MSK_CLUSTER_HOUR_USD + 1


def test_make_capacity_rate_prints_every_limit_and_the_checklist(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rate", "500"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "campus1000 at 500 orders/s (1000 commands/s)",
        "partitions per topic ......... 40",
        "pollers, minimum ............. 8",
        "authorize concurrency ........ 40",
        "instance class ............... db.m7g.2xlarge",
        "RDS Proxy MaxConnectionsPercent",
        "webhook route throttle ....... 6000/s",
        "WAF per source IP ............ 120000 per 5 min",
        "writes per second ............ 2250",
        "limit: Stripe live mode: 100 writes/s by default",
        "limit: MSK Serverless: 3 x 40 = 120 of 2400 partitions per cluster",
        "Monthly cost estimate",
        "Pre-deploy checklist",
        "--quota-code L-B99A9384",
        "API Gateway account throttle >= 12000/s",
        "SHOW max_connections on the instance >= 3506",
    ):
        assert expected in out, expected


def test_make_capacity_without_arguments_prints_each_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["dev", "staging", "prod", "campus1000"]


@pytest.mark.parametrize("argv", [["--rate", "0"], ["--rate", "inf"], ["--stage", "nope"]])
def test_make_capacity_refuses_bad_input_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("capacity: error: ") and err.count("\n") == 1
