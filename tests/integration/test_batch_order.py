"""One MSK batch on the worker pool, on the real local stack (issue 13, Done-when 1 and 2):
records of one order in partition order whatever the pool size, different orders at the same
time, a transient failure reported with everything after it, one hold per order for copies in
one batch and across partitions."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import authorize_command, command, msk_event, wait_for
from payments_core.adapters.services import Services
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.domain.errors import TransientError
from payments_core.entrypoints.command_pool import make_pool
from payments_core.entrypoints.commands import handle_command_batch
from payments_core.entrypoints.worker_pool import WorkerPool

pytestmark = pytest.mark.integration


class RecordingStripe:
    """The real gateway (localstripe), with every call's start and end recorded per order."""

    def __init__(self, inner: Any, before: Callable[[str, str], None] | None = None) -> None:
        self.inner = inner
        self.before = before
        self.calls: list[tuple[str, str, float, float]] = []  # (method, order_id, started, ended)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            order_id = getattr(args[0], "order_id", "") if args else ""
            started = time.monotonic()
            try:
                if self.before is not None:
                    self.before(name, order_id)
                return method(*args, **kwargs)
            finally:
                with self._lock:
                    self.calls.append((name, order_id, started, time.monotonic()))

        return call

    def of(self, order_id: str) -> list[str]:
        return [name for name, order, _, _ in sorted(self.calls, key=lambda c: c[2]) if order == order_id]


@pytest.fixture
def pool_of(make_services: Callable[..., Services]) -> Iterator[Callable[..., tuple[Services, WorkerPool]]]:
    """``pool_of(size, stripe) -> (services for the calling thread, pool)``: the container's
    pool as ``handle_command_batch`` builds it, around the given Stripe gateway."""
    made: list[WorkerPool] = []

    def factory(size: int, stripe: Any) -> tuple[Services, WorkerPool]:
        base = make_services(stripe=stripe)
        pool = make_pool(base, size)
        made.append(pool)
        return base, pool

    yield factory
    for pool in made:
        pool.close()


def event_of(*partitions: dict[str, Any]) -> dict[str, Any]:
    """One MSK event holding the records of several single-partition events."""
    merged = dict(partitions[0])
    merged["records"] = {k: v for p in partitions for k, v in p["records"].items()}
    return merged


def outbox_types(pg_connection: Any, order_id: str) -> list[str]:
    rows = pg_connection.run(
        "SELECT event_type, envelope FROM outbox WHERE order_id = :o ORDER BY id", o=order_id
    )
    return [
        f"{t}:{(json.loads(e) if isinstance(e, str) else e)['payload'].get('status', '')}" for t, e in rows
    ]


NO_FAILURES = {"batchItemFailures": []}


@pytest.mark.parametrize("size", [1, 4, 16])
def test_authorize_then_revert_of_one_order_run_in_that_order_whatever_the_pool_size(
    size, new_card, pool_of, payment_row, intents_for_order, pg_connection
):
    card = new_card()
    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    services, pool = pool_of(size, stripe)
    # order A: authorize then revert, with other orders' records between and around them
    auth_a = authorize_command(card)
    order_a = auth_a["payload"]["order_id"]
    others = [authorize_command(card) for _ in range(4)]
    revert_a = command("revert_payment", order_id=order_a, reason="order cancelled")
    event = msk_event(others[0], auth_a, others[1], others[2], revert_a, others[3], first_offset=40)
    assert handle_command_batch(event, None, services, pool) == NO_FAILURES

    assert stripe.of(order_a)[0] == "create_hold", "the authorize reached Stripe before the revert"
    assert "cancel" in stripe.of(order_a)
    assert payment_row(order_a)["status"] == "REVERTED"
    (intent,) = intents_for_order(card, order_a)
    assert intent.status == "canceled", "the hold placed by the authorize is released by the revert"
    assert outbox_types(pg_connection, order_a) == [
        "payment.authorized:AUTHORIZED",
        "payment.released:REVERTED",
    ]
    for other in others:
        assert payment_row(other["payload"]["order_id"])["status"] == "AUTHORIZED"


