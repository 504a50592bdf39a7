"""The crash drill (issue 12): the authorize function dies by SIGKILL at seeded random points
while at least 300 orders go through it, then every order is checked against Stripe's own state.

The function runs in a child process (``local.doubles.crash_runner``) behind the local MSK event
source mapping (``local.stack.event_source_mapping``, in this process, in place of the stack's): every
invocation may be killed at the N-th crossing of a phase (before a Stripe request; after a
money-moving Stripe answer, before the database commit; between a capture's answer and the
transfer; before a COMMIT; after the commit, before the events are published) or at a random
moment; the mapping then re-delivers the whole batch to a fresh child, as AWS does. The
reconciler and the outbox relay run the same way (and die the same way) every second, in
place of the stack's scheduler. Stripe is the strict double (``local.doubles.strict_stripe``) in front
of localstripe, so idempotency keys, refunds and transfers behave as at Stripe.

Workload: CRASH_DRILL_ORDERS (300) orders with seeded plans: released (over HTTP and over
Kafka), partially released, reverted before and after release, release and revert at once,
declined (some then reverted), 3-D Secure authenticated, abandoned or reverted; exact duplicate
commands; each PaymentIntent's webhook delivered again late and twice.

Issue 16 grows it: a release's transfer held at the double past the client's timeout while its
child is killed, or its database sessions dropped, with the transfer in flight (or neither), and
a revert of the order sent on another partition meanwhile; the transfer lands late (after the
lease expired, when the child died), and the settlement audit (the reconciler, every second)
must reverse it; Stripe timeouts and 5xx on the audit's reads of some reverted orders and on
its reversals; a stray hold on a reverted order whose webhook's cancel fails (5xx), which the
audit must cancel. Stripe's timeout is short (STRIPE_TIMEOUT_SECONDS=3), so is the order lease
(``leases.lease_ttl_seconds``), and the audit's first look comes AUDIT_BACKOFF_SECONDS[0] after
a payment became uncertain or final: the drill ends once no audit is due within that horizon.

Invariants, per order, against localstripe and the double's ledger: at most one PaymentIntent;
captured at most once; at most one transfer, reversed if refunded; refunded at most once and
never more than captured; no hold left on an order whose last event says REVERTED or FAILED;
the last event agrees with Stripe; every order has a final event; every hold the drill planted
is canceled. The summary reports kills by phase, the audit's runs and its outcomes and fixes.

Replay a run with ``CRASH_DRILL_SEED=<seed>`` (printed first). ``CRASH_DRILL_RELEASE_VIA=kafka``
sends every release over Kafka (for a branch without the HTTP release route); the default sends
half of them to ``POST /payment/{payment_id}/release``.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Card
from crash_drill_harness import CARD_NUMBERS, CUSTOMERS_PER_CARD, Workload, check_orders, group_events
from payments_core.config import get_settings
from payments_core.usecases import leases

from local.doubles.crash_runner import AFTER_STRIPE, DROPPED, PHASES, ChildKilled, CrashRunner
from local.doubles.strict_stripe import StrictStripe
from local.stack import control as stack
from local.stack.api_events import ROUTES, build_event, compile_routes
from local.stack.event_source_config import MappingConfig
from local.stack.event_source_mapping import EventSourceMapping
from local.stack.settings import PAYMENT_COMMANDS_TOPIC, PAYMENT_EVENTS_TOPIC, client_env

pytestmark = pytest.mark.integration

ORDERS = int(os.environ.get("CRASH_DRILL_ORDERS", "300"))
RELEASE_VIA = os.environ.get("CRASH_DRILL_RELEASE_VIA", "http")  # http (half of them) | kafka
KILL_PROBABILITY = float(os.environ.get("CRASH_DRILL_KILL_PROBABILITY", "0.35"))  # per invocation
SETTLE_TIMEOUT_S = float(os.environ.get("CRASH_DRILL_SETTLE_TIMEOUT_S", "300"))
# Each killed command invocation holds its orders' leases until they run out, so its retry (and
# the rest of its partition's batch) waits one lease TTL: a seed that kills many invocations on
# one partition legitimately runs past SETTLE_TIMEOUT_S (seed 22825: 45 kills, ten of them on
# one partition, its last order done at 300 s). Past it, the drill waits on while orders still
# finish, and calls the workload stuck once none has for STALL_LEASES lease TTLs, or at the cap.
STALL_LEASES = 4
SETTLE_CAP_S = float(os.environ.get("CRASH_DRILL_SETTLE_CAP_S", "480"))
STRIPE_LATENCY_MS = float(os.environ.get("CRASH_DRILL_STRIPE_LATENCY_MS", "0"))  # e.g. 300: Stripe's distance
ESM_GROUP = "local-esm-authorize_payment"  # the stack's: it resumes where the drill stopped
CONCURRENCY = 3  # payment_commands' partitions: MSK invokes one batch per partition at a time
# Stripe's client timeout, short so the order lease (derived from it) is short and the drill fast
STRIPE_TIMEOUT_S = 3
# The audit's first look at an uncertain or final payment (it lets a late transfer land first),
# then its re-checks after a fix or a failed check; its share of Stripe reads per second.
AUDIT_BACKOFF = "15,3,6"
AUDIT_READS_PER_S = "30"
RECONCILE_BACKOFF = "3,3,6"
AUDIT_SETTLE_TIMEOUT_S = float(os.environ.get("CRASH_DRILL_AUDIT_SETTLE_TIMEOUT_S", "90"))


@pytest.fixture
def drill_owns_the_functions(make_pg_connection: Callable[..., Any]) -> Iterator[None]:
    """The drill runs the authorize function, the reconciler and the relay itself (killable,
    through the strict double): the stack's event-source mapping and scheduler are stopped for
    the test and started again after it. localstripe is restarted empty first: it keeps all
    state in memory and slows down as it grows, and the drill's runtime should not depend on
    what earlier tests left in it (each test makes its own customers); their payments' audits
    are called off for the same reason."""
    running = [name for name in ("event-source", "scheduler") if stack.is_running(name)]
    if running:
        stack.down(running)
    stack.down(["localstripe"])
    stack.up(["localstripe"])  # registers the webhook endpoint again
    # Earlier tests' uncertain payments name PaymentIntents that went with that localstripe:
    # the drill's audit (due every few seconds) would fail on them ("Not Found") all along.
    make_pg_connection().run("UPDATE payments SET audit_due_at = NULL WHERE audit_due_at IS NOT NULL")
    try:
        yield
    finally:
        if running:
            stack.up(running)


@pytest.fixture
def say(capsys: pytest.CaptureFixture[str]) -> Callable[[str], None]:
    def print_now(text: str) -> None:  # shown even when pytest captures output
        with capsys.disabled():
            print(text, flush=True)

    return print_now


def test_crash_drill(
    drill_owns_the_functions: None,
    new_card: Callable[[str], Card],
    make_producer: Callable[..., Any],
    make_consumer: Callable[..., Any],
    make_pg_connection: Callable[..., Any],
    local_env: dict[str, str],
    tmp_path: Path,
    say: Callable[[str], None],
) -> None:
    seed = int(os.environ.get("CRASH_DRILL_SEED") or random.SystemRandom().randrange(1, 1_000_000))
    say(
        f"\n[crash-drill] seed={seed} orders={ORDERS} releases via {RELEASE_VIA} (replay: CRASH_DRILL_SEED={seed})"
    )
    started = time.monotonic()
    cards = {kind: [new_card(CARD_NUMBERS[kind]) for _ in range(n)] for kind, n in CUSTOMERS_PER_CARD.items()}
    strict = StrictStripe(
        local_env["STRIPE_API_BASE"],
        validator=local_env["STRIPE_MOCK_API_BASE"],
        latency_ms=STRIPE_LATENCY_MS,
    ).start()
    env = {
        **os.environ,
        **client_env(),
        "STRIPE_API_BASE": strict.url,
        "RECONCILE_PENDING_AFTER_SECONDS": "3",
        "RECONCILE_REQUIRES_ACTION_AFTER_SECONDS": "10",
        "RECONCILE_AUTHORIZED_AFTER_SECONDS": "20",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "STRIPE_TIMEOUT_SECONDS": str(STRIPE_TIMEOUT_S),
        # no network retries: a killed holder's lease then lasts 3 + 2 x 5 + 5 = 18 s, and the
        # key attempts (not stripe-python's retries) are what the double's faults exercise
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "AUDIT_BACKOFF_SECONDS": AUDIT_BACKOFF,
        "AUDIT_STRIPE_READS_PER_SECOND": AUDIT_READS_PER_S,
        # a stale payment's look that leaves it where it was (a failed look among them) is
        # repeated after seconds, not the 5 minutes and more a deployed stage waits
        "RECONCILE_BACKOFF_SECONDS": RECONCILE_BACKOFF,
    }
    lease_ttl = _lease_ttl(env)
    # A late transfer lands lease_ttl + 4 s after it was sent: the audit keeps a payment whose
    # call may still land open that long, and a little more (an hour by default).
    env["AUDIT_IN_DOUBT_SECONDS"] = str(int(lease_ttl) + 15)
    audit_first_s = float(AUDIT_BACKOFF.split(",")[0])
    # Like the MSK event source mapping, one concurrent invocation per partition: a poller (and
    # a function process) per partition of payment_commands, in one consumer group.
    authorizers = [
        CrashRunner(
            f"authorize-{i}",
            seed=seed,
            env=env,
            log_path=tmp_path / f"authorize-{i}.log",
            kill_probability=KILL_PROBABILITY,
        )
        for i in range(CONCURRENCY)
    ]
    scheduled = CrashRunner(
        "scheduled",
        seed=seed,
        env=env,
        log_path=tmp_path / "scheduled.log",
        kill_probability=KILL_PROBABILITY / 2,
    )
    in_flight: dict[str, str] = {}  # orders whose transfer is interrupted in flight, shared
    for runner in authorizers:
        runner.in_flight = in_flight
    api = CrashRunner("api", seed=seed, env=env, log_path=tmp_path / "api.log", kill_probability=0.0)
    runners = [*authorizers, scheduled, api]
    audit: Counter[str] = Counter()  # reconcile()'s outcomes, summed over its runs
    audit_runs: Counter[str] = Counter()  # scheduled invocations: completed, killed, failed
    dead_lettered: list[str] = []
    mappings = [
        _mapping(runner, local_env["KAFKA_BOOTSTRAP_SERVERS"], dead_lettered) for runner in authorizers
    ]
    stop = threading.Event()

    def run_scheduled() -> None:  # EventBridge, every second: the reconciler, then the relay
        while not stop.wait(1.0):
            for kind in ("reconcile", "relay"):
                try:
                    answer = scheduled.invoke(kind, plan=scheduled.plan())
                except ChildKilled:
                    audit_runs[f"{kind}_killed"] += 1
                    continue
                except RuntimeError:
                    audit_runs[f"{kind}_failed"] += 1
                    continue
                audit_runs[kind] += 1
                if kind == "reconcile" and isinstance(answer, dict):
                    audit.update({k: int(v) for k, v in answer.items()})

    routes = compile_routes(ROUTES)

    def deliver_webhook(body: bytes, signature: str) -> int:
        """A Stripe webhook to the payment API function in a child whose Stripe is the double."""
        event = build_event(
            method="POST",
            raw_path="/api/stripe-webhook",
            header_items=[("Content-Type", "application/json"), ("Stripe-Signature", signature)],
            body=body,
            source_ip="127.0.0.1",
            routes=routes,
        )
        try:
            answer = api.invoke("api", event)
        except (ChildKilled, RuntimeError):
            return 0
        return int((answer or {}).get("statusCode") or 0)

    events_from = _end_offsets(make_consumer, PAYMENT_EVENTS_TOPIC)
    producer = make_producer()
    pg = make_pg_connection()
    workload = Workload(
        seed=seed,
        orders=ORDERS,
        cards=cards,
        produce=lambda raw, partition: producer.send(PAYMENT_COMMANDS_TOPIC, value=raw, partition=partition),
        http_release=RELEASE_VIA == "http",
        api_url=local_env["API_URL"],
        localstripe_url=local_env["STRIPE_API_BASE"],
        stripe_key=local_env["STRIPE_SECRET_KEY"],
        webhook_secret=local_env["STRIPE_WEBHOOK_SECRET"],
        pg=pg,
        stripe=strict,
        in_flight=in_flight,
        deliver_webhook=deliver_webhook,
        partitions=CONCURRENCY,
        # killed in flight: lands after the lease ran out; else after the client gave up
        late_transfer_s=(lease_ttl + 4, 3 * STRIPE_TIMEOUT_S + 3),
        stripe_timeout_s=STRIPE_TIMEOUT_S,
    )
    threads = [
        *(threading.Thread(target=m.run, name=f"drill-esm-{i}", daemon=True) for i, m in enumerate(mappings)),
        threading.Thread(target=run_scheduled, name="drill-scheduler", daemon=True),
    ]
    sender = threading.Thread(target=workload.send_authorizations, name="drill-sender", daemon=True)
    for t in threads:
        t.start()
    settled = False
    try:
        sender.start()
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        cap = time.monotonic() + max(SETTLE_CAP_S, SETTLE_TIMEOUT_S)
        last_print = time.monotonic()
        not_done_before = 0
        while time.monotonic() < deadline:
            not_done = workload.step()
            producer.flush()
            if not_done < not_done_before:  # an order finished: the stuck-check starts again
                deadline = max(deadline, min(cap, time.monotonic() + STALL_LEASES * lease_ttl))
            not_done_before = not_done
            if not sender.is_alive() and not_done == 0 and _quiet(make_consumer, pg, workload):
                settled = True
                break
            if time.monotonic() - last_print > 15:
                say(f"[crash-drill] {not_done} orders still moving after {time.monotonic() - started:.0f}s")
                last_print = time.monotonic()
            time.sleep(0.4)
        workload.deliver_late_webhooks()
        time.sleep(1.5)  # let the scheduled relay publish what the late webhooks changed, if anything
        _wait(lambda: _quiet(make_consumer, pg, workload), 15)
        # the audit has looked at everything due within its first delay, and rechecked what it must
        audit_settled = _wait(
            lambda: _audits_due(pg, workload, audit_first_s + 2) == 0, AUDIT_SETTLE_TIMEOUT_S
        )
        _wait(lambda: _quiet(make_consumer, pg, workload), 15)
    finally:
        stop.set()
        for m in mappings:
            m.stop()
        for t in threads:
            t.join(30)
        for runner in runners:
            runner.stop()
        strict.stop()
    elapsed = time.monotonic() - started

    orders = workload.orders
    events = group_events(_read_events(make_consumer, events_from), set(orders))
    intents = _intents_by_order(workload, cards, set(orders))
    for order in orders.values():  # a planted hold that never got its metadata is still checked
        known = {p["id"] for p in intents.get(order.order_id, [])}
        for stray in (s for s in order.planted if s not in known):
            intents.setdefault(order.order_id, []).append(workload.stripe_get(f"/v1/payment_intents/{stray}"))
    audit_left = _audits_due(pg, workload, None)
    rows = _rows(pg, list(orders))
    problems, counts = check_orders(orders, events, intents, strict.ledger, rows)

    kills = sum((Counter(r.kills) for r in runners), Counter())
    crossed = sum((Counter(r.crossings) for r in runners), Counter())
    after_answer = Counter(
        d.split()[0] for r in runners for p, d in r.kill_details if p == AFTER_STRIPE and d
    )
    say(
        f"[crash-drill] seed={seed} kills by phase: "
        + ", ".join(f"{phase}={kills.get(phase, 0)}" for phase in (*PHASES, "unplanned", DROPPED))
        + f" (after_stripe_before_commit by request: {dict(after_answer)};"
        + f" authorize function {sum(sum(r.kills.values()) for r in authorizers)} of "
        f"{sum(r.invocations for r in authorizers)} invocations in {CONCURRENCY} processes, "
        f"reconciler/relay {sum(scheduled.kills.values())} of {scheduled.invocations}; "
        f"planned but not reached {sum(r.planned_not_reached for r in runners)}; "
        f"cold starts {sum(r.cold_starts for r in runners)}; "
        f"crash points crossed by surviving invocations {dict(crossed)})"
    )
    fixes = _audit_fixes(tmp_path / "scheduled.log")
    say(
        f"[crash-drill] seed={seed} audit: runs {dict(audit_runs)}; outcomes summed over runs {dict(audit)}; "
        f"fixes by kind (AuditFixed log lines) {dict(fixes)}; faults injected {dict(strict.rule_hits)}; "
        f"late transfers held {len(strict.transfers_held)}, landed {len(strict.transfers_landed_late)}; "
        f"lease TTL {lease_ttl:.0f}s; settled within horizon {audit_settled}, payments still audit-due {audit_left}"
    )
    say(
        "[crash-drill] counts: "
        + ", ".join(
            f"{k}={v}"
            for k, v in {
                "orders": len(orders),
                "plans": dict(Counter(o.plan for o in orders.values())),
                **dict(workload.counts),
                **dict(counts),
                "events": sum(len(e) for e in events.values()),
                "rows": dict(Counter(r["status"] for r in rows.values())),
                "dead_letters": len(dead_lettered),
                "stripe_forwarded": strict.stats.forwarded,
                "stripe_replayed": strict.stats.replayed,
                "idempotency_errors": strict.strict.idempotency_errors,
                "refunds_refused": strict.strict.refunds_refused,
                "stripe_validation_errors": strict.strict.validation_errors,
                "settled": settled,
                "elapsed_s": round(elapsed, 1),
            }.items()
        )
    )
    by_invariant = Counter(p.invariant for p in problems)
    message = [
        f"crash drill seed={seed}: {len(problems)} invariant violation(s) {dict(by_invariant)}; "
        f"kills {dict(kills)}; replay with CRASH_DRILL_SEED={seed}"
    ]
    if not settled:
        moving = [
            o
            for o in orders.values()
            if o.stage != "done" or (rows.get(o.order_id) or {}).get("status") == "PENDING"
        ]
        message.append(
            f"the workload did not settle in {elapsed:.0f}s: past {SETTLE_TIMEOUT_S:.0f}s no order "
            f"finished for {STALL_LEASES * lease_ttl:.0f}s ({STALL_LEASES} lease TTLs), or the "
            f"{SETTLE_CAP_S:.0f}s cap was reached; still moving: "
            + "; ".join(f"{o.order_id} ({o.plan}) stage {o.stage} row {o.status}" for o in moving[:10])
        )
    if dead_lettered:
        message.append(f"{len(dead_lettered)} command(s) dead-lettered: {dead_lettered[:3]}")
    if workload.http_failures:
        message.append(
            f"{len(workload.http_failures)} HTTP release(s) refused (sent over Kafka instead): "
            f"{workload.http_failures[0]}"
        )
    message.extend(str(p) for p in problems[:40])
    for line in message:
        say("[crash-drill] " + line)
    assert not problems and settled and not workload.http_failures and not dead_lettered, "\n".join(message)


def _mapping(runner: CrashRunner, bootstrap: str, dead_lettered: list[str]) -> EventSourceMapping:
    """A local MSK event source mapping whose function is ``runner``'s killable child."""
    mapping = EventSourceMapping(
        MappingConfig(
            function="authorize_payment",
            group_id=ESM_GROUP,
            bootstrap_servers=bootstrap,
            batch_size=10,
            batch_window_ms=150,
            max_retries=40,
            retry_backoff_s=0.2,
            retry_backoff_max_s=1.0,
            handler_timeout_s=30,
        ),
        handler=runner.handle,
    )
    original_dead_letter = mapping._dead_letter

    def count_dead_letter(record: Any, retry: Any) -> None:
        dead_lettered.append(f"{record.topic}-{record.partition} offset {record.offset}: {retry.last_error}")
        original_dead_letter(record, retry)

    mapping._dead_letter = count_dead_letter  # type: ignore[method-assign]
    return mapping


