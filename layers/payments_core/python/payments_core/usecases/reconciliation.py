"""The reconciler and settlement audit, run every few minutes until its deadline.

Two kinds of payment are checked against Stripe, each under the order's lease (skipped, and
left due, while someone else holds it); check_queue keeps their schedules and the backlog, and
``check_pool`` runs the checks a few at a time:
- stale non-final payments (PENDING, REQUIRES_ACTION, AUTHORIZED past their windows): webhooks
  get lost, a function can die between Stripe and the database, holds lapse after ~7 days.
  Looked at once past the window; one still where it was (a hold waiting for its release) is
  looked at again after ``reconcile_backoff_seconds``, not on every run;
- uncertain payments (``audit_due_at``), audited by ``settlement_audit``: a money call whose
  outcome was never recorded (a crash, a timeout, a 5xx), a lease taken over, a payment that
  became final (something may still land), an event we did not expect (a stray hold, a
  transfer or refund update). Each is checked at growing intervals (``audit_backoff_seconds``)
  until Stripe and the row agree and nothing can still land (no money call of the order with an
  unknown outcome within ``audit_in_doubt_seconds``): every PaymentIntent of the order, its
  transfers and its refunds. What disagrees is fixed (holds canceled on payments that hold
  nothing, transfers reversed and refunds made or redone on reverted ones) and checked again
  later; what cannot be fixed is counted (``AuditUnresolved``, alarmed) and checked again. A
  check that fails is retried, never marked done.
Stripe calls are paced to ``audit_stripe_reads_per_second``, the reconciler's share of the
account's budget: with the checks' Stripe calls, it sets how many final payments a day the
audit keeps up with (docs/operations.md, "The reconciler's backlog"). Every run reports what it did and what it left
(``ReconcileChecks``, ``ReconcileCheckRate``, ``StaleCheckBacklog``/``Age``,
``AuditBacklog``/``Age``; the ages are alarmed)."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import replace

from aws_lambda_powertools.metrics import MetricUnit

from payments_core.adapters.postgres import check_queue, outbox, repository
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services, get_services
from payments_core.config import Settings
from payments_core.domain.contracts import AUTHENTICATION_FAILED, AUTHORIZATION_EXPIRED
from payments_core.domain.errors import Rejection, TransientError
from payments_core.domain.payment import Payment, PaymentStatus
from payments_core.observability import add_metric, count, logger
from payments_core.usecases import authorization, leases, lifecycle, order_holds, settlement_audit
from payments_core.usecases.check_pool import CheckPool, Paced, Pacer

S = PaymentStatus


def reconcile(services: Services | None = None, *, deadline: float | None = None) -> dict[str, int]:
    """Check what was due when the run started until none is left or ``deadline``
    (time.monotonic()) passes; returns counts by outcome (and ``stripe_calls``)."""
    services = services or get_services()
    s = services.settings
    db = services.db
    started = time.monotonic()
    outcomes: Counter[str] = Counter()
    pacer = Pacer(s.audit_stripe_reads_per_second)
    paced = replace(services, stripe=Paced(services.stripe, pacer))
    outcomes["lost_calls_flagged"] = repository.flag_unfinished_money_calls(db, leases.lease_ttl_seconds(s))
    run = check_queue.Run(db, stale_windows(s), s.reconcile_batch_size)

    def check_all(worker: Services, checks: list[check_queue.Due]) -> list[tuple[str, str]]:
        return [(due.order_id, _check(worker, due, run)) for due in checks if not _past(deadline)]

    with CheckPool(paced, s.reconcile_workers) as pool:
        while not _past(deadline):
            batch = run.next_batch()
            if not batch:
                break
            by_order: dict[str, list[check_queue.Due]] = {}
            for due in batch:  # one order's checks one after the other, on one worker
                by_order.setdefault(due.order_id, []).append(due)
            touched: list[str] = []
            for order_id, outcome in (
                done for group in pool.map(check_all, by_order.values()) for done in group
            ):
                outcomes[outcome] += 1
                if outcome not in _NOTHING_CHANGED:
                    touched.append(order_id)
            outbox.publish_best_effort(db, services.publisher, touched)  # a page at a time: no list grows
    _report(db, run, outcomes, time.monotonic() - started)
    outcomes["stripe_calls"] = pacer.calls
    return {k: v for k, v in outcomes.items() if v}


# Outcomes after which nothing was written that announces anything (no publish needed).
_NOTHING_CHANGED = frozenset(
    {"unchanged", "settled", "still_held", "waiting", "skipped_locked", "skipped_pending", "errors"}
)
# Outcomes that are not a check (the order was someone else's, or the outcome is a tally).
_NOT_CHECKS = frozenset({"skipped_locked", "lost_calls_flagged"})


def stale_windows(settings: Settings) -> dict[PaymentStatus, float]:
    """How long a payment may stay in each non-final status before the reconciler looks."""
    return {
        S.PENDING: settings.reconcile_pending_after_seconds,
        S.REQUIRES_ACTION: settings.reconcile_requires_action_after_seconds,
        S.AUTHORIZED: settings.reconcile_authorized_after_seconds,
    }


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _report(db: Database, run: check_queue.Run, outcomes: Counter[str], elapsed_s: float) -> None:
    """Every run: what it did, how fast, and what it left (the backlog alarms read these)."""
    checks = sum(n for outcome, n in outcomes.items() if outcome not in _NOT_CHECKS)
    count("ReconcileChecks", checks)
    add_metric("ReconcileCheckRate", MetricUnit.CountPerSecond, checks / elapsed_s if elapsed_s > 0 else 0.0)
    count("AuditUnresolved", outcomes["unresolved"])
    try:
        left = check_queue.backlog(db, run.windows, run.as_of)
    except TransientError as exc:  # the checks are done; only the gauges are missing this time
        logger.warning("reconciler backlog not measured", extra={"reason": str(exc)})
        return
    count("AuthorizationsNearExpiry", left.authorized_past_window)
    count("StaleCheckBacklog", left.stale_due)
    add_metric("StaleCheckBacklogAge", MetricUnit.Seconds, left.stale_age_s)
    count("AuditBacklog", left.audits_due)
    add_metric("AuditBacklogAge", MetricUnit.Seconds, left.audit_age_s)
    logger.info(
        "reconciler run",
        extra={
            "checks": checks,
            "seconds": round(elapsed_s, 3),
            "stale_backlog": left.stale_due,
            "audit_backlog": left.audits_due,
        },
    )


def _check(services: Services, due: check_queue.Due, run: check_queue.Run) -> str:
    db = services.db
    try:
        with order_holds.hold_order(services, due.order_id) as held:
            if due.kind == "audit":
                return settlement_audit.audit(held, due.order_id)
            return _stale_check(held, due, run)
    except leases.LeaseBusy:
        return "skipped_locked"  # left due: behind this run's cursor, the next run takes it
    except (TransientError, Rejection) as exc:
        logger.warning(
            "check failed; it is retried later", extra={"order_id": due.order_id, "reason": str(exc)}
        )
        count("AuditCheckFailed")
        if due.kind == "audit":
            with contextlib.suppress(TransientError):  # still due if this fails: the next run retries it
                check_queue.audit_again_later(db, due.order_id, services.settings.audit_backoff_seconds)
        return "errors"


def _stale_check(services: Services, due: check_queue.Due, run: check_queue.Run) -> str:
    """A look at a stale payment, under its lease: what the page said may have changed since."""
    db = services.db
    payment = repository.get_by_order_id(db, due.order_id)
    if payment is None or (payment.stale_checked_at is not None and payment.stale_checked_at > run.as_of):
        return "unchanged"  # another run looked after this one started: its schedule stands
    if not run.is_stale(payment.status, payment.updated_at):
        if due.kind == "recheck":  # final, or in a status whose window has not passed yet
            check_queue.nothing_due(db, due.order_id)
        return "unchanged"
    status = payment.status
    try:
        return _reconcile_one(services, payment)
    finally:  # also when the look failed: due again after the next delay
        with contextlib.suppress(TransientError):
            check_queue.stale_checked(db, due.order_id, status, services.settings.reconcile_backoff_seconds)


def _reconcile_one(services: Services, payment: Payment) -> str:
    db = services.db
    order_id = payment.order_id
    cid = payment.correlation_id
    if payment.status is S.PENDING:
        authorization.authorize_pending(services, payment, correlation_id=cid)
        return "completed_pending"
    intent = services.stripe.find_hold(payment)
    if intent is None:
        return "unchanged"
    if payment.status is S.REQUIRES_ACTION:
        if intent.status == "requires_action":
            # The customer never finished: cancel, so a late authentication cannot create a
            # hold nobody tracks, then fail the payment.
            services.stripe.cancel(replace(payment, payment_intent_id=intent.id))
            with db.transaction():
                lifecycle.change_status(
                    db,
                    payment,
                    S.FAILED,
                    correlation_id=cid,
                    payment_intent_id=intent.id,
                    failure_code=AUTHENTICATION_FAILED,
                    failure_message="3-D Secure authentication was not completed in time.",
                )
            return "authentication_abandoned"
        with db.transaction():
            changed = lifecycle.apply_intent(
                db,
                payment,
                intent,
                correlation_id=cid,
                attempt_failed=True,
                failed_code=AUTHENTICATION_FAILED,
            )
        return "applied" if changed else "unchanged"
    # AUTHORIZED for longer than the window: the hold may have lapsed.
    if intent.status == "requires_capture":
        logger.warning("authorization near expiry and still held", extra={"order_id": order_id})
        return "still_held"
    with db.transaction():
        changed = lifecycle.apply_intent(
            db, payment, intent, correlation_id=cid, canceled_code=AUTHORIZATION_EXPIRED
        )
    return "expired" if changed else "unchanged"
