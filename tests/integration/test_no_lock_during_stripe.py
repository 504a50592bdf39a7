"""Issue 16: while Stripe answers, the worker's database session is not tied up.

A Stripe call takes hundreds of milliseconds (here 3 s); a session that stays inside a
transaction, or keeps the per-order advisory lock, for that long holds a scarce connection (and
blocks every other writer of the order) for nothing. The worker here runs one authorize and one
release (capture, then a transfer to the runner's Connect account) against a latency double;
meanwhile the test looks at the worker's session in pg_stat_activity and pg_locks, several
times during every Stripe request."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from conftest import Card, authorize_command, command, msk_event, named_database
from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
from payments_core.config import get_settings
from payments_core.entrypoints.commands import handle_command_batch

from local.doubles import db_activity
from local.doubles.stripe_latency import StripeLatencyDouble

pytestmark = pytest.mark.integration

STRIPE_CALL_S = 3.0
SAMPLE_EVERY_S = 0.2  # about 15 looks per Stripe call
MIN_SAMPLES_PER_CALL = 3


def test_no_session_is_in_a_transaction_or_holds_a_lock_while_stripe_answers(
    make_services: Any, payment_row: Any, local_settings: Any
) -> None:
    double = StripeLatencyDouble(delay_s=STRIPE_CALL_S).start()
    # the worker's own session name: the stack's other service sessions (scheduler, API) stay out
    app = f"test-no-lock-{uuid.uuid4().hex[:12]}"
    db = named_database(get_settings(), local_settings.postgres_port, app)
    stripe_settings = dataclasses.replace(
        get_settings(), stripe_api_base=double.url, stripe_max_network_retries=0
    )
    services = make_services(db=db, stripe=StripeApiGateway(stripe_settings))
    auth = authorize_command(Card("cus_latency", "pm_latency"))
    order_id = auth["payload"]["order_id"]
    release = command(
        "release_payment",
        order_id=order_id,
        runner_id="user_runner",
        runner_connect_account_id="acct_runner1",
    )
    answers: list[dict[str, Any]] = []
    worker = threading.Thread(
        target=lambda: answers.append(handle_command_batch(msk_event(auth, release), None, services)),
        daemon=True,
    )

    looks = db_activity.connect()
    samples_per_call: Counter[int] = Counter()  # Stripe request number -> samples during it
    worker_seen = 0  # samples in which the worker's session existed
    tied_up: list[str] = []
    try:
        worker.start()
        while worker.is_alive():
            before = double.progress()
            sessions = db_activity.backends(looks, app)
            received, answered = double.progress()
            # the same single request in flight before and after the look: it covers one call
            if before == (received, answered) and received == answered + 1:
                samples_per_call[received] += 1
                worker_seen += bool(sessions)
                tied_up += [
                    f"during {double.received[received - 1]}: pid {s.pid} {s.state}, "
                    f"in a transaction {s.in_transaction}, advisory lock {s.advisory}, "
                    f"other locks {s.other_locks}"
                    for s in sessions
                    if s.busy
                ]
            time.sleep(SAMPLE_EVERY_S)
        worker.join()
    finally:
        looks.close()
        double.stop()

    assert answers == [{"batchItemFailures": []}]
    row = payment_row(order_id)
    assert row["status"] == "SUCCEEDED" and row["transfer_id"], "captured and the runner paid"
    calls = double.requests
    assert {
        "POST /v1/payment_intents",
        f"POST /v1/payment_intents/{row['payment_intent_id']}/capture",
    } <= set(double.received) and "POST /v1/transfers" in double.received, double.received
    # not vacuous: every Stripe call was looked at, and the worker's session was there to see
    assert sum(samples_per_call.values()) > 0
    assert all(samples_per_call[n] >= MIN_SAMPLES_PER_CALL for n in range(1, calls + 1)), (
        samples_per_call,
        double.received,
    )
    assert worker_seen > 0, "the worker's session was never seen while Stripe answered"
    assert not tied_up, (
        f"{len(tied_up)} of {sum(samples_per_call.values())} looks during Stripe calls found the "
        f"worker's session tied up; first: {tied_up[0]}; last: {tied_up[-1]}; "
        f"Stripe calls: {double.received}"
    )
