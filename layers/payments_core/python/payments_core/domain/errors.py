"""The two kinds of failure every path distinguishes.

A ``TransientError`` means "nothing was decided, try the same input again later" (database or
Kafka unreachable, Stripe 5xx/429/network): the command path reports the record as a batch
item failure, the webhook path answers 500 so Stripe retries. A ``Rejection`` is a final,
specific answer (bad payload, declined card): it is announced, never retried.
"""

from __future__ import annotations


class TransientError(Exception):
    """Retry later: nothing has been half-done."""


class StatusChanged(TransientError):
    """The payment's status is no longer the one this use case read (a writer that lost its
    lock, a path that took none): nothing was written; the redelivery re-reads and re-decides."""


class Rejection(Exception):
    """A permanent, explained refusal, announced as ``payment.failed`` with ``code``."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        order_id: str | None = None,
        payment_id: str | None = None,
        correlation_id: str | None = None,
        stripe_code: str | None = None,
        decline_code: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.order_id = order_id
        self.payment_id = payment_id
        self.correlation_id = correlation_id
        self.stripe_code = stripe_code
        self.decline_code = decline_code
