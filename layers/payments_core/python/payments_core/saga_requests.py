"""The complete-order saga's HTTP requests that move money: release and revert.

They never call Stripe themselves. They queue the same ``release_payment`` / ``revert_payment``
command the saga could send over Kafka, keyed by the order so one order's commands stay in
order, and answer 202; the command path decides under the order's lock and announces the
outcome on payment_events. So however HTTP and Kafka requests interleave, one path moves money,
once. What can be answered at once without touching money is answered at once: an unknown
payment (404), one that can no longer be released (409), one already where the request would
take it (200, nothing queued, nothing re-announced)."""

from __future__ import annotations

import json
import uuid
from http import HTTPStatus
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from payments_core import archive, escrow, repository
from payments_core.contracts import (
    MAX_AMOUNT_CENTS,
    UNSTORABLE_TEXT_MESSAGE,
    RevertPayment,
    describe_errors,
    escape_free_text,
    has_unstorable_text,
    utc_now_iso,
)
from payments_core.domain import Payment, PaymentStatus
from payments_core.errors import TransientError
from payments_core.kafka_gateway import OutgoingMessage
from payments_core.observability import count, logger
from payments_core.queries import NOT_FOUND, error
from payments_core.services import Services

S = PaymentStatus
BAD_REQUEST = "BAD_REQUEST"
PAYMENT_NOT_RELEASABLE = "PAYMENT_NOT_RELEASABLE"
API_SOURCE = "payment-api"  # the original service marked HTTP-queued commands so

Answer = tuple[int, dict[str, Any]]


class ReleaseRequest(BaseModel):
    """Body of ``POST /payment/{payment_id}/release``."""

    model_config = ConfigDict(extra="ignore")
    runner_id: str = Field(min_length=1, max_length=255, description="The runner's Clerk user id")
    runner_connect_account_id: str = Field(
        min_length=1, max_length=255, description="The runner's Stripe Connect account (acct_…)"
    )
    amount_to_capture: StrictInt | None = Field(
        default=None, gt=0, le=MAX_AMOUNT_CENTS, description="Extension: partial capture, cents"
    )


class RevertRequest(BaseModel):
    """Body of ``POST /payment/{payment_id}/revert`` (optional)."""

    model_config = ConfigDict(extra="ignore")
    reason: str | None = Field(default=None, description="Cut to 1000 characters, never refused")


class QueuedAnswer(BaseModel):
    success: bool = True
    message: str
    correlation_id: str = Field(description="Carried by the payment_events answer to this request")
    status: str = Field(description="Extension: the payment's status when the request was taken")
    queued: bool = Field(description="Extension: false when nothing needed doing")


class ConflictAnswer(BaseModel):
    success: bool = False
    error: str
    message: str
    status: str = Field(description="The payment's status")


def request_release(services: Services, payment_id: str, body: bytes) -> Answer:
    """``POST /payment/{payment_id}/release``: (HTTP status, body). Raises BadRequest."""
    release = _parse(ReleaseRequest, body, required=True)
    payment = _find(services, payment_id)
    if payment is None:
        return HTTPStatus.NOT_FOUND, error(NOT_FOUND, "Payment not found")
    if payment.status.is_final:
        message = f"payment is {payment.status.value}: it can no longer be released"
        return HTTPStatus.CONFLICT, _conflict(message, payment)
    if escrow.release_is_complete(payment):
        return HTTPStatus.OK, _nothing_to_do("payment already released", payment)
    # SUCCEEDED without a recorded release: captured (by a release that stopped before paying
    # the runner, or seen by a webhook first); the command finishes paying the runner.
    payload = {"payment_id": payment.payment_id, **release.model_dump(exclude_none=True)}
    return _queue(services, "release_payment", payment, payload, "release queued")


def request_revert(services: Services, payment_id: str, body: bytes) -> Answer:
    """``POST /payment/{payment_id}/revert``: (HTTP status, body). Raises BadRequest."""
    revert = _parse(RevertRequest, body, required=False)
    payment = _find(services, payment_id)
    if payment is None:
        return HTTPStatus.NOT_FOUND, error(NOT_FOUND, "Payment not found")
    if payment.status is S.REVERTED:
        return HTTPStatus.OK, _nothing_to_do("payment already reverted", payment)
    if payment.status is S.FAILED:
        return HTTPStatus.OK, _nothing_to_do("payment failed: nothing is held, nothing to give back", payment)
    payload: dict[str, Any] = {"payment_id": payment.payment_id}
    if revert.reason is not None:
        # Cut exactly as the command path would, so the queued command is never refused.
        payload["reason"] = RevertPayment(payment_id=payment.payment_id, reason=revert.reason).reason
    return _queue(services, "revert_payment", payment, payload, "revert queued")


def _find(services: Services, payment_id: str) -> Payment | None:
    """The payment, live or archived (an archived one is over: answered at once or refused by
    its command, never moved)."""
    return repository.get_by_payment_id(services.db, payment_id) or archive.find(
        services.db, payment_id=payment_id
    )


def _queue(
    services: Services, command_type: str, payment: Payment, payload: dict[str, Any], what: str
) -> Answer:
    correlation_id = str(uuid.uuid4())
    envelope = {
        "type": command_type,
        "correlation_id": correlation_id,
        "timestamp": utc_now_iso(),
        "source": API_SOURCE,
        "payload": payload,
    }
    message = OutgoingMessage(
        topic=services.settings.payment_commands_topic,
        key=payment.order_id,
        value=json.dumps(envelope, separators=(",", ":")).encode("utf-8"),
        headers=(("command_type", command_type.encode()),),
    )
    # Acknowledged by every in-sync replica before the 202: a 202 means the command is safe.
    (failure,) = services.publisher.publish([message])
    if failure is not None:
        raise TransientError(f"could not queue {command_type}: {failure}")
    count("CommandQueuedOverHttp")
    logger.info(
        "command queued over HTTP",
        extra={"command_type": command_type, "order_id": payment.order_id, "correlation_id": correlation_id},
    )
    answer = QueuedAnswer(
        message=what, correlation_id=correlation_id, status=payment.status.value, queued=True
    )
    return HTTPStatus.ACCEPTED, answer.model_dump()


def _nothing_to_do(message: str, payment: Payment) -> dict[str, Any]:
    # Nothing queued, so nothing will carry a new correlation id: name the payment's own.
    correlation_id = payment.correlation_id or str(uuid.uuid4())
    answer = QueuedAnswer(
        message=message, correlation_id=correlation_id, status=payment.status.value, queued=False
    )
    return answer.model_dump()


def _conflict(message: str, payment: Payment) -> dict[str, Any]:
    return ConflictAnswer(
        error=PAYMENT_NOT_RELEASABLE, message=message, status=payment.status.value
    ).model_dump()


class BadRequest(Exception):
    """A missing or malformed body: 400 BAD_REQUEST with ``reason``; nothing was read or written."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_Request = TypeVar("_Request", ReleaseRequest, RevertRequest)


def _parse(model: type[_Request], body: bytes, *, required: bool) -> _Request:
    try:
        return model.model_validate(_json_object(body, required=required))
    except ValidationError as exc:
        raise BadRequest(describe_errors(exc)) from None


def _json_object(body: bytes, *, required: bool) -> dict[str, Any]:
    if not body.strip():
        if required:
            raise BadRequest("a JSON body with runner_id and runner_connect_account_id is required")
        return {}
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest("body must be a JSON object")
    escape_free_text(document)
    if has_unstorable_text(document):  # the queued command would be refused
        raise BadRequest(UNSTORABLE_TEXT_MESSAGE)
    return document