# ---- reading the stack ----------------------------------------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def _partitions(consumer: Any, topic: str) -> list[Any]:
    from kafka import TopicPartition

    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]


def _end_offsets(make_consumer: Callable[..., Any], topic: str) -> dict[Any, int]:
    consumer = make_consumer()
    try:
        return dict(consumer.end_offsets(_partitions(consumer, topic)))
    finally:
        consumer.close()


def _quiet(make_consumer: Callable[..., Any], pg: Any, workload: Workload) -> bool:
    """Every command consumed (the mapping's committed offsets at the end) and every event of
    the drill's orders published."""
    consumer = make_consumer(group_id=ESM_GROUP)
    try:
        parts = _partitions(consumer, PAYMENT_COMMANDS_TOPIC)
        ends = consumer.end_offsets(parts)
        if any((consumer.committed(tp) or 0) < ends[tp] for tp in parts):
            return False
    finally:
        consumer.close()
    rows = pg.run(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND order_id = ANY(CAST(:o AS text[]))",
        o=list(workload.orders),
    )
    pending = pg.run(
        "SELECT count(*) FROM payments WHERE status = 'PENDING' AND order_id = ANY(CAST(:o AS text[]))",
        o=list(workload.orders),
    )
    return int(rows[0][0]) == 0 and int(pending[0][0]) == 0


