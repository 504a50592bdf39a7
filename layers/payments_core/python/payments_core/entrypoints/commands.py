"""The command path: an MSK batch from payment_commands.

Outcome per record: handled (events in the outbox), rejected (payment.failed announced),
dead-lettered (no order to announce to), or a batch item failure (transient: the event source
mapping re-delivers it and everything after it in its partition). Records of different orders
run concurrently on the container's worker pool (``command_pool``), records of one order in
partition order; after the batch, the events of the orders it touched are published; what fails
to publish stays in the outbox for the relay.
"""

from __future__ import annotations

import binascii
import functools
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEventRecord

from payments_core.adapters.kafka.dead_letters import send_dead_letter
from payments_core.adapters.postgres import command_outcomes, outbox, repository
from payments_core.adapters.postgres.db import Database
from payments_core.adapters.services import Services, get_services
from payments_core.adapters.stripe_api.stripe_throttle import take_stripe_seconds
from payments_core.domain.command_parsing import Unattributable, command_references, parse_command
from payments_core.domain.contracts import Command
from payments_core.domain.errors import Rejection, TransientError
from payments_core.domain.events import PaymentFailed, event_envelope
from payments_core.domain.payment import event_id_for_rejection
from payments_core.domain.storable_text import storable
from payments_core.entrypoints.batch import Finished, Item, items_of
from payments_core.entrypoints.command_pool import container_pool, throttle_of
from payments_core.entrypoints.worker_pool import WorkerPool
from payments_core.observability import add_metric, count, logger
from payments_core.usecases import authorization, lifecycle, releases, reverts
from payments_core.usecases.leases import LeaseBusy, lease_ttl_seconds

_DISPATCH: dict[str, Callable[[Services, Command], str]] = {
    "authorize_payment": authorization.authorize,
    "release_payment": releases.release,
    "revert_payment": reverts.revert,
}


def handle_command_batch(
    event: dict[str, Any],
    context: Any,
    services: Services | None = None,
    pool: WorkerPool[Services] | None = None,
) -> dict[str, Any]:
    """Entry point of the authorize function.

    By default the container's pool (``COMMAND_WORKERS`` slots) runs the records. A caller
    that passes its own ``services`` (one simulated container) gets them one at a time on
    those services, unless it also passes a ``pool``."""
    main = services or get_services()  # this thread's: order lookups and the publish
    if pool is None:
        pool = WorkerPool(1, lambda _slot: main) if services is not None else container_pool(main)
    throttle = throttle_of(pool)
    margin_s = main.settings.command_start_margin_ms / 1000
    ends_at = _invocation_end(context)
    if throttle is not None:
        throttle.set_deadline(None if ends_at is None else ends_at - margin_s + throttle.call_budget_s)

    def can_start() -> bool:
        return ends_at is None or time.monotonic() + margin_s <= ends_at

    items = items_of(event, KafkaEventRecord)
    answered = _answered_before(main.db, items)
    outcome = pool.run(
        items,
        functools.partial(_run_record, answered=answered),
        key_of=lambda item: order_key(main, item),
        can_start=can_start,
        on_failure=_log_failure,
        # An order leased elsewhere (its other command on another partition, a webhook, the
        # audit) is set aside and retried, not waited for on a worker.
        defer_of=lambda exc: exc.retry_after_s if isinstance(exc, LeaseBusy) else None,
        max_deferral_s=2 * lease_ttl_seconds(main.settings),
    )
    if outcome.not_started:
        logger.warning(
            "records left for re-delivery",
            extra={"not_started": outcome.not_started, "out_of_time": outcome.out_of_time},
        )
        count("CommandsNotStarted", outcome.not_started)
    add_metric("CommandWorkersInFlight", MetricUnit.Count, outcome.most_in_flight)
    for finished in outcome.finished:
        stripe_seconds = finished.result[1] if finished.ok and finished.result else 0.0
        if stripe_seconds:
            add_metric("StripeSecondsPerRecord", MetricUnit.Milliseconds, round(stripe_seconds * 1000, 1))
    touched = [f.result[0] for f in outcome.finished if f.ok and f.result and f.result[0]]
    outbox.publish_best_effort(main.db, main.publisher, touched)
    return outcome.batch_item_failures()


def _answered_before(db: Database, items: list[Item]) -> set[command_outcomes.CommandIdentity] | None:
    """The batch's records answered before (None: unknown, each record looks for itself)."""
    try:
        return command_outcomes.answered_among(
            db, [command_outcomes.CommandIdentity.of(item.record) for item in items]
        )
    except TransientError as exc:
        logger.warning("answered records not looked up for the batch", extra={"reason": str(exc)})
        return None


