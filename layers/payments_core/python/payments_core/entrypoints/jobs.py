"""The scheduled and operator-run jobs, as their functions call them: each turns the Lambda
context's remaining time into the deadline its use case stops starting work at."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from payments_core.usecases import retention
from payments_core.usecases.reconciliation import reconcile
from payments_core.usecases.redrive import handle_redrive
from payments_core.usecases.relay import RELAY_MARGIN_S, relay_outbox

RemainingMs = Callable[[], int]


def invocation_deadline(remaining_ms: RemainingMs | None, margin_s: float = 20.0) -> float | None:
    """The monotonic time a scheduled run stops starting work (leaving ``margin_s``)."""
    if remaining_ms is None:
        return None
    return time.monotonic() + remaining_ms() / 1000 - margin_s


def run_reconciler(remaining_ms: RemainingMs | None) -> dict[str, int]:
    """Every few minutes: the payments whose Stripe state may have moved without a webhook."""
    return reconcile(deadline=invocation_deadline(remaining_ms))


def run_outbox_relay(remaining_ms: RemainingMs | None) -> dict[str, int]:
    """Every minute: publish the events the command or webhook path could not publish at once."""
    return relay_outbox(deadline=invocation_deadline(remaining_ms, RELAY_MARGIN_S))


def run_retention(remaining_ms: RemainingMs | None) -> dict[str, object]:
    """Daily: delete or archive what is past its retention, in small batches."""
    return retention.run(deadline=invocation_deadline(remaining_ms, margin_s=10.0)).as_dict()


def run_redrive(event: dict[str, Any]) -> dict[str, Any]:
    """On an operator's request: list the commands' dead letters or re-queue the chosen ones."""
    return handle_redrive(event)