def _lease_ttl(env: dict[str, str]) -> float:
    """The order lease's time to live with the drill's Stripe timeout (as the children see it)."""
    import dataclasses

    settings = dataclasses.replace(
        get_settings(),
        stripe_timeout_seconds=int(env["STRIPE_TIMEOUT_SECONDS"]),
        stripe_max_network_retries=int(env["STRIPE_MAX_NETWORK_RETRIES"]),
    )
    return leases.lease_ttl_seconds(settings)


def _audits_due(pg: Any, workload: Workload, within_s: float | None) -> int:
    """The drill's payments the audit is due to check within ``within_s``: not yet looked at,
    or looked at and rescheduled (a check that fixed, failed or is waiting comes back within
    the drill's short backoff, so a fault that outlasted the first look is waited for too);
    None: every payment still due at all."""
    rows = pg.run(
        "SELECT count(*) FROM payments WHERE order_id = ANY(CAST(:o AS text[])) AND audit_due_at IS NOT NULL"
        " AND (CAST(:within AS float8) IS NULL"
        " OR audit_due_at <= now() + make_interval(secs => CAST(:within AS float8)))",
        o=list(workload.orders),
        within=within_s,
    )
    return int(rows[0][0])


def _audit_fixes(log: Path) -> Counter[str]:
    """What the audit fixed, by kind, from its AuditFixed log lines (killed runs' included)."""
    import re

    fixes: Counter[str] = Counter()
    if not log.exists():
        return fixes
    for line in log.read_text(errors="replace").splitlines():
        if "audit fixed what Stripe" not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        for fix in record.get("fixes") or []:
            kind = re.sub(r"\b(pi|tr|trr|re|pyr)_\w+ ?", "", str(fix)).split(":")[0].strip()
            fixes[kind] += 1
    return fixes


