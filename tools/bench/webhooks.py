"""make bench (d): signed Stripe webhooks through the payment_api handler in-process."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

from local.stack.lambda_runtime import FakeLambdaContext, load_handler
from local.stack.settings import REPO_ROOT, STRIPE_WEBHOOK_SECRET, WEBHOOK_PATH
from tools.bench.harness import (
    InstantStripe,
    authorize,
    make_services,
    run_batches,
)
from tools.bench.report import Report, Row, ms, percentile, say


def signed_api_event(body: str, secret: str) -> dict[str, Any]:
    """The REST proxy event the local API Gateway would build for Stripe's signed request."""
    from local.stack.api_events import ROUTES, build_event, compile_routes

    timestamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return build_event(
        method="POST",
        raw_path=WEBHOOK_PATH,
        header_items=[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Stripe-Signature", f"t={timestamp},v1={digest}"),
        ],
        body=body.encode(),
        source_ip="127.0.0.1",
        routes=compile_routes(ROUTES),
    )


def stripe_event(intent: Any) -> str:
    return json.dumps(
        {
            "id": f"evt_bench_{uuid.uuid4().hex[:20]}",
            "object": "event",
            "type": "payment_intent.amount_capturable_updated",
            "created": int(time.time()),
            "livemode": False,
            "data": {
                "object": {
                    "id": intent.id,
                    "object": "payment_intent",
                    "status": "requires_capture",
                    "amount": intent.amount,
                    "amount_capturable": intent.amount,
                    "capture_method": "manual",
                    "currency": "sgd",
                    "metadata": intent.metadata,
                }
            },
        }
    )


def bench_webhooks(report: Report, count: int) -> None:
    from payments_core.adapters import services as services_module

    say(f"(d) {count} signed webhooks (REQUIRES_ACTION -> AUTHORIZED) ...")
    # Setup, not measured: payments waiting for 3-D Secure, made through the command path.
    double = InstantStripe(outcome="requires_action")
    setup = make_services(double)
    orders = [authorize(f"bench-d-{uuid.uuid4()}", "cus_bench", "pm_bench") for _ in range(count)]
    run_batches(setup, orders, 100)
    setup.db.close()
    intents = list(double.intents.values())

    services_module.set_services(None)  # the function builds its own, as in Lambda
    handler = load_handler(REPO_ROOT / "functions" / "payment_api" / "app.py")
    context = FakeLambdaContext(function_name="payment_api")
    warm = signed_api_event(stripe_event(intents[0]), STRIPE_WEBHOOK_SECRET)
    handler(warm, context)  # the first request opens the connections; not counted
    samples: list[float] = []
    outcomes: dict[str, int] = {}
    for intent in intents[1:]:
        event = signed_api_event(stripe_event(intent), STRIPE_WEBHOOK_SECRET)
        started = time.perf_counter()
        response = handler(event, context)
        samples.append(time.perf_counter() - started)
        key = str(response.get("statusCode"))
        outcomes[key] = outcomes.get(key, 0) + 1
    how = "functions/payment_api handler in-process (API Gateway event, signature verified)"
    outcome_text = ", ".join(f"HTTP {k}: {v}" for k, v in sorted(outcomes.items()))
    report.add(
        Row("webhook_p50_ms", "webhook p50", ms(percentile(samples, 50)), "ms", note=f"{how}; {outcome_text}")
    )
    p99 = ms(percentile(samples, 99))
    report.add(Row("webhook_p99_ms", "webhook p99", p99, "ms", "<= 15 ms", p99 <= 15))