@pytest.mark.parametrize("size", [1, 16])
def test_release_by_payment_id_and_revert_by_order_id_keep_their_order(
    size, new_card, pool_of, make_services, payment_row, pg_connection
):
    """The release names only the payment: its order is looked up, so it still runs before the
    revert of that order that follows it (reversed, the revert would cancel the hold and the
    release would be refused)."""
    card = new_card()
    auth = authorize_command(card)
    order_id = auth["payload"]["order_id"]
    assert handle_command_batch(msk_event(auth), None, make_services()) == NO_FAILURES
    payment_id = str(payment_row(order_id)["payment_id"])

    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    services, pool = pool_of(size, stripe)
    release = command("release_payment", payment_id=payment_id, runner_id="user_runner")
    revert = command("revert_payment", order_id=order_id, reason="refunded")
    filler = [authorize_command(card) for _ in range(3)]
    event = msk_event(release, *filler, revert, first_offset=7)
    assert handle_command_batch(event, None, services, pool) == NO_FAILURES

    assert stripe.of(order_id) == ["capture", "refund"], "capture (release) first, then refund (revert)"
    assert payment_row(order_id)["status"] == "REVERTED" and payment_row(order_id)["refund_id"]
    assert outbox_types(pg_connection, order_id) == [
        "payment.authorized:AUTHORIZED",
        "payment.released:SUCCEEDED",
        "payment.released:REVERTED",
    ]


def test_two_orders_in_one_batch_overlap_in_time(new_card, pool_of, payment_row):
    """Both orders' creates must be at Stripe at the same moment: each waits at a barrier for the
    other (a pool running them one after the other breaks it and fails the batch)."""
    card = new_card()
    barrier = threading.Barrier(2, timeout=15)

    def meet(method: str, order_id: str) -> None:
        if method == "create_hold":
            barrier.wait()

    stripe = RecordingStripe(StripeApiGateway(get_settings()), before=meet)
    services, pool = pool_of(get_settings().command_workers, stripe)
    first, second = authorize_command(card), authorize_command(card)
    assert handle_command_batch(msk_event(first, second), None, services, pool) == NO_FAILURES

    spans = {order: (s, e) for name, order, s, e in stripe.calls if name == "create_hold"}
    (s1, e1), (s2, e2) = spans[first["payload"]["order_id"]], spans[second["payload"]["order_id"]]
    assert s1 < e2 and s2 < e1, "the two Stripe calls overlap in time"
    rows = [payment_row(c["payload"]["order_id"]) for c in (first, second)]
    assert all(r["status"] == "AUTHORIZED" for r in rows)
    # the database saw it too: each payment was written before the other was authorized
    assert rows[0]["created_at"] < rows[1]["updated_at"] and rows[1]["created_at"] < rows[0]["updated_at"]


def test_a_transient_failure_reports_its_offset_and_nothing_after_it_is_acknowledged(
    new_card, pool_of, payment_row, intents_for_order
):
    card = new_card()
    a, b, c, e = (authorize_command(card) for _ in range(4))
    d = b  # a copy of b after c: same order as b, so it waits for b
    order = {k: v["payload"]["order_id"] for k, v in {"a": a, "b": b, "c": c, "e": e}.items()}
    failed_once: list[str] = []
    c_started = threading.Event()

    def flaky(method: str, order_id: str) -> None:
        if order_id == order["c"]:
            c_started.set()
        if order_id == order["b"] and not failed_once:
            c_started.wait(10)  # c, after b in the partition, is already running on another worker
            failed_once.append(order_id)
            raise TransientError("stripe unavailable: APIConnectionError (simulated)")

    stripe = RecordingStripe(StripeApiGateway(get_settings()), before=flaky)
    services, pool = pool_of(get_settings().command_workers, stripe)
    event = event_of(
        msk_event(a, b, c, d, partition=0, first_offset=100), msk_event(e, partition=1, first_offset=50)
    )
    response = handle_command_batch(event, None, services, pool)
    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": "payment_commands-0", "offset": offset}}
            for offset in (101, 102, 103)
        ]
    }, "b's offset and every record after it in its partition; nothing of partition 1"
    assert payment_row(order["a"])["status"] == "AUTHORIZED"
    assert payment_row(order["e"])["status"] == "AUTHORIZED"
    assert payment_row(order["c"])["status"] == "AUTHORIZED", "c ran beside b, yet it is delivered again"
    assert stripe.of(order["b"]) == ["create_hold"], "b's copy never started after b failed"

    # the mapping delivers 101.. again: harmless for c, and b and d now complete
    redelivery = msk_event(b, c, d, partition=0, first_offset=101)
    assert handle_command_batch(redelivery, None, services, pool) == NO_FAILURES
    for key in "abce":
        assert payment_row(order[key])["status"] == "AUTHORIZED"
        assert len(intents_for_order(card, order[key])) == 1