def _run_record(
    services: Services, item: Item, answered: set[command_outcomes.CommandIdentity] | None = None
) -> tuple[str | None, float]:
    take_stripe_seconds()
    identity = command_outcomes.CommandIdentity.of(item.record)
    # A re-delivered record (the mapping re-sends finished records after a failed one) gets its
    # first answer again; judged afresh it could contradict it (issue 16). The batch looked its
    # records up at once (``answered``): a record not among them has no answer to repeat.
    stored = (
        command_outcomes.reannounce(services.db, identity)
        if answered is None or identity in answered
        else None
    )
    if stored is not None:
        count("CommandRedelivered")
        logger.info(
            "re-delivered command: its first answer stands",
            extra={"offset": identity.offset, "event_id": stored.event_id, "requeued": stored.requeued},
        )
        return stored.order_key, take_stripe_seconds()
    with command_outcomes.answering(identity):
        order_key_written = handle_record(services, item.record)
    return order_key_written, take_stripe_seconds()


def _log_failure(finished: Finished) -> None:
    where = {"partition": finished.item.record.partition, "offset": finished.item.offset}
    if isinstance(finished.error, TransientError):
        logger.warning("record will be re-delivered", extra={**where, "reason": str(finished.error)})
    else:
        logger.error("unexpected failure; record will be re-delivered", extra=where, exc_info=finished.error)


def order_key(services: Services, item: Item) -> str:
    """What orders the records of a batch: the order id, or for a command naming only a
    payment, that payment's order (looked up); a record naming neither depends on nothing.
    Ids are in their storable form, as the refusals are keyed (storable_text.storable)."""
    record = item.record
    try:
        raw = record.decoded_value if record.get("value") is not None else None
    except (binascii.Error, ValueError):
        raw = None
    order_id, payment_id = command_references(raw)
    if order_id:
        return f"order:{order_id}"
    if payment_id:
        found = repository.find_order_id(services.db, order_id=None, payment_id=payment_id)
        return f"order:{found}" if found else f"payment:{payment_id}"
    return f"record:{item.partition}:{item.offset}"


def _invocation_end(context: Any) -> float | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return time.monotonic() + remaining() / 1000


def handle_record(services: Services, record: KafkaEventRecord) -> str | None:
    """Handle one record; returns the order key whose events were written, if any.
    Raises TransientError (or anything unexpected) to have the record re-delivered."""
    try:
        raw = record.decoded_value if record.get("value") is not None else None
    except (binascii.Error, ValueError) as exc:
        # Kept as it came (base64 text), so the dead letter still holds the record.
        send_dead_letter(services, record, str(record.get("value")).encode(), f"value is not base64: {exc}")
        return None
    try:
        command = parse_command(raw)
    except Unattributable as exc:
        send_dead_letter(services, record, raw, exc.reason)
        return None
    except Rejection as rejection:
        return _answer_rejection(services, rejection, raw or b"", defer_to_stored=True)
    logger.thread_safe_append_keys(  # the pool's threads each log their own record
        correlation_id=command.correlation_id, order_id=command.order_id, command_type=command.type
    )
    try:
        return _DISPATCH[command.type](services, command)
    except Rejection as rejection:
        return _answer_rejection(services, rejection, raw or b"", defer_to_stored=False)
    finally:
        logger.thread_safe_remove_keys(["correlation_id", "order_id", "command_type"])


def _answer_rejection(services: Services, rejection: Rejection, raw: bytes, *, defer_to_stored: bool) -> str:
    """Announce payment.failed for a refused command. For a command that could not even be
    parsed (``defer_to_stored``), an order that already has a payment is answered with its
    stored outcome instead: a bad copy of a command must not contradict what the payment is
    (a payment.failed while a hold exists would make the saga drop a held order)."""
    db = services.db
    # Whatever raised it, nothing unstorable reaches PostgreSQL or a Kafka key (parse_command
    # already gives the storable forms; this makes it hold for every path).
    for field in ("order_id", "payment_id", "correlation_id", "message"):
        if (text := getattr(rejection, field)) is not None:
            setattr(rejection, field, storable(text))
    count("CommandRejected")
    logger.info("command rejected", extra={"order_id": rejection.order_id, "error": rejection.code})
    order_key = rejection.order_id or rejection.payment_id or ""
    with db.transaction():
        existing = repository.get_by_order_id(db, rejection.order_id) if rejection.order_id else None
        if defer_to_stored and existing is not None:
            lifecycle.announce(db, existing, correlation_id=rejection.correlation_id)  # none while PENDING
            return existing.order_id
        body = PaymentFailed(
            order_id=rejection.order_id,
            payment_id=rejection.payment_id,
            error=rejection.code,
            message=rejection.message,
            stripe_code=rejection.stripe_code,
            status=existing.status.value if existing else None,
        )
        event_id = event_id_for_rejection(raw, rejection.code)
        envelope = event_envelope(
            "payment.failed", body, event_id=event_id, correlation_id=rejection.correlation_id
        )
        outbox.enqueue(db, envelope, order_id=order_key, payment_id=existing.payment_id if existing else None)
    return order_key
