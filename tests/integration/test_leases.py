"""Per-order leases on the real local PostgreSQL (issue 16): taken and given back in single
statements, fenced by a growing token, expiring on the database's clock, never held by a
session; and the money calls written around every Stripe call that moves money."""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from conftest import authorize_command, command, msk_event
from payments_core.adapters.postgres import check_queue, repository
from payments_core.adapters.postgres.db import Database
from payments_core.domain.errors import TransientError
from payments_core.entrypoints.commands import handle_command_batch
from payments_core.usecases import leases, reconciliation
from payments_core.usecases.leases import LeaseBusy, LeaseLost

pytestmark = pytest.mark.integration

NO_FAILURES = {"batchItemFailures": []}
# What pins an RDS Proxy connection until the client disconnects (AWS's pinning conditions):
# session-level advisory locks, SET, set_config. Transaction-level advisory locks do not.
PINNING = re.compile(
    r"pg_advisory_lock\s*\(|pg_try_advisory_lock\s*\(|pg_advisory_lock_shared|\bset_config\b|\A\s*(SET|RESET)\s",
    re.IGNORECASE,
)


def _order() -> str:
    return f"lease-{uuid.uuid4()}"


def test_a_second_holder_is_told_busy_with_the_time_left_and_gets_it_once_released(make_services):
    first, second = make_services(), make_services()
    order_id = _order()
    lease = leases.acquire(first.db, order_id, ttl_s=30)
    with pytest.raises(LeaseBusy) as busy:
        leases.acquire(second.db, order_id, ttl_s=30)
    assert 0 < busy.value.retry_after_s <= 2.0
    leases.release(lease)
    again = leases.acquire(second.db, order_id, ttl_s=30)
    assert again.token == lease.token + 1, "every acquisition has a new, larger token"
    assert not again.taken_over, "a released lease is not a takeover"


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced_out(
    new_card, authorize_handler, make_services, pg_connection
):
    stale, fresh = make_services(), make_services()
    cmd = authorize_command(new_card())
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES
    check_queue.audit_settled(fresh.db, order_id)
    for _ in range(5):
        old = leases.acquire(stale.db, order_id, ttl_s=0.5)
        time.sleep(0.7)
        new = leases.acquire(fresh.db, order_id, ttl_s=30, audit_delay_s=0)
        if new.token == old.token + 1:
            break
        # the stack took the expired lease and gave it back in between (a late webhook of this
        # authorize, the reconciler): nobody was left to take over from; try again
        leases.release(new)
    assert new.token == old.token + 1, "the stack kept taking the order's lease"
    assert new.taken_over
    due = pg_connection.run(
        "SELECT audit_due_at <= now(), audit_reason FROM payments WHERE order_id = :o", o=order_id
    )
    assert due == [[True, "lease taken over"]], "what the old holder had in flight is checked"

    with pytest.raises(LeaseLost):
        old.renew()
    stale.db.fence = old.fence
    with pytest.raises(LeaseLost), stale.db.transaction():
        stale.db.execute("INSERT INTO reverted_orders (order_id) VALUES (:o)", o=order_id)
    stale.db.fence = None
    assert pg_connection.run("SELECT 1 FROM reverted_orders WHERE order_id = :o", o=order_id) == [], (
        "the stale holder's transaction wrote nothing"
    )
    with pytest.raises(LeaseLost), old.money_call("capture"):
        pytest.fail("a taken-over holder must not reach Stripe")


def test_a_fenced_transaction_makes_a_takeover_wait_and_find_the_lease_renewed(make_services):
    holder, taker = make_services(), make_services()
    order_id = _order()
    lease = leases.acquire(holder.db, order_id, ttl_s=1.0)
    holder.db.fence = lease.fence
    taken: list[Any] = []
    time.sleep(0.6)
    with holder.db.transaction():  # the fence renews: 1 s from now
        time.sleep(0.6)  # past the original expiry
        thread = threading.Thread(target=lambda: taken.append(_try(taker.db, order_id)))
        thread.start()
        thread.join(0.2)
        assert thread.is_alive(), "the takeover waits for the fenced transaction's row lock"
    thread.join(5)
    holder.db.fence = None
    assert taken and isinstance(taken[0], LeaseBusy), "the fence's renewal kept the lease"


def _try(db: Database, order_id: str) -> Any:
    try:
        return leases.acquire(db, order_id, ttl_s=30)
    except LeaseBusy as exc:
        return exc


def test_money_calls_record_intent_and_outcome_and_an_unknown_one_makes_the_payment_uncertain(
    new_card, authorize_handler, payment_row, make_services, pg_connection
):
    cmd = authorize_command(new_card())
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES
    calls = pg_connection.run(
        "SELECT action, outcome, finished_at IS NOT NULL FROM stripe_money_calls WHERE order_id = :o",
        o=order_id,
    )
    assert calls == [["create_hold", "ok", True]]
    check_queue.audit_settled(make_services().db, order_id)

    services = make_services()
    with (
        leases.hold(services.db, order_id, services.settings) as lease,
        pytest.raises(TransientError),
        lease.money_call("capture"),
    ):
        raise TransientError("stripe timed out")
    row = pg_connection.run(
        "SELECT audit_due_at IS NOT NULL, audit_reason FROM payments WHERE order_id = :o", o=order_id
    )
    assert row == [[True, "capture outcome unknown"]]