def test_copies_in_one_batch_and_across_partitions_make_one_hold_with_the_default_pool(
    new_card, authorize_handler, payment_row, intents_for_order, published_events, pg_connection
):
    assert get_settings().command_workers == 16
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    others = [authorize_command(card) for _ in range(6)]
    event = event_of(
        msk_event(cmd, others[0], cmd, others[1], cmd, partition=0, first_offset=10),
        msk_event(others[2], cmd, others[3], cmd, partition=1, first_offset=20),
        msk_event(cmd, others[4], others[5], partition=2, first_offset=30),
    )
    assert authorize_handler(event) == NO_FAILURES
    assert len(intents_for_order(card, order_id)) == 1, "one hold for six copies"
    assert pg_connection.run("SELECT count(*) FROM payments WHERE order_id = :o", o=order_id) == [[1]]
    events = published_events(order_id, at_least=1)
    assert {e["type"] for e in events} == {"payment.authorized"}
    assert len({e["event_id"] for e in events}) == 1
    for other in others:
        assert len(intents_for_order(card, other["payload"]["order_id"])) == 1


def test_copies_on_every_partition_through_the_local_mapping_make_one_hold(
    new_card, make_producer, payment_row, intents_for_order, published_events
):
    """Through Kafka: the mapping invokes the three partitions at once (three containers, each
    with its default pool), every one holding copies of the same command."""
    from local.stack import control as stack

    if not stack.is_running("event-source"):
        pytest.fail("the local event-source mapping is not running: run `make local-up`", pytrace=False)
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    producer = make_producer()
    for partition in (0, 1, 2, 0, 1, 2):
        producer.send("payment_commands", value=json.dumps(cmd).encode(), partition=partition)
    producer.flush(timeout=10)
    assert published_events(order_id, at_least=1, timeout=30, settle=3)
    assert wait_for(lambda: (payment_row(order_id) or {}).get("status") == "AUTHORIZED")
    assert len(intents_for_order(card, order_id)) == 1


def test_a_burst_of_429s_slows_the_pool_and_the_batch_still_completes(pool_of, lambda_context, payment_row):
    """Stripe's rate limiter answers 429 to six requests: the throttle halves its cap, backs
    off and retries within the invocation's time, instead of failing records."""
    import dataclasses

    from local.doubles.stripe_latency import StripeLatencyDouble

    double = StripeLatencyDouble(delay_s=0.05).start()
    try:
        settings = dataclasses.replace(get_settings(), stripe_api_base=double.url)
        services, pool = pool_of(16, StripeApiGateway(settings))
        commands = [authorize_command_for("cus_rate", "pm_rate") for _ in range(10)]
        double.rate_limit_next(6)
        response = handle_command_batch(
            msk_event(*commands), lambda_context("authorize_payment", 60), services, pool
        )
        assert response == NO_FAILURES
        assert double.rate_limited == 6
        assert pool.throttle.rate_limited == 6, "every 429 seen by the throttle"
        assert pool.throttle.limit < pool.throttle.ceiling, "the cap is still recovering from the burst"
        for cmd in commands:
            order_id = cmd["payload"]["order_id"]
            assert payment_row(order_id)["status"] == "AUTHORIZED"
            assert len(double.creates[order_id]) == 1
    finally:
        double.stop()


def test_nothing_starts_without_time_for_a_stripe_call(new_card, pool_of, lambda_context, payment_row):
    card = new_card()
    stripe = RecordingStripe(StripeApiGateway(get_settings()))
    services, pool = pool_of(16, stripe)
    commands = [authorize_command(card) for _ in range(3)]
    margin_s = get_settings().command_start_margin_ms / 1000
    short = lambda_context("authorize_payment", timeout_seconds=margin_s - 1)
    response = handle_command_batch(msk_event(*commands, first_offset=5), short, services, pool)
    assert response == {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": "payment_commands-0", "offset": o}} for o in (5, 6, 7)
        ]
    }
    assert stripe.calls == [] and all(payment_row(c["payload"]["order_id"]) is None for c in commands)
    enough = lambda_context("authorize_payment", timeout_seconds=margin_s + 30)
    assert handle_command_batch(msk_event(*commands, first_offset=5), enough, services, pool) == NO_FAILURES


def authorize_command_for(customer_id: str, payment_method_id: str) -> dict[str, Any]:
    from conftest import Card

    return authorize_command(Card(customer_id, payment_method_id))


