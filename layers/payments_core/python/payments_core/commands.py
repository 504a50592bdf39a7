"""The command path: an MSK batch from payment_commands, one record at a time.

Outcome per record: handled (events in the outbox), rejected (payment.failed announced),
dead-lettered (no order to announce to), or a batch item failure (transient: the event source
mapping re-delivers it and everything after it in its partition). After the batch, the events
of the orders it touched are published; what fails to publish stays in the outbox for the relay.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEventRecord

from payments_core import authorization, escrow, lifecycle, outbox, repository
from payments_core.contracts import Command, PaymentFailed, Unattributable, event_envelope, parse_command
from payments_core.dead_letters import send_dead_letter
from payments_core.domain import event_id_for_rejection
from payments_core.errors import Rejection, TransientError
from payments_core.observability import count, logger
from payments_core.services import Services, get_services

_DISPATCH: dict[str, Callable[[Services, Command], str]] = {
    "authorize_payment": authorization.authorize,
    "release_payment": escrow.release,
    "revert_payment": escrow.revert,
}

_processor = BatchProcessor(event_type=EventType.Kafka, raise_on_entire_batch_failure=False)


def handle_command_batch(
    event: dict[str, Any], context: Any, services: Services | None = None
) -> dict[str, Any]:
    """Entry point of the authorize function."""
    services = services or get_services()
    touched: list[str] = []

    def record_handler(record: KafkaEventRecord) -> None:
        where = {"partition": record.partition, "offset": record.offset}
        try:
            order_key = handle_record(services, record)
        except TransientError as exc:
            logger.warning("record will be re-delivered", extra={**where, "reason": str(exc)})
            raise
        except Exception:
            logger.exception("unexpected failure; record will be re-delivered", extra=where)
            raise
        if order_key:
            touched.append(order_key)

    response = process_partial_response(
        event=event, record_handler=record_handler, processor=_processor, context=context
    )
    outbox.publish_best_effort(services.db, services.publisher, touched)
    return dict(response)


def handle_record(services: Services, record: KafkaEventRecord) -> str | None:
    """Handle one record; returns the order key whose events were written, if any.
    Raises TransientError (or anything unexpected) to have the record re-delivered."""
    raw: bytes | None = None
    try:
        raw = record.decoded_value if record.get("value") is not None else None
        command = parse_command(raw)
    except Unattributable as exc:
        send_dead_letter(services, record, raw, exc.reason)
        return None
    except (binascii.Error, ValueError) as exc:
        send_dead_letter(services, record, raw, f"value is not base64: {exc}")
        return None
    except Rejection as rejection:
        return _answer_rejection(services, rejection, raw or b"", defer_to_stored=True)
    logger.append_keys(
        correlation_id=command.correlation_id, order_id=command.order_id, command_type=command.type
    )
    try:
        return _DISPATCH[command.type](services, command)
    except Rejection as rejection:
        return _answer_rejection(services, rejection, raw or b"", defer_to_stored=False)
    finally:
        logger.remove_keys(["correlation_id", "order_id", "command_type"])


def _answer_rejection(services: Services, rejection: Rejection, raw: bytes, *, defer_to_stored: bool) -> str:
    """Announce payment.failed for a refused command. For a command that could not even be
    parsed (``defer_to_stored``), an order that already has a payment is answered with its
    stored outcome instead: a bad copy of a command must not contradict what the payment is
    (a payment.failed while a hold exists would make the saga drop a held order)."""
    db = services.db
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
