"""The API's limits, derived from the rate a stage is sized for (``capacity.orders_per_second``).

Each order, end to end, costs (the assumptions; change them here and every limit follows):

- **2-4 Stripe webhooks** (payment_intent.created, amount_capturable_updated or requires_action,
  succeeded or canceled, a charge event): sized at the upper end, ``WEBHOOKS_PER_ORDER`` = 4.
- **an authorize**: arrives on Kafka (payment_commands), not through an API, so it counts in
  no API limit (its database sessions are bounded by the partitions, docs/benchmarks.md "Throughput").
- **a release or a revert, and a few reads** (status polls, details) on the saga's private API:
  ``SAGA_CALLS_PER_ORDER`` = 1 + 3 = 4.

Then, per limit (ceil everywhere; ``r`` = orders per second):

- route or stage rate  = per-order calls x r x ``HEADROOM`` (3: a day's peak hour and the
  backlog after an outage or a deploy on top of the target, without anyone re-tuning);
- burst                = ``BURST_SECONDS`` (2) x that rate: Stripe sends an order's events
  together and retries failed deliveries in waves; the saga fans out a batch of completions;
- WAF per-IP limit     = webhook route rate x 300 s / number of listed Stripe addresses
  (at least ``WAF_MIN_LIMIT``): the listed addresses are exempt from it, so it binds everyone
  else, who may use at most one address's even share of the route; and an address Stripe adds
  before the list is updated can still carry that share (docs/sizing-and-costs.md, "Stripe's webhook addresses");
- API function concurrency to reserve = saga rate x ``API_SECONDS_PER_REQUEST`` (Little's
  law), and at most ``capacity.api_db_connections``: each concurrent API container holds one
  session to the RDS Proxy, so the reservation is what bounds the API's database connections.

A stage may set any limit explicitly in ``api.*`` (or the reservation in
``functions.api_reserved_concurrency``); an explicit limit below what the rate needs without
headroom (calls per order x r, for a 5-minute window at WAF) cannot carry the rate and fails
the synth, as does a reservation above the connection budget. With
``capacity.reserve_concurrency`` the reservation is derived when not set;
``capacity.api_db_connections`` is derived (the concurrency to reserve) when not set.
``python -m infra.capacity`` prints every stage's plan (docs/sizing-and-costs.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.config import StageConfig

WEBHOOKS_PER_ORDER = 4
SAGA_CALLS_PER_ORDER = 4
HEADROOM = 3
BURST_SECONDS = 2
WAF_WINDOW_SECONDS = 300  # WAF counts a rate-based rule's requests over 5 minutes
WAF_MIN_LIMIT = 100
WAF_MAX_LIMIT = 2_000_000_000
# Mean duration of a saga API call: a read is one or two statements through the RDS Proxy, a
# release or revert one statement and one Kafka send. An estimate, not yet measured in AWS.
API_SECONDS_PER_REQUEST = 0.1


@dataclass(frozen=True)
class Limits:
    webhook_rate: int
    webhook_burst: int
    saga_rate: int  # the saga API's stage throttle (also the public API stage's default)
    saga_burst: int
    waf_rate_per_ip: int  # per source IP and 5 minutes, Stripe's listed addresses exempt
    api_concurrency: int  # what the API function needs at saga_rate (the reservation to set)
    api_reserved_concurrency: int | None  # checked or derived (capacity.reserve_concurrency); None: none
    api_db_connections: int  # the API's share of database sessions: set, or derived (= api_concurrency)


def limits(config: StageConfig) -> Limits:
    """The stage's API limits: derived from its rate unless set, and refused (ValueError) when
    set too low to carry the rate."""
    rate = config.capacity.orders_per_second
    if rate <= 0:
        raise ValueError(f"{config.name}: capacity.orders_per_second must be positive, got {rate}")
    api = config.api
    webhooks = WEBHOOKS_PER_ORDER * rate  # per second, no headroom
    saga = SAGA_CALLS_PER_ORDER * rate

    def pick(name: str, explicit: int | None, derived: int, needed: float, why: str) -> int:
        if explicit is None:
            return derived
        if explicit < math.ceil(needed):
            raise ValueError(
                f"{config.name}: {name}={explicit} cannot carry capacity.orders_per_second={rate} "
                f"(needs at least {math.ceil(needed)}: {why}); raise it, or remove it to derive {derived}"
            )
        return explicit

    webhook_why = f"{WEBHOOKS_PER_ORDER} webhooks per order"
    saga_why = f"{SAGA_CALLS_PER_ORDER} saga calls per order"
    webhook_rate = pick(
        "api.webhook_throttle_rate_limit", api.webhook_throttle_rate_limit,
        _ceil(webhooks * HEADROOM), webhooks, f"{webhook_why}/s",
    )  # fmt: skip
    webhook_burst = pick(
        "api.webhook_throttle_burst_limit", api.webhook_throttle_burst_limit,
        BURST_SECONDS * webhook_rate, webhooks, f"one second of {webhook_why}",
    )  # fmt: skip
    saga_rate = pick(
        "api.throttle_rate_limit", api.throttle_rate_limit, _ceil(saga * HEADROOM), saga, f"{saga_why}/s"
    )
    saga_burst = pick(
        "api.throttle_burst_limit", api.throttle_burst_limit,
        BURST_SECONDS * saga_rate, saga, f"one second of {saga_why}",
    )  # fmt: skip
    addresses = max(1, len(api.stripe_webhook_ips))
    waf = pick(
        "api.waf_rate_limit", api.waf_rate_limit,
        max(WAF_MIN_LIMIT, _ceil(webhook_rate * WAF_WINDOW_SECONDS / addresses)),
        webhooks * WAF_WINDOW_SECONDS / addresses,
        f"one of {addresses} Stripe address(es)' share of {webhook_why} over 5 minutes",
    )  # fmt: skip
    if waf > WAF_MAX_LIMIT:
        raise ValueError(f"{config.name}: api.waf_rate_limit {waf} is above WAF's maximum {WAF_MAX_LIMIT}")

    need = _ceil(saga_rate * API_SECONDS_PER_REQUEST)
    floor = _ceil(saga * API_SECONDS_PER_REQUEST)
    budget = config.capacity.api_db_connections
    if budget is None:
        budget = need  # derived: the database is sized for it (sizing.py)
    elif budget < floor:
        raise ValueError(
            f"{config.name}: capacity.api_db_connections={budget} cannot carry "
            f"capacity.orders_per_second={rate} (needs at least {floor}: {saga_why} x "
            f"{API_SECONDS_PER_REQUEST} s each); raise it, or remove it to derive {need}"
        )
    reserved = config.functions.api_reserved_concurrency
    if reserved is None and config.capacity.reserve_concurrency:
        reserved = min(need, budget)
    elif reserved is not None:
        if reserved < floor:
            raise ValueError(
                f"{config.name}: functions.api_reserved_concurrency={reserved} cannot carry "
                f"capacity.orders_per_second={rate} (needs at least {floor}: {saga_why} x "
                f"{API_SECONDS_PER_REQUEST} s each); set {min(need, budget)} or null"
            )
        if reserved > budget:
            raise ValueError(
                f"{config.name}: functions.api_reserved_concurrency={reserved} is above "
                f"capacity.api_db_connections={budget}, the API's share of database connections"
            )
    return Limits(webhook_rate, webhook_burst, saga_rate, saga_burst, waf, need, reserved, budget)


def _ceil(value: float) -> int:
    # round first: 4 x 0.3 x 3 is 3.5999999999999996 in floating point, and must stay 4, not 3
    return math.ceil(round(value, 9))