def test_one_at_a_time_a_partition_stops_at_its_first_failure(new_card, make_services, payment_row):
    """Issue 12, item 5: Powertools' Kafka processor ran every record and reported each failure
    alone, so records after a partition's first failure ran ahead of it. Now they do not run
    and are reported with it."""
    card = new_card()
    first, second, other = (authorize_command(card) for _ in range(3))
    failing = first["payload"]["order_id"]

    def fail_first(method: str, order_id: str) -> None:
        if order_id == failing:
            raise TransientError("stripe unavailable: APIConnectionError (simulated)")

    services = make_services(stripe=RecordingStripe(StripeApiGateway(get_settings()), before=fail_first))
    event = event_of(
        msk_event(first, second, partition=0, first_offset=3), msk_event(other, partition=1, first_offset=9)
    )
    assert handle_command_batch(event, None, services) == {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": "payment_commands-0", "offset": 3}},
            {"itemIdentifier": {"partition": "payment_commands-0", "offset": 4}},
        ]
    }
    assert payment_row(second["payload"]["order_id"]) is None, "nothing ran after the failure"
    assert payment_row(other["payload"]["order_id"])["status"] == "AUTHORIZED", "other partitions go on"


def test_local_mapping_invokes_partitions_in_parallel_each_one_at_a_time_in_order(
    local_settings, make_topic, make_producer
):
    """The local mapping, like AWS's: one invocation in flight per partition, the partitions'
    invocations at the same time (all three meet at a barrier), offsets in order."""
    from local.stack.event_source_config import MappingConfig
    from local.stack.event_source_mapping import EventSourceMapping

    topic, dlq = make_topic(3), make_topic(1, prefix="dlq")
    producer = make_producer()
    for i in range(30):
        producer.send(topic, value=f"m{i}".encode(), partition=i % 3)
    producer.flush(timeout=10)
    barrier = threading.Barrier(3, timeout=15)
    lock = threading.Lock()
    spans: list[tuple[str, float, float, list[int]]] = []
    seen: set[str] = set()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        ((key, records),) = event["records"].items()  # one partition per invocation
        started = time.monotonic()
        with lock:
            first = key not in seen
            seen.add(key)
        if first:
            barrier.wait()  # each partition's first invocation: breaks unless all three run at once
        with lock:
            spans.append((key, started, time.monotonic(), [r["offset"] for r in records]))
        return {"batchItemFailures": []}

    config = MappingConfig(
        function="stand_in",
        topic=topic,
        group_id=f"test-esm-{uuid.uuid4().hex[:8]}",
        bootstrap_servers=local_settings.kafka_bootstrap,
        batch_size=4,
        batch_window_ms=200,
        dead_letter_topic=dlq,
    )
    mapping = EventSourceMapping(config, handler=handler)
    runner = threading.Thread(target=mapping.run, daemon=True)
    runner.start()
    try:
        assert wait_for(lambda: sum(len(s[3]) for s in spans) >= 30, timeout=60)
    finally:
        mapping.stop()
        runner.join(timeout=15)
    assert not barrier.broken, "the three partitions' first invocations ran at the same time"
    for key in {s[0] for s in spans}:
        mine = sorted((s for s in spans if s[0] == key), key=lambda s: s[1])
        for before, after in itertools.pairwise(mine):
            assert before[2] <= after[1], f"{key}: two invocations in flight at once"
        offsets = [o for s in mine for o in s[3]]
        assert offsets == sorted(offsets) == list(range(10)), f"{key}: {offsets}"


# ---- re-delivered records (issue 16, item 5) ------------------------------------------------


def _answer_of(pg_connection: Any, order_id: str, offset: int) -> list[str]:
    """The event ids stored as the answer of the record at ``offset`` (partition 0) of this order."""
    rows = pg_connection.run(
        "SELECT c.event_id::text FROM command_outcomes c JOIN outbox o ON o.event_id = c.event_id"
        " WHERE o.order_id = :o AND c.topic = 'payment_commands' AND c.kafka_partition = 0"
        " AND c.kafka_offset = :offset",
        o=order_id,
        offset=offset,
    )
    return [r[0] for r in rows]


def _answers(events: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(e["event_id"], e["type"], e["payload"].get("status")) for e in events]


