"""Benchmark of the payment service on this machine, against the local stack.

    python -m tools.bench          (make bench; starts the stack when it is not running)

Prints one table and writes the same figures to ``.local/bench/results.json``. Nothing here
asserts: the targets are printed next to the figures.

(a) authorize overhead: distinct authorize commands through ``handle_command_batch`` with real
    PostgreSQL and Kafka and a zero-latency Stripe double; per command = batch time / size,
    and per record (the record handler alone, without the batch's event publishing);
(b) the same commands against localstripe;
(c) end to end: produce to payment_commands -> event consumed from payment_events, through the
    local event source mapping (skipped when it is not running);
(d) webhooks: signed Stripe events through the payment_api handler in-process (real
    PostgreSQL, events published to Kafka), each taking a payment from REQUIRES_ACTION to
    AUTHORIZED;
(e) cold import of every functions/*/app.py in a fresh interpreter, median of 5;
(f) the size of the built layer (build/layer, from ``make build``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local import stack
from local.lambda_runtime import FakeLambdaContext, load_handler
from local.settings import REPO_ROOT, STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, WEBHOOK_PATH, client_env
from local.settings import load as load_local_settings

LAYER_PYTHON = REPO_ROOT / "layers" / "payments_core" / "python"
BUILT_LAYER = REPO_ROOT / "build" / "layer"
SERVERS = ("kafka", "postgres", "moto", "localstripe", "stripe-mock")


# ---- figures -----------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    value: float | str | None
    unit: str = ""
    target: str = ""
    within: bool | None = None  # None: no target, or not measured
    note: str = ""

    def shown(self) -> str:
        if self.value is None:
            return "skipped"
        if isinstance(self.value, str):
            return self.value
        if self.unit == "ms":
            return f"{self.value:.2f} ms"
        if self.unit == "s":
            return f"{self.value:.3f} s"
        if self.unit == "MB":
            return f"{self.value:.1f} MB"
        if self.unit == "/s":
            return f"{self.value:,.0f} /s"
        return f"{self.value} {self.unit}".strip()


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.label}: {row.shown()}" + (f"  ({row.note})" if row.note else ""), file=sys.stderr)

    def table(self) -> str:
        headers = ("measurement", "value", "target", "status")
        body = [
            (
                r.label,
                r.shown(),
                r.target,
                "" if r.within is None else ("ok" if r.within else "OVER"),
            )
            for r in self.rows
        ]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
        line = "-+-".join("-" * w for w in widths)
        out = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
        out += [" | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
        notes = [f"  - {r.label}: {r.note}" for r in self.rows if r.note]
        return "\n".join(out + (["", "notes:", *notes] if notes else []))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); with few samples p99 is the maximum."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _ms(seconds: float) -> float:
    return seconds * 1000


def _status(say: str) -> None:
    print(say, file=sys.stderr, flush=True)


# ---- environment ---------------------------------------------------------------------------


def ensure_stack() -> None:
    down = [name for name in SERVERS if not stack.is_running(name)]
    if down:
        _status(f"local stack not running ({', '.join(down)} down): starting it")
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
        from payments_core.stripe_gateway import IntentSnapshot

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

    def refund(self, payment: Any, amount_cents: int) -> str:
        return f"re_bench_{uuid.uuid4().hex[:16]}"

    def transfer(self, payment: Any, amount_cents: int, destination: str) -> str:
        return f"tr_bench_{uuid.uuid4().hex[:16]}"

    def reverse_transfer(self, payment: Any, amount_cents: int) -> str:
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
    from payments_core.config import get_settings
    from payments_core.db import Database
    from payments_core.kafka_gateway import KafkaEventPublisher
    from payments_core.services import Services

    settings = get_settings()
    return Services(
        db=Database(settings), stripe=stripe, publisher=KafkaEventPublisher(settings), settings=settings
    )


@contextmanager
def record_timer(samples: list[float]) -> Iterator[None]:
    """Time every record handled by handle_command_batch (the module-level function it calls)."""
    from payments_core import commands

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
    from payments_core.commands import handle_command_batch

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


# ---- (a) and (b) ---------------------------------------------------------------------------------


def bench_authorize_double(report: Report, count: int, batch_size: int) -> None:
    _status(f"(a) {count} authorize commands, batches of {batch_size}, zero-latency Stripe double ...")
    services = make_services(InstantStripe())
    warm = [authorize(f"bench-warm-{uuid.uuid4()}", "cus_bench", "pm_bench") for _ in range(batch_size)]
    run_batches(services, warm, batch_size)  # connection, producer and code paths warmed, not counted
    run = run_batches(
        services,
        [authorize(f"bench-a-{uuid.uuid4()}", "cus_bench", "pm_bench") for _ in range(count)],
        batch_size,
    )
    services.db.close()
    note = f"{count} commands in batches of {batch_size}; {run.item_failures} batch item failures"
    report.add(
        Row(
            "authorize_overhead_p50_ms",
            "authorize overhead p50 (batch/size)",
            _ms(percentile(run.per_command, 50)),
            "ms",
            note=note,
        )
    )
    p99 = _ms(percentile(run.per_command, 99))
    report.add(
        Row(
            "authorize_overhead_p99_ms", "authorize overhead p99 (batch/size)", p99, "ms", "<= 5 ms", p99 <= 5
        )
    )
    report.add(
        Row("authorize_record_p50_ms", "authorize per record p50", _ms(percentile(run.per_record, 50)), "ms")
    )
    report.add(
        Row(
            "authorize_record_p99_ms",
            "authorize per record p99",
            _ms(percentile(run.per_record, 99)),
            "ms",
            note="the record handler alone, without the batch's Kafka publish",
        )
    )
    report.add(
        Row("authorize_double_per_s", "authorize commands/s (double)", count / run.total_seconds, "/s")
    )


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


def bench_authorize_localstripe(report: Report, count: int, batch_size: int) -> None:
    from payments_core.config import get_settings
    from payments_core.stripe_gateway import StripeApiGateway

    _status(f"(b) {count} authorize commands against localstripe ...")
    customer_id, method_id = localstripe_card()
    services = make_services(StripeApiGateway(get_settings()))
    commands = [authorize(f"bench-b-{uuid.uuid4()}", customer_id, method_id) for _ in range(count)]
    run = run_batches(services, commands, batch_size)
    services.db.close()
    report.add(
        Row(
            "authorize_localstripe_per_s",
            "authorize commands/s (localstripe)",
            count / run.total_seconds,
            "/s",
            note=f"p50 per record {_ms(percentile(run.per_record, 50)):.1f} ms; "
            f"{run.item_failures} batch item failures",
        )
    )


# ---- (c) -----------------------------------------------------------------------------------------


def bench_end_to_end(report: Report, count: int, timeout: float) -> None:
    rows = ("end_to_end_p50_s", "end to end p50 (command -> event)"), ("end_to_end_p99_s", "end to end p99")
    if not stack.is_running("event-source"):
        reason = "the local event source mapping (event-source) is not running"
        for key, label in rows:
            report.add(Row(key, label, None, "s", "<= 1 s" if key.endswith("p50_s") else "", note=reason))
        return
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    _status(f"(c) {count} commands through Kafka and the local event source mapping ...")
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    customer_id, method_id = localstripe_card()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    partitions = [
        TopicPartition("payment_events", p) for p in consumer.partitions_for_topic("payment_events") or []
    ]
    consumer.assign(partitions)
    consumer.seek_to_end(*partitions)
    for tp in partitions:
        consumer.position(tp)  # resolve the end offsets now, before anything is produced
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    latencies: list[float] = []
    missing = 0
    for n in range(count):
        order_id = f"bench-c-{uuid.uuid4()}"
        started = time.perf_counter()
        producer.send("payment_commands", json.dumps(authorize(order_id, customer_id, method_id)).encode())
        producer.flush()
        deadline = started + timeout
        got = False
        while not got and time.perf_counter() < deadline:
            for records in consumer.poll(timeout_ms=50).values():
                if any(r.key is not None and r.key.decode() == order_id for r in records):
                    got = True
        if got:
            latencies.append(time.perf_counter() - started)
        else:
            missing += 1
            if not latencies:
                break  # the first one never arrived: the mapping is not consuming
        if (n + 1) % 10 == 0:
            _status(f"    {n + 1}/{count}")
    producer.close()
    consumer.close()
    if not latencies:
        for key, label in rows:
            report.add(Row(key, label, None, "s", note=f"no event within {timeout:.0f} s of its command"))
        return
    note = f"{len(latencies)} commands sent one at a time, localstripe" + (
        f"; {missing} timed out" if missing else ""
    )
    p50 = percentile(latencies, 50)
    report.add(Row(rows[0][0], rows[0][1], p50, "s", "<= 1 s", p50 <= 1, note=note))
    report.add(Row(rows[1][0], rows[1][1], percentile(latencies, 99), "s"))


# ---- (d) -----------------------------------------------------------------------------------------


def signed_api_event(body: str, secret: str) -> dict[str, Any]:
    """The REST proxy event the local API Gateway would build for Stripe's signed request."""
    from local.api_gateway import ROUTES, build_event, compile_routes

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
    from payments_core import services as services_module

    _status(f"(d) {count} signed webhooks (REQUIRES_ACTION -> AUTHORIZED) ...")
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
        Row(
            "webhook_p50_ms", "webhook p50", _ms(percentile(samples, 50)), "ms", note=f"{how}; {outcome_text}"
        )
    )
    p99 = _ms(percentile(samples, 99))
    report.add(Row("webhook_p99_ms", "webhook p99", p99, "ms", "<= 15 ms", p99 <= 15))


