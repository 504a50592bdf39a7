"""make bench-reconciler: the reconciler's checks/s and the final payments a day it keeps up with.

How fast the reconciler checks payments against Stripe, and what rate of final payments a
day a run every 5 minutes keeps up with (issue 19).

    python -m tools.bench.reconciler [--finals 200] [--waiting 50] [--reads-per-second 10]

    (make bench-reconciler; starts the stack when it is not running)

On the local stack, with the stack's scheduler stopped for the run (restarted after):
- ``--finals`` orders authorized at localstripe through the command handler, then reverted
  (the hold canceled): each becomes REVERTED and due for the settlement audit, which every
  final payment gets; their audits are made due at once;
- ``--waiting`` more holds left AUTHORIZED and aged past RECONCILE_AUTHORIZED_AFTER_SECONDS: a
  stale check each (still held at Stripe: looked at again later);
- one ``reconciliation.reconcile`` run with AUDIT_STRIPE_READS_PER_SECOND at
  ``--reads-per-second`` (the deployed default, 10), Stripe ``--latency-ms`` away (a proxy
  in front of localstripe; 300 is about real Stripe's distance), and one more run right after
  it (which must find nothing of these: every check was scheduled forward).
Reports checks per second, Stripe calls per check, and from them the final payments a day
the reconciler keeps up with: one audit each, in runs of 220 s (the function's 4 minutes less
its 20 s margin) every 5 minutes, 288 a day; against the old fixed 50 per status per run
(14,400 a day). Localstripe answers about 15 requests per second on one core: a pace above
that measures localstripe, not the service."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

from local.stack import control as stack
from local.stack.processes import rel
from local.stack.settings import REPO_ROOT
from tools.bench.harness import (
    apply_env,
    authorize,
    ensure_stack,
    localstripe_card,
    make_services,
    msk_event,
    service_logs_to,
)

RUN_SECONDS = 240 - 20  # the reconciler function's timeout less invocation_deadline's margin
RUNS_A_DAY = 24 * 60 // 5
OLD_FIXED_PER_DAY = 50 * RUNS_A_DAY  # the old reconciler: 50 per status per run
ORDERS_PER_CUSTOMER = 5  # the audit lists a customer's PaymentIntents: campus-sized lists


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _orders(services: Any, count: int, first_offset: int) -> list[str]:
    from payments_core.entrypoints.commands import handle_command_batch

    orders: list[str] = []
    commands: list[dict[str, Any]] = []
    for i in range(count):
        if i % ORDERS_PER_CUSTOMER == 0:
            customer_id, method_id = localstripe_card()
        order_id = f"bench-r-{uuid.uuid4()}"
        orders.append(order_id)
        commands.append(authorize(order_id, customer_id, method_id))
    for start in range(0, count, 50):
        answer = handle_command_batch(
            msk_event(commands[start : start + 50], first_offset + start), None, services
        )
        if answer["batchItemFailures"]:
            raise SystemExit(
                f"authorize failed for {len(answer['batchItemFailures'])} records: is localstripe up?"
            )
    return orders


def _revert(services: Any, orders: list[str], first_offset: int) -> None:
    from payments_core.entrypoints.commands import handle_command_batch

    commands = [
        {
            "type": "revert_payment",
            "correlation_id": str(uuid.uuid4()),
            "timestamp": "2025-03-31T09:12:45",
            "payload": {"order_id": o, "reason": "bench"},
        }
        for o in orders
    ]
    for start in range(0, len(commands), 50):
        handle_command_batch(msk_event(commands[start : start + 50], first_offset + start), None, services)


def _looked_at_since(db: Any, orders: list[str], since: Any) -> int:
    """How many of these payments a check wrote to (reconciled_at) after ``since``."""
    rows = db.query(
        "SELECT count(*) AS n FROM payments WHERE order_id = ANY(CAST(:o AS text[])) AND reconciled_at > :t",
        o=orders,
        t=since,
    )
    return int(rows[0]["n"])


def measure(finals: int, waiting: int, reads_per_second: float, latency_ms: float) -> dict[str, Any]:
    import dataclasses

    from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
    from payments_core.config import get_settings
    from payments_core.usecases.reconciliation import reconcile

    from local.doubles.fault_proxy import StripeFaultProxy

    settings = get_settings()
    services = make_services(StripeApiGateway(settings))
    db = services.db
    _say("draining what earlier runs and tests left due (unpaced) ...")
    reconcile(
        dataclasses.replace(
            services, settings=dataclasses.replace(settings, audit_stripe_reads_per_second=1000)
        )
    )
    offset = int(time.time() * 1000) % 1_000_000_000
    _say(f"authorizing {finals + waiting} orders at localstripe, reverting {finals} ...")
    final_orders = _orders(services, finals, offset)
    waiting_orders = _orders(services, waiting, offset + finals)
    _revert(services, final_orders, offset + finals + waiting)
    reverted = db.query(
        "SELECT count(*) AS n FROM payments WHERE order_id = ANY(CAST(:o AS text[])) AND status = 'REVERTED'",
        o=final_orders,
    )[0]["n"]
    db.execute(
        "UPDATE payments SET audit_due_at = now() WHERE order_id = ANY(CAST(:o AS text[]))", o=final_orders
    )
    db.execute(
        "UPDATE payments SET updated_at = now() - make_interval(secs => :age)"
        " WHERE order_id = ANY(CAST(:o AS text[]))",
        age=float(settings.reconcile_authorized_after_seconds + 3600),
        o=waiting_orders,
    )
    distant = StripeFaultProxy(settings.stripe_api_base, latency_ms=latency_ms).start()
    run_settings = dataclasses.replace(
        settings, audit_stripe_reads_per_second=reads_per_second, stripe_api_base=distant.url
    )
    paced = dataclasses.replace(services, settings=run_settings, stripe=StripeApiGateway(run_settings))
    _say(f"one reconciler run at {reads_per_second:g} Stripe calls/s, Stripe {latency_ms:g} ms away ...")
    try:
        started = time.monotonic()
        outcomes = reconcile(paced)
        elapsed = time.monotonic() - started
        mark = db.query("SELECT now() AS t")[0]["t"]
        again = reconcile(paced)
        next_ours = _looked_at_since(db, final_orders + waiting_orders, mark)
    finally:
        distant.stop()
    checks = sum(
        n for k, n in outcomes.items() if k not in ("skipped_locked", "lost_calls_flagged", "stripe_calls")
    )
    calls = outcomes.get("stripe_calls", 0)
    per_second = checks / elapsed
    calls_per_check = calls / checks if checks else 0.0
    db.execute(  # the aged holds: young again, so the stack's own runs leave them be
        "UPDATE payments SET updated_at = now() WHERE order_id = ANY(CAST(:o AS text[]))", o=waiting_orders
    )
    db.close()
    return {
        "reads_per_second": reads_per_second,
        "stripe_latency_ms": latency_ms,
        "finals_reverted": reverted,
        "waiting_holds": waiting,
        "outcomes": outcomes,
        "seconds": round(elapsed, 2),
        "checks": checks,
        "checks_per_second": round(per_second, 2),
        "stripe_calls_per_check": round(calls_per_check, 2),
        "stripe_calls_per_second": round(calls / elapsed, 2),
        "next_run_checks": sum(
            n for k, n in again.items() if k not in ("lost_calls_flagged", "stripe_calls")
        ),
        "next_run_outcomes": again,
        "next_run_ours": next_ours,
        "final_payments_a_day": int(per_second * RUN_SECONDS * RUNS_A_DAY),
        "old_fixed_per_day": OLD_FIXED_PER_DAY,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finals", type=int, default=200, help="reverted payments, audited once each")
    parser.add_argument("--waiting", type=int, default=50, help="AUTHORIZED holds past their window")
    parser.add_argument("--reads-per-second", type=float, default=10.0, help="AUDIT_STRIPE_READS_PER_SECOND")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="added to every Stripe answer in the measured run"
    )
    args = parser.parse_args(argv)
    if args.finals < 1 or args.waiting < 0 or args.reads_per_second <= 0 or args.latency_ms < 0:
        parser.error(
            "--finals must be at least 1, --waiting at least 0, --reads-per-second above 0, --latency-ms at least 0"
        )
    ensure_stack()
    apply_env()
    paused = stack.is_running("scheduler")
    if paused:
        stack.down(["scheduler"])
    log = REPO_ROOT / ".local" / "bench" / "reconcile.log"
    try:
        with service_logs_to(log):
            figures = measure(args.finals, args.waiting, args.reads_per_second, args.latency_ms)
    finally:
        if paused:
            stack.up(["scheduler"])
    out = REPO_ROOT / ".local" / "bench" / "reconcile.json"
    out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(
        f"reconciler at {figures['reads_per_second']:g} Stripe calls/s, Stripe {figures['stripe_latency_ms']:g} ms "
        f"away: {figures['checks']} checks in "
        f"{figures['seconds']} s = {figures['checks_per_second']} checks/s, "
        f"{figures['stripe_calls_per_check']} Stripe calls a check ({figures['stripe_calls_per_second']}/s); "
        f"the next run: {figures['next_run_checks']} checks, {figures['next_run_ours']} of these payments\n"
        f"keeps up with {figures['final_payments_a_day']:,} final payments a day (one audit each, "
        f"{RUN_SECONDS} s runs every 5 min) against {OLD_FIXED_PER_DAY:,} for the old fixed 50 per run\n"
        f"outcomes: {figures['outcomes']}  (figures: {rel(out)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