def test_a_redelivered_release_re_announces_its_first_answer_after_its_revert(
    new_card, pool_of, make_services, payment_row, published_events, pg_connection
):
    """In one partition: B's authorize, A's release, A's revert. A's release and revert finish
    beside B, then B fails: the mapping delivers all three again. Judged again, A's release met
    a REVERTED payment and announced payment.failed after the SUCCEEDED and REVERTED it caused."""
    card = new_card()
    auth_a, auth_b = authorize_command(card), authorize_command(card)
    order_a, order_b = auth_a["payload"]["order_id"], auth_b["payload"]["order_id"]
    assert handle_command_batch(msk_event(auth_a, first_offset=199), None, make_services()) == NO_FAILURES
    release_a = command("release_payment", order_id=order_a, runner_id="user_runner")
    revert_a = command("revert_payment", order_id=order_a, reason="order cancelled")
    failed: list[str] = []

    def b_fails_once_a_is_reverted(method: str, order_id: str) -> None:
        if order_id == order_b and not failed:
            assert wait_for(lambda: payment_row(order_a)["status"] == "REVERTED"), "A ran beside B"
            failed.append(order_id)
            raise TransientError("stripe unavailable: APIConnectionError (simulated)")

    stripe = RecordingStripe(StripeApiGateway(get_settings()), before=b_fails_once_a_is_reverted)
    services, pool = pool_of(get_settings().command_workers, stripe)
    event = msk_event(auth_b, release_a, revert_a, first_offset=200)
    assert handle_command_batch(event, None, services, pool) == {
        "batchItemFailures": [
            {"itemIdentifier": {"partition": "payment_commands-0", "offset": o}} for o in (200, 201, 202)
        ]
    }, "B failed: A's finished release and revert are delivered again after it"
    first = _answers(published_events(order_a, at_least=3))
    assert [(t, s) for _, t, s in first] == [
        ("payment.authorized", "AUTHORIZED"),
        ("payment.released", "SUCCEEDED"),
        ("payment.released", "REVERTED"),
    ]
    succeeded_id = first[1][0]

    assert handle_command_batch(event, None, services, pool) == NO_FAILURES
    assert payment_row(order_b)["status"] == "AUTHORIZED" and payment_row(order_a)["status"] == "REVERTED"
    assert stripe.of(order_a) == ["capture", "refund"], "the re-delivered release and revert moved no money"
    after = _answers(published_events(order_a, at_least=3, settle=3.0))
    assert "payment.failed" not in [t for _, t, _ in after], after
    assert list(dict.fromkeys(after)) == first, "no new event: only re-announcements, same event ids"
    assert after[-1][2] == "REVERTED", "the last word on A is still its revert"
    assert after.count(first[1]) == 1, "the release's answer is not published again after the revert"
    assert _answer_of(pg_connection, order_a, 201) == [succeeded_id], "the release's answer: its first"
    assert outbox_types(pg_connection, order_a) == [
        "payment.authorized:AUTHORIZED",
        "payment.released:SUCCEEDED",
        "payment.released:REVERTED",
    ]


def test_a_new_release_after_a_revert_is_still_refused_even_as_a_copy(
    new_card, make_services, payment_row, published_events, pg_connection
):
    """A new command (a new offset) is judged afresh, even byte for byte the release that was
    answered SUCCEEDED: the payment is REVERTED now, so nothing can be captured."""
    card = new_card()
    auth = authorize_command(card)
    order_id = auth["payload"]["order_id"]
    release = command("release_payment", order_id=order_id, runner_id="user_runner")
    revert = command("revert_payment", order_id=order_id, reason="refunded")
    services = make_services()
    assert (
        handle_command_batch(msk_event(auth, release, revert, first_offset=300), None, services)
        == NO_FAILURES
    )
    assert payment_row(order_id)["status"] == "REVERTED"

    new_release = command("release_payment", order_id=order_id, runner_id="user_runner")
    event = msk_event(new_release, release, first_offset=303)  # a new one, and the saga re-sending
    assert handle_command_batch(event, None, services) == NO_FAILURES
    events = published_events(order_id, at_least=4)
    refusal = events[-1]
    assert (refusal["type"], refusal["payload"]["error"], refusal["payload"]["status"]) == (
        "payment.failed",
        "PAYMENT_NOT_CAPTURABLE",
        "REVERTED",
    )
    assert refusal["correlation_id"] == new_release["correlation_id"]
    assert _answer_of(pg_connection, order_id, 303) == [refusal["event_id"]]
    assert _answer_of(pg_connection, order_id, 304) == [refusal["event_id"]], "the copy is refused too"
    assert payment_row(order_id)["status"] == "REVERTED"
