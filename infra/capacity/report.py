"""``make capacity``: the plan for a target rate, or for a stage, and the pre-deploy checklist.

python -m infra.capacity                 # every stage in cdk.json, one line each
python -m infra.capacity --rate 500      # the campus1000 profile's settings at 500 orders/s
python -m infra.capacity --stage prod    # prod's plan (its own rate), with the checklist
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from infra.capacity import published as pub
from infra.capacity.api_limits import WAF_MAX_LIMIT, WAF_MIN_LIMIT
from infra.capacity.cost import REGION, monthly_cost
from infra.capacity.sizing import Item, Sizing, size
from infra.config import CONTEXT_KEY, StageConfig, load, merge

ROOT = Path(__file__).resolve().parents[2]
RATE_PROFILE = "campus1000"  # --rate plans this profile's settings at another rate


def stage_config(stage: str, rate: float | None = None, context: dict[str, Any] | None = None) -> StageConfig:
    """A stage of cdk.json (or of ``context``), optionally at another rate."""
    service = context or json.loads((ROOT / "cdk.json").read_text())["context"][CONTEXT_KEY]
    if rate is not None:
        service = merge(service, {"stages": {stage: {"capacity": {"orders_per_second": rate}}}})
    return load(service).stage(stage)


def render(config: StageConfig, plan: Sizing) -> str:
    lim = plan.api
    out = [
        f"Capacity plan: {config.name} at {plan.rate:g} orders/s ({plan.commands_per_s:g} commands/s), "
        f"{'production' if config.production else 'non-production'}, {REGION}",
        "",
        "Kafka and the authorize function",
    ]
    out += _item("partitions per topic", plan.partitions)
    out += _item("pollers, minimum", plan.min_pollers)
    out += _item("pollers, maximum", plan.max_pollers)
    out += _item("batch size", plan.batch)
    out += _item("batching window, s", plan.batching_window_s)
    out += _item("authorize concurrency", plan.authorize_concurrency)
    out.append(f"  reserved in the template: {_reserved(plan.authorize_reserved)}")
    out += ["", "Database"]
    out += _item(
        "instance class", Item(f"db.{plan.database.value.name}", plan.database.formula, plan.database.limit)
    )
    out += _item("max_connections", plan.max_connections)
    out += _item("RDS Proxy MaxConnectionsPercent", plan.proxy_max_connections_percent)
    out += _item("RDS Proxy ConnectionBorrowTimeout, s", plan.proxy_borrow_timeout_s)
    out += ["", "API and WAF (api_limits.py: 4 webhooks, 4 saga calls per order, x 3 headroom, 2 s bursts)"]
    out += [
        f"  webhook route throttle ....... {lim.webhook_rate}/s, burst {lim.webhook_burst}",
        f"  saga API stage throttle ...... {lim.saga_rate}/s, burst {lim.saga_burst}",
        f"  WAF per source IP ............ {lim.waf_rate_per_ip} per 5 min (Stripe's addresses exempt; "
        f"WAF: {WAF_MIN_LIMIT} to {WAF_MAX_LIMIT:,})",
        f"  API function concurrency ..... {lim.api_concurrency} (saga rate x 0.1 s); reserved: "
        f"{_reserved(lim.api_reserved_concurrency)}; DB sessions budget {lim.api_db_connections}",
        f"  stage throttles together ..... {lim.webhook_rate + lim.saga_rate}/s of API Gateway's "
        f"{pub.APIGW_ACCOUNT_RPS:,}/s per account and region",
    ]
    out += ["", "Stripe rate limits to request (live mode)"]
    out += _item("writes per second", plan.stripe_writes)
    out += _item("reads per second", plan.stripe_reads)
    out += _item("per endpoint, per second", plan.stripe_endpoint)
    out += _item("what the containers can send", plan.stripe_ceiling)
    lines = monthly_cost(config, plan)
    out += ["", f"Monthly cost estimate, USD ({REGION} list prices: infra/capacity/cost.py)"]
    for line in lines:
        out.append(f"  {line.item:.<34} {line.usd:>10,.0f}   {line.formula}")
    out.append(f"  {'total':.<34} {sum(line.usd for line in lines):>10,.0f}")
    out += ["", *checklist(config, plan)]
    return "\n".join(out)


def checklist(config: StageConfig, plan: Sizing) -> list[str]:
    """What synth cannot see: check each in the account (and at Stripe) before deploying."""
    lim, p = plan.api, plan.partitions.value
    unreserved_peak = (
        (0 if plan.authorize_reserved else p)
        + (0 if lim.api_reserved_concurrency else lim.api_concurrency)
        + plan.sessions.webhook
        + plan.sessions.relay
        + plan.sessions.audit
    )
    quota = max(plan.reserved_total + pub.LAMBDA_UNRESERVED_MINIMUM, plan.reserved_total + unreserved_peak)
    items = [
        f"Lambda concurrency quota >= {quota} (reserved {plan.reserved_total} + the larger of Lambda's "
        f"{pub.LAMBDA_UNRESERVED_MINIMUM} unreserved and the other functions' peak {unreserved_peak}): "
        "aws service-quotas get-service-quota --service-code lambda --quota-code L-B99A9384",
        f"Stripe has granted >= {plan.stripe_writes.value} writes/s, {plan.stripe_reads.value} reads/s and "
        f"{plan.stripe_endpoint.value}/s per endpoint in live mode (defaults {pub.STRIPE_LIVE_WRITES_PER_S}, "
        f"{pub.STRIPE_LIVE_READS_PER_S}, {pub.STRIPE_ENDPOINT_PER_S}; ask Stripe Support "
        f"{pub.STRIPE_INCREASE_LEAD_WEEKS} weeks ahead), and >= {plan.stripe_ceiling.value}/s or accept 429s",
        f"MSK: the cluster allows {3 * p} more partitions than the other stages' topics use "
        f"(Serverless: {pub.MSK_SERVERLESS_PARTITIONS:,} per cluster on the current quota page, "
        f"{pub.MSK_SERVERLESS_PARTITIONS_ARCHIVED} on the archived one; check Service Quotas)",
        f"Topics already at kafka.partitions={p} or fewer: growing remaps keys, so drain first "
        "(pause the mapping, wait for zero offset lag, deploy, resume); a lower setting never shrinks them",
        f"RDS: SHOW max_connections on the instance >= {plan.max_connections.value} "
        "(the default parameter group's formula; a custom group may set less)",
        f"API Gateway account throttle >= {lim.webhook_rate + lim.saga_rate}/s with every other API "
        f"in the account and region (default {pub.APIGW_ACCOUNT_RPS:,}/s): Service Quotas, API Gateway",
        "api.stripe_webhook_ips matches https://docs.stripe.com/ips#webhook-notifications",
    ]
    if "SHORT" in plan.stripe_ceiling.formula:
        items.append(f"Stripe calls: the containers can send {plan.stripe_ceiling.formula}")
    if not config.capacity.reserve_concurrency:
        items.append(
            "capacity.reserve_concurrency is off: nothing bounds the API's database sessions; "
            "turn it on once the Lambda quota above is confirmed"
        )
    return ["Pre-deploy checklist (synth cannot see these)", *(f"  [ ] {i}" for i in items)]


def summary(config: StageConfig, plan: Sizing) -> str:
    total = sum(line.usd for line in monthly_cost(config, plan))
    return (
        f"{config.name:<11} {plan.rate:>5g} orders/s: {plan.partitions.value} partitions, pollers "
        f"{plan.min_pollers.value}-{plan.max_pollers.value}, authorize concurrency "
        f"{plan.authorize_concurrency.value} (reserved: {plan.authorize_reserved or 'no'}), "
        f"db.{plan.database.value.name}, webhook {plan.api.webhook_rate}/s, saga {plan.api.saga_rate}/s, "
        f"WAF {plan.api.waf_rate_per_ip}/5 min, Stripe {plan.stripe_writes.value} writes/s, ~${total:,.0f}/month"
    )


def _item(name: str, item: Item[Any]) -> list[str]:
    lines = [f"  {name + ' ':.<30} {item.value}", f"      = {item.formula}"]
    return [*lines, f"      limit: {item.limit}"] if item.limit else lines


def _reserved(value: int | None) -> str:
    if value is not None:
        return str(value)
    return "none (capacity.reserve_concurrency is off)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.capacity", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, help="orders per second to plan for")
    parser.add_argument("--stage", help=f"the stage to plan (default with --rate: {RATE_PROFILE})")
    args = parser.parse_args(argv)
    try:
        if args.rate is None and args.stage is None:
            service = json.loads((ROOT / "cdk.json").read_text())["context"][CONTEXT_KEY]
            for name in service["stages"]:
                config = stage_config(name, context=service)
                print(summary(config, size(config)))
            return 0
        if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
            raise ValueError(f"RATE must be a positive number of orders per second, got {args.rate:g}")
        config = stage_config(args.stage or RATE_PROFILE, args.rate)
        print(render(config, size(config)))
    except ValueError as error:
        print(f"capacity: error: {error}", file=sys.stderr)
        return 2
    return 0