# ---- (e) and (f) ---------------------------------------------------------------------------------

COLD_IMPORT = "import time; t = time.perf_counter(); import app; print(time.perf_counter() - t)"


def cold_import_seconds(function_dir: Path, runs: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LAYER_PYTHON), str(function_dir)])}
    env.pop("PYTHONSTARTUP", None)
    timings = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", COLD_IMPORT],
            cwd=function_dir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        timings.append(float(result.stdout.strip().splitlines()[-1]))
    return statistics.median(timings)


def bench_cold_imports(report: Report, runs: int) -> None:
    _status(f"(e) cold import of each handler, median of {runs} ...")
    for app in sorted((REPO_ROOT / "functions").glob("*/app.py")):
        name = app.parent.name
        try:
            seconds: float | str = cold_import_seconds(app.parent, runs)
        except subprocess.CalledProcessError as exc:
            seconds = f"import failed: {(exc.stderr or '').strip().splitlines()[-1:]}"
        within = seconds <= 0.6 if isinstance(seconds, float) else None
        report.add(Row(f"cold_import_{name}_s", f"cold import {name}", seconds, "s", "<= 0.6 s", within))


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def bench_layer(report: Report) -> None:
    if not BUILT_LAYER.is_dir():
        report.add(Row("layer_size_mb", "layer size (unzipped)", "not built", note="run `make build`"))
        return
    report.add(
        Row(
            "layer_size_mb",
            "layer size (unzipped)",
            _tree_bytes(BUILT_LAYER) / 1_000_000,
            "MB",
            "< 250 MB (Lambda, all layers + code)",
            _tree_bytes(BUILT_LAYER) < 250_000_000,
        )
    )
    zipped = BUILT_LAYER.with_suffix(".zip")
    if zipped.is_file():
        report.add(Row("layer_zip_mb", "layer size (zip)", zipped.stat().st_size / 1_000_000, "MB"))