def test_a_money_call_left_open_by_a_dead_holder_is_flagged_for_the_audit(
    new_card, authorize_handler, payment_row, make_services, pg_connection
):
    cmd = authorize_command(new_card())
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES
    services = make_services()
    check_queue.audit_settled(services.db, order_id)
    lease = leases.acquire(services.db, order_id, ttl_s=0.3)
    # The holder dies between writing the intent and learning the outcome.
    pg_connection.run(
        "INSERT INTO stripe_money_calls (order_id, action, lease_token, started_at)"
        " VALUES (:o, 'transfer', :t, now() - interval '1 hour')",
        o=order_id,
        t=lease.token,
    )
    assert repository.flag_unfinished_money_calls(services.db, 60) >= 1
    row = pg_connection.run(
        "SELECT audit_due_at <= now(), audit_reason FROM payments WHERE order_id = :o", o=order_id
    )
    assert row == [[True, "a Stripe call has no recorded outcome"]]


def test_no_statement_that_pins_a_proxy_connection_is_ever_sent(
    new_card, make_services, payment_row, monkeypatch, local_env
):
    """Authorize, release with a transfer, revert (refund and reversal) and an audit run: every
    statement the service sends is free of session state."""
    sent: list[str] = []
    original = Database._run

    def recording(self: Database, sql: str, params: dict[str, Any]) -> Any:
        sent.append(sql)
        return original(self, sql, params)

    monkeypatch.setattr(Database, "_run", recording)
    services = make_services()
    card = new_card()
    cmd = authorize_command(card)
    order_id = cmd["payload"]["order_id"]
    assert handle_command_batch(msk_event(cmd), None, services) == NO_FAILURES
    release = command(
        "release_payment",
        order_id=order_id,
        runner_id="user_runner",
        runner_connect_account_id="acct_runner1",
    )
    assert handle_command_batch(msk_event(release, first_offset=5), None, services) == NO_FAILURES
    revert = command("revert_payment", order_id=order_id, reason="drill")
    assert handle_command_batch(msk_event(revert, first_offset=9), None, services) == NO_FAILURES
    assert payment_row(order_id)["status"] == "REVERTED"
    reconciliation.reconcile(replace(services, settings=services.settings))

    assert any("order_leases" in sql for sql in sent), "the statements were recorded"
    pinning = [sql for sql in sent if PINNING.search(sql)]
    assert pinning == [], pinning


def test_commands_of_one_order_on_two_partitions_are_serialized_without_holding_a_worker(
    new_card, make_services, payment_row
):
    """The saga's release and revert of one order can sit on different partitions (it sends
    with no key): while one container holds the order, the other's record is set aside, its
    other records run, and it finishes after."""
    busy_services, pool_services = make_services(), make_services()
    order_a = authorize_command(new_card())
    order_b = authorize_command(new_card())
    for cmd in (order_a, order_b):
        assert handle_command_batch(msk_event(cmd), None, pool_services) == NO_FAILURES
    a_id = order_a["payload"]["order_id"]
    held = leases.acquire(busy_services.db, a_id, ttl_s=30)
    threading.Timer(1.5, leases.release, args=(held,)).start()

    from payments_core.entrypoints.commands import make_pool

    pool = make_pool(pool_services, 4)
    try:
        event = msk_event(
            command("revert_payment", order_id=a_id),
            command("revert_payment", order_id=order_b["payload"]["order_id"]),
            first_offset=20,
        )
        started = time.monotonic()
        outcome = handle_command_batch(event, None, pool_services, pool)
        took = time.monotonic() - started
    finally:
        pool.close()
    assert outcome == NO_FAILURES
    assert (
        payment_row(a_id)["status"] == "REVERTED"
        and payment_row(order_b["payload"]["order_id"])["status"] == "REVERTED"
    )
    assert took >= 1.4, "A waited for the other holder"


def test_a_webhook_for_a_busy_order_leaves_its_effect_to_the_audit_and_answers_at_once(
    new_card, authorize_handler, payment_row, make_services, localstripe_client, monkeypatch
):
    """Stripe's request is not held for a whole lease: after WEBHOOK_LEASE_WAIT_SECONDS the
    order is made due for the audit, which re-reads Stripe and applies the change."""
    from payments_core.usecases import webhooks
    from webhook_helpers import payment_intent_event

    monkeypatch.setenv("AUDIT_BACKOFF_SECONDS", "0")
    monkeypatch.setenv("WEBHOOK_LEASE_WAIT_SECONDS", "0.2")
    from payments_core.config import get_settings

    get_settings.cache_clear()
    cmd = authorize_command(new_card())
    order_id = cmd["payload"]["order_id"]
    assert authorize_handler(msk_event(cmd)) == NO_FAILURES
    intent_id = payment_row(order_id)["payment_intent_id"]
    assert localstripe_client.v1.payment_intents.cancel(intent_id).status == "canceled"  # in the dashboard
    busy, webhook = make_services(), make_services()
    held = leases.acquire(busy.db, order_id, ttl_s=30)
    event = payment_intent_event("canceled", payment_intent_id=intent_id, order_id=order_id, amount=1299)

    started = time.monotonic()
    outcome = webhooks.apply_event(webhook, event)
    assert outcome.result == "deferred" and time.monotonic() - started < 2
    row = payment_row(order_id)
    assert row["status"] == "AUTHORIZED" and row["audit_due_at"] is not None

    leases.release(held)
    reconciliation.reconcile(webhook)
    assert payment_row(order_id)["status"] == "REVERTED", "the audit applied what the webhook could not"
