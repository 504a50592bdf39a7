"""The set-up every benchmark section shares: stack, environment, Stripe double, commands, batches.

What every benchmark section sets up the same way: the stack and its environment, the
service's logs sent to a file, a zero-latency Stripe double, authorize commands as the saga
sends them, MSK events, the service's gateways, batches run through the command handler."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.stack import control as stack
from local.stack.lambda_runtime import FakeLambdaContext
from local.stack.settings import REPO_ROOT, STRIPE_SECRET_KEY, client_env
from tools.bench.report import say

SERVERS = ("kafka", "postgres", "moto", "localstripe", "stripe-mock")
# Stripe's distance for the sections that measure at Stripe's speed (g, i)
STRIPE_LATENCY_S = 0.3


def ensure_stack() -> None:
    down = [name for name in SERVERS if not stack.is_running(name)]
    if down:
        say(f"local stack not running ({', '.join(down)} down): starting it")
        subprocess.run([sys.executable, "-m", "local.stack", "up"], check=True, cwd=REPO_ROOT)


def apply_env() -> None:
    os.environ.update(client_env())
    from payments_core.config import get_settings

    get_settings.cache_clear()


@contextmanager
def service_logs_to(path: Path) -> Iterator[None]:
    """The service logs every command at INFO and prints its metrics (EMF), as in Lambda; here
    both go to a file, so their cost stays in the figures without flooding the terminal."""
    from payments_core.observability import logger

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as sink, redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Powertools' "no application metrics" on idle flushes
        handler = logger.registered_handler
        previous = handler.setStream(sink)  # type: ignore[attr-defined]
        try:
            yield
        finally:
            handler.setStream(previous)  # type: ignore[attr-defined]


# ---- Stripe doubles and commands -----------------------------------------------------------------


class InstantStripe:
    """The StripeGateway protocol answered from memory with zero latency."""

    def __init__(self, outcome: str = "requires_capture") -> None:
        from payments_core.adapters.stripe_api.stripe_gateway import IntentSnapshot

        self._snapshot = IntentSnapshot
        self.outcome = outcome
        self.intents: dict[str, Any] = {}

    def _hold(self, payment: Any, status: str) -> Any:
        intent = self._snapshot(
            id=f"pi_bench_{uuid.uuid4().hex[:20]}",
            status=status,
            amount=payment.amount_cents,
            amount_capturable=payment.amount_cents if status == "requires_capture" else 0,
            metadata={"order_id": payment.order_id, "payment_id": payment.payment_id},
            next_action_url="https://hooks.stripe.test/3ds" if status == "requires_action" else None,
        )
        self.intents[intent.id] = intent
        return intent

    def create_hold(self, payment: Any) -> Any:
        return self._hold(payment, self.outcome)

    def find_hold(self, payment: Any) -> Any:
        if payment.payment_intent_id:
            return self.intents.get(payment.payment_intent_id)
        return next((i for i in self.intents.values() if i.metadata["order_id"] == payment.order_id), None)

    def retrieve(self, payment_intent_id: str) -> Any:
        return self.intents[payment_intent_id]

    def capture(self, payment: Any, amount_to_capture: int | None) -> Any:
        from dataclasses import replace

        intent = replace(self.intents[payment.payment_intent_id], status="succeeded")
        self.intents[intent.id] = intent
        return intent

    def cancel(self, payment: Any) -> Any:
        from dataclasses import replace

        intent = replace(self.intents[payment.payment_intent_id], status="canceled")
        self.intents[intent.id] = intent
        return intent

    def refund(self, payment: Any, amount_cents: int | None = None) -> str:
        return f"re_bench_{uuid.uuid4().hex[:16]}"

    def transfer(self, payment: Any, amount_cents: int, destination: str) -> str:
        return f"tr_bench_{uuid.uuid4().hex[:16]}"

    def find_transfer(self, payment: Any) -> str | None:
        return None

    def reverse_transfer(self, payment: Any, amount_cents: int | None = None) -> str:
        return f"trr_bench_{uuid.uuid4().hex[:16]}"


def authorize(order_id: str, customer_id: str, payment_method_id: str) -> dict[str, Any]:
    """authorize_payment exactly as the create-order saga sends it."""
    return {
        "type": "authorize_payment",
        "correlation_id": str(uuid.uuid4()),
        "timestamp": "2025-03-31T09:12:45.123456",
        "payload": {
            "order_id": order_id,
            "customer": {
                "clerkUserId": "user_bench",
                "stripeCustomerId": customer_id,
                "userStripeCard": {"payment_method_id": payment_method_id},
            },
            "order": {"amount": 1299, "description": f"Payment for order {order_id}"},
            "return_url": "https://localhost:5173/customer/history",
        },
    }


def msk_event(commands: list[dict[str, Any]], first_offset: int) -> dict[str, Any]:
    records: list[dict[str, Any]] = [
        {
            "topic": "payment_commands",
            "partition": 0,
            "offset": first_offset + i,
            "timestamp": int(time.time() * 1000),
            "timestampType": "CREATE_TIME",
            "key": None,
            "value": base64.b64encode(json.dumps(c).encode()).decode(),
            "headers": [],
        }
        for i, c in enumerate(commands)
    ]
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": "arn:aws:kafka:ap-southeast-1:123456789012:cluster/local/1",
        "bootstrapServers": "127.0.0.1:9092",
        "records": {"payment_commands-0": records},
    }


def make_services(stripe: Any) -> Any:
    from payments_core.adapters.kafka.kafka_gateway import KafkaEventPublisher
    from payments_core.adapters.postgres.db import Database
    from payments_core.adapters.services import Services
    from payments_core.config import get_settings

    settings = get_settings()
    return Services(
        db=Database(settings), stripe=stripe, publisher=KafkaEventPublisher(settings), settings=settings
    )


@contextmanager
def record_timer(samples: list[float]) -> Iterator[None]:
    """Time every record handled by handle_command_batch (the module-level function it calls)."""
    from payments_core.entrypoints import commands

    original = commands.handle_record

    def timed(services: Any, record: Any) -> str | None:
        started = time.perf_counter()
        try:
            return original(services, record)
        finally:
            samples.append(time.perf_counter() - started)

    commands.handle_record = timed
    try:
        yield
    finally:
        commands.handle_record = original


@dataclass
class BatchRun:
    per_command: list[float]  # batch wall time / batch size, one per batch
    per_record: list[float]
    total_seconds: float
    item_failures: int


def run_batches(services: Any, commands: list[dict[str, Any]], batch_size: int) -> BatchRun:
    from payments_core.entrypoints.commands import handle_command_batch

    context = FakeLambdaContext(function_name="authorize_payment", timeout_seconds=900)
    per_command: list[float] = []
    per_record: list[float] = []
    failures = 0
    started = time.perf_counter()
    with record_timer(per_record):
        for offset in range(0, len(commands), batch_size):
            batch = commands[offset : offset + batch_size]
            event = msk_event(batch, offset)
            t0 = time.perf_counter()
            response = handle_command_batch(event, context, services)
            per_command.append((time.perf_counter() - t0) / len(batch))
            failures += len(response.get("batchItemFailures") or [])
    return BatchRun(per_command, per_record, time.perf_counter() - started, failures)


def localstripe_card(number: str = "4242424242424242") -> tuple[str, str]:
    import stripe

    client = stripe.StripeClient(
        STRIPE_SECRET_KEY, base_addresses={"api": os.environ["STRIPE_API_BASE"]}, max_network_retries=0
    )
    customer = client.v1.customers.create(params={"email": f"bench-{uuid.uuid4().hex[:8]}@campus.test"})
    method = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    client.v1.payment_methods.attach(method.id, params={"customer": customer.id})
    return customer.id, method.id