# ---- main ----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=500, help="authorize commands for (a) and (b)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--webhooks", type=int, default=1000)
    parser.add_argument("--end-to-end", type=int, default=50, help="commands for (c)")
    parser.add_argument("--import-runs", type=int, default=5)
    args = parser.parse_args(argv)

    ensure_stack()
    apply_env()
    local = load_local_settings()
    out = local.state_dir / "bench"
    report = Report()
    steps: list[Callable[[], None]] = [
        lambda: bench_authorize_double(report, args.commands, args.batch_size),
        lambda: bench_authorize_localstripe(report, args.commands, args.batch_size),
        lambda: bench_end_to_end(report, args.end_to_end, timeout=30.0),
        lambda: bench_webhooks(report, args.webhooks),
        lambda: bench_cold_imports(report, args.import_runs),
        lambda: bench_layer(report),
    ]
    started = time.time()
    with service_logs_to(out / "service.log"):
        for step in steps:
            step()
    info = machine()
    print()
    print(f"make bench on {info['hostname']} ({info['cpu']}, {info['cpus']} CPUs, Python {info['python']})")
    print(report.table())
    results = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_seconds": round(time.time() - started, 1),
        "machine": info,
        "parameters": vars(args),
        "results": {
            r.key: {
                "label": r.label,
                "value": r.value,
                "unit": r.unit,
                "target": r.target or None,
                "within_target": r.within,
                "note": r.note or None,
            }
            for r in report.rows
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {(out / 'results.json').relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