def _read_events(
    make_consumer: Callable[..., Any], start: dict[Any, int]
) -> list[tuple[str, dict[str, Any]]]:
    consumer = make_consumer(consumer_timeout_ms=1000)
    parts = list(start)
    consumer.assign(parts)
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    ends = consumer.end_offsets(parts)
    out: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in parts):
        for batch in consumer.poll(timeout_ms=500).values():
            for m in batch:
                if m.key is not None:
                    out.append((m.key.decode(), json.loads(m.value)))
    consumer.close()
    return out


def _intents_by_order(
    workload: Workload, cards: dict[str, list[Card]], orders: set[str]
) -> dict[str, list[Any]]:
    """Every PaymentIntent localstripe holds for the drill's customers, by metadata.order_id."""
    found: dict[str, list[Any]] = {}
    for card in (c for cs in cards.values() for c in cs):
        after = ""
        while True:
            page = workload.stripe_get(
                f"/v1/payment_intents?customer={card.customer_id}&limit=100"
                + (f"&starting_after={after}" if after else "")
            )
            for pi in page["data"]:
                order_id = (pi.get("metadata") or {}).get("order_id")
                if order_id in orders:
                    found.setdefault(order_id, []).append(pi)
            if not page.get("has_more") or not page["data"]:
                break
            after = page["data"][-1]["id"]
    return found


