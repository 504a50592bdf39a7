"""What a stage's rate needs behind the API: partitions, pollers, reserved concurrency, the
database class and its connection budget, the RDS Proxy's settings and the Stripe rate limits.

Per order (``r`` = orders per second; the API's own assumptions are in api_limits.py):

- **2 commands** on ``payment_commands`` (an authorize, then a release or a revert);
- a partition carries **25 commands/s** (measured: docs/benchmarks.md, "Throughput at Stripe's latency",
  pool of 16 workers, Stripe at 300 ms), so partitions = max(3, ceil(2 r / 25));
- **3 Stripe calls** for a released order on a first attempt (3 writes: create-and-confirm,
  capture, transfer; no read: lookups happen only after a recorded earlier attempt, and the
  payout account's verdict is kept ``PAYOUT_ACCOUNT_CHECK_TTL_SECONDS`` per container, so its
  reads are at most runners x containers an hour, inside the headroom), plus the audit's
  ``AUDIT_STRIPE_READS_PER_SECOND`` (10) reads;
- **3.5 CPU-seconds of PostgreSQL per 1,000 commands** (measured, issue 19), kept under 60 % of
  the class's vCPUs.

Each setting is derived unless the stage sets it; a set value that cannot carry the rate is
refused with one line naming the setting, what it needs and why (ValueError, caught by
infra/app.py). Every figure carries its formula and the published limit it respects
(published.py); report.py prints them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra.capacity import published as pub
from infra.capacity.api_limits import Limits, limits
from infra.capacity.database import (
    AUDIT_SESSIONS,
    RELAY_SESSIONS,
    WEBHOOK_SECONDS,
    Sessions,
    size_database,
)
from infra.capacity.published import Item
from infra.config import StageConfig

COMMANDS_PER_ORDER = 2
COMMANDS_PER_PARTITION_S = 25
MIN_PARTITIONS = 3
TOPICS = 3  # commands, events and the dead-letter topic, all created with kafka.partitions
RECORD_KB = 2.0  # a command or event on the wire, with headers (estimate; ~1 KB of JSON)
POLLER_SPARE = 2  # max pollers: twice what the partitions need, for a backlog's throughput
STRIPE_WRITES_PER_ORDER = 3
STRIPE_READS_PER_ORDER = 0  # see the module's docstring: lookups only after an earlier attempt
AUDIT_STRIPE_READS_PER_S = 10  # payments_core.config: AUDIT_STRIPE_READS_PER_SECOND
MAX_STRIPE_BUDGET = 10_000.0  # payments_core.config.MAX_STRIPE_REQUESTS_PER_SECOND
STRIPE_REQUEST_HEADROOM = 1.5  # ask Stripe for this much above the need: retries, bursts
STRIPE_LATENCY_S = 0.4  # a PaymentIntent create-and-confirm (docs/benchmarks.md, "Throughput")
STRIPE_P99_S = 2.0
DB_TIMEOUT_S = 5  # payments_core.config: DB_TIMEOUT_SECONDS, the functions' socket timeout


@dataclass(frozen=True)
class Sizing:
    rate: float
    commands_per_s: float
    partitions: Item[int]
    max_pollers: Item[int]
    min_pollers: Item[int]
    batch: Item[int]
    batching_window_s: Item[int]
    authorize_concurrency: Item[int]  # what to reserve
    authorize_reserved: int | None  # the reservation the template sets
    database: Item[pub.InstanceClass]
    sessions: Sessions
    max_connections: Item[int]
    proxy_max_connections_percent: Item[int]
    proxy_borrow_timeout_s: Item[int]
    stripe_writes: Item[int]  # per second, to request
    stripe_reads: Item[int]
    stripe_endpoint: Item[int]
    stripe_ceiling: Item[int]  # what the containers can send at most (formula says if short)
    api: Limits

    @property
    def reserved_total(self) -> int:
        return (self.authorize_reserved or 0) + (self.api.api_reserved_concurrency or 0)


def size(config: StageConfig) -> Sizing:
    """The stage's plan: derived unless set, refused (ValueError) when set too low."""
    api = limits(config)  # checks the rate is positive, and the API's own settings
    name, r = config.name, config.capacity.orders_per_second
    kc, fc = config.kafka, config.functions
    commands = COMMANDS_PER_ORDER * r

    def refuse(setting: str, value: object, need: object, why: str) -> ValueError:
        return ValueError(
            f"{name}: {setting}={value} cannot carry capacity.orders_per_second={r:g} "
            f"(needs at least {need}: {why}); raise it, or remove it to derive it"
        )

    need_p = max(MIN_PARTITIONS, math.ceil(round(commands / COMMANDS_PER_PARTITION_S, 9)))
    why_p = f"{COMMANDS_PER_ORDER} commands per order / {COMMANDS_PER_PARTITION_S} commands/s per partition"
    if kc.partitions is not None and kc.partitions < need_p:
        raise refuse("kafka.partitions", kc.partitions, need_p, why_p)
    p = kc.partitions if kc.partitions is not None else need_p
    if TOPICS * p > pub.MSK_SERVERLESS_PARTITIONS and not kc.cluster_arn:
        raise ValueError(
            f"{name}: {TOPICS} topics x kafka.partitions={p} is above MSK Serverless's "
            f"{pub.MSK_SERVERLESS_PARTITIONS} partitions per cluster"
        )
    partition_mb_s = commands / p * RECORD_KB / 1024
    partitions = Item(
        p,
        _set_or(
            kc.partitions,
            f"max({MIN_PARTITIONS}, ceil({COMMANDS_PER_ORDER} x {r:g} / {COMMANDS_PER_PARTITION_S})) = {need_p}",
        ),
        f"MSK Serverless: {TOPICS} x {p} = {TOPICS * p} of {pub.MSK_SERVERLESS_PARTITIONS} partitions "
        f"per cluster; {partition_mb_s:.2f} of {pub.MSK_PARTITION_INGRESS_MB_S:g} MB/s ingress per partition",
    )

    need_pollers = max(
        math.ceil(p / pub.INVOCATIONS_PER_POLLER),
        math.ceil(commands * RECORD_KB / 1024 / pub.POLLER_MB_PER_S),
    )
    why_pollers = f"{p} partitions, one invocation each, {pub.INVOCATIONS_PER_POLLER} invocations per poller"
    if kc.max_pollers is not None and kc.max_pollers < need_pollers:
        raise refuse("kafka.max_pollers", kc.max_pollers, need_pollers, why_pollers)
    if kc.min_pollers is not None and kc.min_pollers < 1:
        # Lambda accepts retry limits, bisecting and partial batch responses for Kafka only in
        # provisioned mode; without them a poison command would block its partition forever.
        raise ValueError(
            f"{name}: kafka.min_pollers must be >= 1: the Kafka retry controls need provisioned mode"
        )
    max_p = kc.max_pollers if kc.max_pollers is not None else POLLER_SPARE * need_pollers
    min_p = kc.min_pollers if kc.min_pollers is not None else min(need_pollers, max_p)
    if not (pub.MIN_POLLERS_RANGE[0] <= min_p <= min(max_p, pub.MIN_POLLERS_RANGE[1])):
        raise ValueError(
            f"{name}: kafka.min_pollers={min_p} must be 1 to 200 and at most max_pollers={max_p}"
        )
    if max_p > pub.MAX_POLLERS_RANGE[1]:
        raise ValueError(f"{name}: kafka.max_pollers={max_p} is above Lambda's {pub.MAX_POLLERS_RANGE[1]}")
    poller_limit = (
        f"Lambda: {pub.INVOCATIONS_PER_POLLER} invocations or {pub.POLLER_MB_PER_S:g} MB/s per poller; "
        f"min {pub.MIN_POLLERS_RANGE[0]}-{pub.MIN_POLLERS_RANGE[1]}, max up to {pub.MAX_POLLERS_RANGE[1]}"
    )
    max_pollers = Item(
        max_p,
        _set_or(
            kc.max_pollers, f"{POLLER_SPARE} x ceil({p} / {pub.INVOCATIONS_PER_POLLER}), needs {need_pollers}"
        ),
        poller_limit,
    )
    min_pollers = Item(
        min_p,
        _set_or(kc.min_pollers, f"ceil({p} / {pub.INVOCATIONS_PER_POLLER}): every partition invoked at once"),
        poller_limit,
    )

    # One batch must fit the timeout: batch x Stripe p99 / workers + the start margin.
    batch_s = kc.batch_size * STRIPE_P99_S / fc.command_workers + fc.command_start_margin_ms / 1000
    if batch_s > fc.authorize_timeout_seconds or kc.batch_size > pub.ESM_MAX_BATCH_SIZE:
        raise ValueError(
            f"{name}: kafka.batch_size={kc.batch_size} takes {batch_s:g} s at Stripe's p99 "
            f"({STRIPE_P99_S:g} s) with {fc.command_workers} workers: above "
            f"functions.authorize_timeout_seconds={fc.authorize_timeout_seconds} (or Lambda's {pub.ESM_MAX_BATCH_SIZE})"
        )
    batch = Item(
        kc.batch_size,
        f"{kc.batch_size} x {STRIPE_P99_S:g} s / {fc.command_workers} workers + {fc.command_start_margin_ms / 1000:g} s "
        f"= {batch_s:g} s <= {fc.authorize_timeout_seconds} s timeout",
        f"Lambda: batch size at most {pub.ESM_MAX_BATCH_SIZE}",
    )
    per_partition = commands / p
    window = Item(
        kc.max_batching_window_seconds,
        f"{per_partition:.1f} commands/s per partition: batches of ~{min(kc.batch_size, max(1, round(per_partition * kc.max_batching_window_seconds)))}",
        f"Lambda: at most {pub.ESM_MAX_BATCHING_WINDOW_S} s",
    )

    why_c = f"{pub.INVOCATIONS_PER_PARTITION} invocation per partition x {p} partitions"
    if fc.authorize_reserved_concurrency is not None and fc.authorize_reserved_concurrency < p:
        raise refuse("functions.authorize_reserved_concurrency", fc.authorize_reserved_concurrency, p, why_c)
    reserved = fc.authorize_reserved_concurrency
    if reserved is None and config.capacity.reserve_concurrency:
        reserved = p
    concurrency = Item(
        p, why_c, f"Lambda: {pub.LAMBDA_CONCURRENCY_DEFAULT} per account by default, 100 kept unreserved"
    )

    history = 0
    if config.api.public_history:
        history = math.ceil(config.api.history_throttle_rate_limit * WEBHOOK_SECONDS)
    sessions = Sessions(
        authorize=p * (fc.command_workers + 1),
        api=api.api_reserved_concurrency or api.api_concurrency,
        webhook=math.ceil(round(api.webhook_rate * WEBHOOK_SECONDS, 9)),
        relay=RELAY_SESSIONS,
        audit=AUDIT_SESSIONS,
        history=history,
    )
    database, max_conn, percent = size_database(config, sessions, commands)
    borrow = config.database.proxy_borrow_timeout_seconds
    borrow_timeout = Item(
        borrow if borrow is not None else DB_TIMEOUT_S,
        f"DB_TIMEOUT_SECONDS ({DB_TIMEOUT_S} s): a function stops waiting then anyway",
        f"RDS Proxy: {pub.PROXY_BORROW_TIMEOUT_RANGE[0]}-{pub.PROXY_BORROW_TIMEOUT_RANGE[1]} s",
    )

    writes = STRIPE_WRITES_PER_ORDER * r
    reads = STRIPE_READS_PER_ORDER * r + AUDIT_STRIPE_READS_PER_S
    budget = fc.stripe_account_requests_per_second
    if budget is not None and not 0 < budget <= MAX_STRIPE_BUDGET:
        raise ValueError(
            f"{name}: functions.stripe_account_requests_per_second must be above 0 and at most {MAX_STRIPE_BUDGET:g}"
        )
    if budget is not None and budget < writes:
        raise refuse(
            "functions.stripe_account_requests_per_second", budget, writes,
            f"{STRIPE_WRITES_PER_ORDER} Stripe writes per released order x {r:g} orders/s (the command function paces to it)",
        )  # fmt: skip
    stripe_writes = Item(
        _at_least(writes * STRIPE_REQUEST_HEADROOM, pub.STRIPE_LIVE_WRITES_PER_S),
        f"{STRIPE_WRITES_PER_ORDER} writes per order x {r:g} = {writes:g}/s, x {STRIPE_REQUEST_HEADROOM:g}",
        f"Stripe live mode: {pub.STRIPE_LIVE_WRITES_PER_S} writes/s by default",
    )
    stripe_reads = Item(
        _at_least(reads * STRIPE_REQUEST_HEADROOM, pub.STRIPE_LIVE_READS_PER_S),
        f"{STRIPE_READS_PER_ORDER} reads per order x {r:g} + {AUDIT_STRIPE_READS_PER_S} (audit) = {reads:g}/s, "
        f"x {STRIPE_REQUEST_HEADROOM:g}",
        f"Stripe live mode: {pub.STRIPE_LIVE_READS_PER_S} reads/s by default",
    )
    stripe_endpoint = Item(
        _at_least(r * STRIPE_REQUEST_HEADROOM, pub.STRIPE_ENDPOINT_PER_S),
        f"{r:g} x {STRIPE_REQUEST_HEADROOM:g} on each of POST /v1/payment_intents, .../capture, /v1/transfers",
        f"Stripe: {pub.STRIPE_ENDPOINT_PER_S} requests/s per endpoint by default",
    )
    # Not refused: a stage on Stripe's test mode (25/s) caps its containers on purpose.
    in_flight = min(fc.stripe_max_in_flight, fc.command_workers)
    ceiling = math.floor(p * in_flight / STRIPE_LATENCY_S)
    calls = writes + reads
    short = ""
    if ceiling < calls:
        per = math.ceil(round(calls * STRIPE_LATENCY_S / p, 9))
        short = (
            f"; SHORT of {calls:g}/s: functions.stripe_max_in_flight and command_workers >= {per} "
            "(or more partitions)"
        )
    stripe_ceiling = Item(
        ceiling,
        f"{p} partitions x min(STRIPE_MAX_IN_FLIGHT {fc.stripe_max_in_flight}, workers "
        f"{fc.command_workers}) / {STRIPE_LATENCY_S:g} s, for {calls:g} calls/s{short}",
        "above the granted limit Stripe answers 429 (each container then halves its cap)",
    )
    return Sizing(
        r, commands, partitions, max_pollers, min_pollers, batch, window, concurrency, reserved,
        database, sessions, max_conn, percent, borrow_timeout,
        stripe_writes, stripe_reads, stripe_endpoint, stripe_ceiling, api,
    )  # fmt: skip


def _set_or(value: object, formula: str) -> str:
    return formula if value is None else f"set to {value} (derived: {formula})"


def _at_least(value: float, floor: int) -> int:
    """Round a request up to a tidy figure (next 50), never below the default."""
    return max(floor, math.ceil(round(value, 9) / 50) * 50)
