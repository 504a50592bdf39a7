"""Who may be paid: a release's payout destination is checked before anything moves.

The saga names the runner and a Connect account; neither is trusted. Before a capture or a
transfer, the destination must be the runner's own account in campusG's records (its user
service), the runner must not be the order's customer, and Stripe must confirm the account is
connected to the platform and can receive transfers. Anything else is refused for good
(``PAYOUT_DESTINATION_REFUSED``) with nothing captured: the hold stays as it is, and reverting
it is the saga's decision. A user service or Stripe that does not answer is transient: the
release is retried.

The check runs under the order's lease, each time a release is about to move money (its answer
may change: an account can be disconnected between two releases), so a redelivered release is
checked again against the destination it would pay: the one already recorded on the payment, if
any (the first release's runner stands), else the one it names.

Stripe's part of the verdict is kept (``connected_accounts``): an account Stripe called able to
receive transfers within ``payout_account_check_ttl_seconds`` (1 h by default) is not read
again, so a release to a known-good account costs no Stripe read. A negative or older verdict
is read again. The trade-off: an account disconnected (or its transfers capability lost) within
that time passes this check; Stripe then refuses the transfer itself (``account_invalid`` /
``insufficient_capabilities_for_transfer``), so nobody else is paid, but the capture has been
made: the release completes with the transfer's failure recorded and ``TransferFailed``
alarmed, and the runner is paid by an operator or the money given back by a revert. The user
service's part (whose account it is) is asked on every release.
"""

from __future__ import annotations

from contextlib import suppress
from typing import NoReturn

from payments_core.adapters.postgres import repository
from payments_core.adapters.services import Services
from payments_core.domain.contracts import PAYOUT_DESTINATION_REFUSED
from payments_core.domain.errors import Rejection, TransientError
from payments_core.domain.payment import Payment
from payments_core.observability import count, logger

VELOCITY_WINDOW_SECONDS = 3600


def verify_destination(
    services: Services, payment: Payment, runner_id: str | None, account_id: str | None, cid: str | None
) -> None:
    """Raise Rejection(PAYOUT_DESTINATION_REFUSED) unless ``account_id`` may be paid for this
    payment as ``runner_id``'s; TransientError when an outside service does not answer.
    No account: nobody will be paid, nothing to check."""
    if not account_id:
        return
    if not runner_id:
        _refuse(payment, cid, runner_id, account_id, "a payout account was named without a runner")
    if payment.clerk_user_id and runner_id == payment.clerk_user_id:
        _refuse(payment, cid, runner_id, account_id, "the runner is the order's customer")
    user = services.users.find_user(runner_id)
    if user is None:
        _refuse(payment, cid, runner_id, account_id, "the runner is unknown to campusG's user service")
    if user.stripe_customer_id and user.stripe_customer_id == payment.stripe_customer_id:
        _refuse(payment, cid, runner_id, account_id, "the runner is the order's customer")
    if user.stripe_connect_account_id != account_id:
        _refuse(payment, cid, runner_id, account_id, "the account is not the runner's Connect account")
    ttl = services.settings.payout_account_check_ttl_seconds
    if ttl > 0 and repository.account_verified_within(services.db, account_id, ttl):
        return
    account = services.stripe.connected_account(account_id)
    if ttl > 0:
        repository.record_account_verdict(
            services.db,
            account_id,
            account.transfers_capability if account else None,
            account.payouts_enabled if account else False,
        )
    if account is None:
        _refuse(payment, cid, runner_id, account_id, "the account is not connected to the platform")
    if not account.can_receive_transfers:
        _refuse(
            payment,
            cid,
            runner_id,
            account_id,
            f"the account cannot receive transfers (transfers capability: {account.transfers_capability})",
        )


def _refuse(payment: Payment, cid: str | None, runner_id: str | None, account_id: str, why: str) -> NoReturn:
    count("PayoutDestinationRefused")
    logger.error(
        "payout destination refused: nothing captured or transferred",
        extra={
            "order_id": payment.order_id,
            "payment_id": payment.payment_id,
            "runner_id": runner_id,
            "runner_connect_account_id": account_id,
            "reason": why,
        },
    )
    raise Rejection(
        PAYOUT_DESTINATION_REFUSED,
        f"payout destination refused: {why}; nothing was captured or transferred",
        order_id=payment.order_id,
        payment_id=payment.payment_id,
        correlation_id=cid,
    )


def note_velocity(services: Services, account_id: str | None) -> None:
    """After a transfer: more transfers to this account within the hour than
    PAYOUT_VELOCITY_MAX_PER_HOUR raise PayoutVelocityHigh. Only an alarm: the payout is made,
    and a database hiccup here costs the count, never the release."""
    if not account_id:
        return
    with suppress(TransientError):
        recent = repository.transfers_to_account(services.db, account_id, VELOCITY_WINDOW_SECONDS)
        limit = services.settings.payout_velocity_max_per_hour
        if recent > limit:
            count("PayoutVelocityHigh")
            logger.warning(
                "unusual payout velocity to one Connect account",
                extra={
                    "runner_connect_account_id": account_id,
                    "transfers_last_hour": recent,
                    "limit": limit,
                },
            )