def _rows(pg: Any, orders: list[str]) -> dict[str, dict[str, Any]]:
    rows = pg.run("SELECT * FROM payments WHERE order_id = ANY(CAST(:o AS text[]))", o=orders)
    names = [c["name"] for c in pg.columns]
    return {r["order_id"]: r for r in (dict(zip(names, row, strict=True)) for row in rows)}


# ---- single crashes, aimed: each replays one window the drill only reaches by chance ----------------


@pytest.fixture
def runner_via(tmp_path: Path, local_env: dict[str, str]) -> Iterator[Callable[..., CrashRunner]]:
    """``runner_via(double, name) -> CrashRunner``: a killable authorize function (and
    reconciler) whose Stripe is ``double``; stopped after the test."""
    made: list[CrashRunner] = []

    def make(double: StrictStripe, name: str = "fn") -> CrashRunner:
        env = {
            **os.environ,
            **client_env(),
            "STRIPE_API_BASE": double.url,
            "RECONCILE_PENDING_AFTER_SECONDS": "0",
            # a dead holder's lease lasts 1 + 2 x 2 + 5 = 10 s (leases.lease_ttl_seconds)
            "STRIPE_TIMEOUT_SECONDS": "1",
            "STRIPE_MAX_NETWORK_RETRIES": "0",
            "DB_TIMEOUT_SECONDS": "2",
            "AUDIT_BACKOFF_SECONDS": "0",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
        }
        runner = CrashRunner(name, seed=0, env=env, log_path=tmp_path / f"{name}.log", kill_probability=0.0)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        runner.stop()


