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
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from payments_core.adapters.kafka.kafka_gateway import OutgoingMessage
from payments_core.adapters.postgres import archive, repository
from payments_core.adapters.services import Services
from payments_core.domain.command_parsing import describe_error_list
from payments_core.domain.contracts import RevertPayment, WholeCents
from payments_core.domain.errors import TransientError
from payments_core.domain.events import utc_now_iso
from payments_core.domain.payment import Payment, PaymentStatus
from payments_core.domain.storable_text import UNSTORABLE_TEXT_MESSAGE, has_unstorable_text, storable
from payments_core.observability import count, logger
from payments_core.usecases import releases
from payments_core.usecases.queries import NOT_FOUND, error

S = PaymentStatus
BAD_REQUEST = "BAD_REQUEST"
PAYMENT_NOT_RELEASABLE = "PAYMENT_NOT_RELEASABLE"
API_SOURCE = "payment-api"  # the original service marked HTTP-queued commands so

Answer = tuple[int, dict[str, Any]]


MISSING_BODY = "a JSON body with runner_id and runner_connect_account_id is required"
NOT_AN_OBJECT = "body must be a JSON object"
# The document's pattern says "no NUL". It cannot also name lone surrogates: Rust-based JSON
# Schema validators (schemathesis's among them) cannot compile a surrogate range, and drop the
# whole pattern. They are refused too, as the field's description says.
_STORABLE_PATTERN = r"^[^\u0000]*$"
_STORABLE_NOTE = "; no NUL (\\u0000) or lone UTF-16 surrogate: PostgreSQL text cannot hold them"


def _storable_only(value: Any) -> Any:
    # PostgreSQL text holds neither: the queued command would be refused, so the request is.
    if isinstance(value, str) and has_unstorable_text(value):
        raise PydanticCustomError("unstorable_text", UNSTORABLE_TEXT_MESSAGE)
    return value


StorableText = Annotated[
    str, BeforeValidator(_storable_only), Field(json_schema_extra={"pattern": _STORABLE_PATTERN})
]

# Free text a compensation is never refused for: NULs and lone surrogates are written as escapes.
FreeText = Annotated[str, BeforeValidator(lambda v: storable(v) if isinstance(v, str) else v)]


class ReleaseRequest(BaseModel):
    """Body of ``POST /payment/{payment_id}/release``. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    runner_id: StorableText = Field(
        min_length=1, max_length=255, description="The runner's Clerk user id" + _STORABLE_NOTE
    )
    runner_connect_account_id: StorableText = Field(
        min_length=1,
        max_length=255,
        description="The runner's Stripe Connect account (acct_…)" + _STORABLE_NOTE,
    )
    amount_to_capture: WholeCents | None = Field(
        default=None, description="Extension: partial capture, cents (a whole number: 438.0 is 438)"
    )


class RevertRequest(BaseModel):
    """Body of ``POST /payment/{payment_id}/revert`` (optional). Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    reason: FreeText | None = Field(default=None, description="Cut to 1000 characters, never refused")


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


def request_release(services: Services, payment_id: str, release: ReleaseRequest) -> Answer:
    """``POST /payment/{payment_id}/release``: (HTTP status, body)."""
    payment = _find(services, payment_id)
    if payment is None:
        return HTTPStatus.NOT_FOUND, error(NOT_FOUND, "Payment not found")
    if payment.status.is_final:
        message = f"payment is {payment.status.value}: it can no longer be released"
        return HTTPStatus.CONFLICT, _conflict(message, payment)
    if releases.release_is_complete(payment):
        return HTTPStatus.OK, _nothing_to_do("payment already released", payment)
    # SUCCEEDED without a recorded release: captured (by a release that stopped before paying
    # the runner, or seen by a webhook first); the command finishes paying the runner.
    payload = {"payment_id": payment.payment_id, **release.model_dump(exclude_none=True)}
    return _queue(services, "release_payment", payment, payload, "release queued")


def request_revert(services: Services, payment_id: str, revert: RevertRequest | None) -> Answer:
    """``POST /payment/{payment_id}/revert``: (HTTP status, body); no body is no reason."""
    revert = revert or RevertRequest()
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


def describe_body_errors(errors: Sequence[Mapping[str, Any]], document: Any = None) -> str:
    """The 400's message for a body the resolver refused (its errors' ``loc`` start with
    "body"; ``document``: the text that is not JSON), in the words the saga has always been
    answered with."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        position = tuple(first.get("loc", ()))[1:2]
        if isinstance(document, str) and position and isinstance(position[0], int):
            reason = str(json.JSONDecodeError(reason, document, position[0]))
        return f"body is not JSON: {reason}"
    if tuple(first.get("loc", ())) == ("body",):
        return MISSING_BODY if first.get("type") == "missing" else NOT_AN_OBJECT
    return describe_error_list([{**e, "loc": tuple(e.get("loc", ()))[1:]} for e in errors])