def _batch(cmd: dict[str, Any]) -> dict[str, Any]:
    from conftest import msk_event

    return msk_event(cmd)


def test_a_transfer_made_just_before_a_crash_is_reversed_by_the_revert(
    runner_via: Callable[..., CrashRunner],
    new_card: Callable[[str], Card],
    payment_row: Callable[[str], Any],
    local_env: dict[str, str],
) -> None:
    """Issue 12, defect 2: the release dies after Stripe answered its transfer, before the
    commit; the saga's revert (waiting out the dead release's lease) then refunds the customer.
    The runner's transfer must be reversed too (it can be found by its transfer_group),
    whatever the release's redelivery does later."""
    from conftest import CARD_OK, authorize_command, command, wait_for

    double = StrictStripe(local_env["STRIPE_API_BASE"], validator=local_env["STRIPE_MOCK_API_BASE"]).start()
    try:
        fn = runner_via(double)
        order_id = str(uuid.uuid4())
        fn.invoke("batch", _batch(authorize_command(new_card(CARD_OK), order_id=order_id)))
        row = wait_for(lambda: (r := payment_row(order_id)) and r["status"] == "AUTHORIZED" and r)
        assert row, f"not authorized: {payment_row(order_id)}"
        release = command(
            "release_payment",
            payment_id=str(row["payment_id"]),
            runner_id="user_runner",
            runner_connect_account_id="acct_runner1",
        )
        with pytest.raises(ChildKilled):
            fn.invoke("batch", _batch(release), plan={"phase": AFTER_STRIPE, "at": 1, "method": "transfer"})
        assert double.ledger.transfers_for(order_id), "the transfer was made before the crash"
        revert = command("revert_payment", payment_id=str(row["payment_id"]), reason="order cancelled")
        fn.invoke("batch", _batch(revert))
        fn.invoke("batch", _batch(release))  # the mapping re-delivers the crashed release
        after = payment_row(order_id)
        transfers = double.ledger.transfers_for(order_id)
        refunded = double.ledger.refunded(row["payment_intent_id"])
        assert len(transfers) == 1, f"transfers {transfers}"
        assert not refunded or transfers[0]["reversed"], (
            f"the customer was refunded {refunded} ({after['status']}, refund {after['refund_id']}) but the "
            f"runner keeps transfer {transfers[0]['id']} of {transfers[0]['amount']} (reversed "
            f"{transfers[0]['amount_reversed']}); the payment records transfer_id={after['transfer_id']}"
        )
    finally:
        double.stop()


def test_a_hold_created_after_its_revert_is_released(
    runner_via: Callable[..., CrashRunner],
    new_card: Callable[[str], Card],
    payment_row: Callable[[str], Any],
    local_env: dict[str, str],
) -> None:
    """Issue 12, defect 3: the authorize function dies while its create is still on the way to
    Stripe, for longer than its lease lasts (10 s here: 14 s away); the saga's revert, once the
    lease has run out, finds no PaymentIntent and answers REVERTED; then Stripe executes the
    create: a hold on a REVERTED payment. The webhook or the settlement audit must cancel it."""
    from conftest import CARD_OK, authorize_command, command, wait_for

    far = _CreateArrival(local_env["STRIPE_API_BASE"], latency_ms=28000).start()  # 14 s each way
    near = StrictStripe(local_env["STRIPE_API_BASE"]).start()
    try:
        slow, fn = runner_via(far, "slow"), runner_via(near, "fn")
        order_id = str(uuid.uuid4())
        slow.invoke("relay")  # warm processes (imports done)
        fn.invoke("relay")
        # killed once its create has reached Stripe's side (not on a timer: on a loaded machine
        # a timer fired before the create was sent), well within its 1 s Stripe timeout
        outcome: dict[str, BaseException] = {}

        def authorize() -> None:
            try:
                slow.invoke("batch", _batch(authorize_command(new_card(CARD_OK), order_id=order_id)))
            except BaseException as exc:  # inspected below
                outcome["raised"] = exc

        authorizing = threading.Thread(target=authorize, name="slow-authorize")
        authorizing.start()
        assert far.create_arrived.wait(30), "the authorize never sent its create"
        slow.kill_child()
        authorizing.join(30)
        assert isinstance(outcome.get("raised"), ChildKilled), outcome
        fn.invoke("batch", _batch(command("revert_payment", order_id=order_id, reason="order cancelled")))
        assert payment_row(order_id)["status"] == "REVERTED"
        # the race this test is about: the revert finished while the create was still on its way
        assert not far.ledger.intents_by_order.get(order_id), "the create reached Stripe before the revert"
        created = wait_for(lambda: far.ledger.intents_by_order.get(order_id), timeout=30)
        assert created, "Stripe never executed the create that was on its way"
        time.sleep(2)  # the webhook of the new hold arrives
        fn.invoke("reconcile")
        intent = stripe_state(local_env, created[0])
        assert intent["status"] != "requires_capture", (
            f"{created[0]} holds {intent['amount']} on the card (requires_capture) while the payment is "
            f"{payment_row(order_id)['status']} and REVERTED was announced"
        )
    finally:
        far.stop()
        near.stop()


class _CreateArrival(StrictStripe):
    """A strict Stripe double that says when a PaymentIntent create has reached it (before its
    latency: the request is then on its way, whatever happens to its sender)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.create_arrived = threading.Event()

    def serve(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Any:
        if method == "POST" and path.split("?")[0] == "/v1/payment_intents":
            self.create_arrived.set()
        return super().serve(method, path, headers, body)


def stripe_state(local_env: dict[str, str], intent_id: str) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - localstripe on 127.0.0.1
        f"{local_env['STRIPE_API_BASE']}/v1/payment_intents/{intent_id}",
        headers={"Authorization": f"Bearer {local_env['STRIPE_SECRET_KEY']}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        data: dict[str, Any] = json.loads(resp.read())
        return data
