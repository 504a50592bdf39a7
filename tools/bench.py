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
(e) cold start: the CPU seconds of importing each functions/*/app.py in a fresh interpreter,
    against a bare ``import boto3`` measured the same way in the same run (a ratio that holds on
    a busy machine), median of 5;
(f) the size of the built layer (build/layer, from ``make build``);
(g) throughput at Stripe's latency (issue 13): 300 authorize commands (270 orders and 30 copies
    sent within 100 ms of their original, on any partition) through a local event source
    mapping (one invocation per partition at a time, each in its own container process), one
    record at a time (COMMAND_WORKERS=1) against the default pool, with Stripe as
    - a latency-only double (300 ms per request, no CPU: local/doubles/stripe_latency.py), on a topic
      of 3 partitions and on one of 1,
    - localstripe behind a proxy adding 300 ms per request, and raw localstripe (its own
      ceiling, about 15 requests/s on one core);
    commands/s, p50 and p99 command -> event, duplicate holds, unanswered orders, and the
    Lambda cost per 1,000 authorizations from each invocation's duration (the mapping's
    REPORT lines) at the configured memory; with the double, also the service's database
    sessions tied up while Stripe answers (issue 16: active, idle in a transaction or holding a
    lock, per order in flight at the double, sampled every ~75 ms by local/doubles/db_activity.py).
(h) the outbox draining after a Kafka outage (issue 19): authorize commands at a steady 20/s
    in-process (zero-latency Stripe double, real PostgreSQL, the real publisher after each batch)
    while the local broker is stopped for 60 s and started again; how long the stack's own
    scheduled relay takes to publish every row that waited when the broker was back (ready),
    under the same load, and that backlog's rows per second.
(i) what a command costs PostgreSQL, and the scale bench (issue 19; tools/bench_dbcost.py):
    1,500 authorize commands through the local mapping against the latency-only double with
    the production Stripe settings, on 3 and on 12 partitions (sized to the local
    max_connections): PostgreSQL CPU per 1,000 commands, statements, transactions and tuples
    read per command, connections per in-flight order, Lambda CPU and Stripe calls per command.
(j) storage (issue 19): bytes stored per payment and the size of each table, after 2,000 orders
    and again after the retention job (tools/bench_storage.py).
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
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from local.doubles.db_activity import InFlightSampler, InFlightSummary
from local.stack import control as stack
from local.stack.lambda_runtime import FakeLambdaContext, load_handler
from local.stack.processes import rel
from local.stack.settings import REPO_ROOT, STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, WEBHOOK_PATH, client_env
from local.stack.settings import load as load_local_settings
from tools import bench_storage

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
    figures: dict[str, Any] | None = None  # the numbers behind a composite value, for results.json

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
    from payments_core.adapters.stripe_api.stripe_gateway import StripeApiGateway
    from payments_core.config import get_settings

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
    from local.stack.api_gateway import ROUTES, build_event, compile_routes

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

# CPU seconds, not wall time: the ratio to boto3 holds on a machine busy with other work
COLD_IMPORT = "import time; t = time.process_time(); import {module}; print(time.process_time() - t)"


def cold_import_cpu_seconds(function_dir: Path, runs: int, module: str = "app") -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LAYER_PYTHON), str(function_dir)])}
    env.pop("PYTHONSTARTUP", None)
    timings = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", COLD_IMPORT.format(module=module)],
            cwd=function_dir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        timings.append(float(result.stdout.strip().splitlines()[-1]))
    return statistics.median(timings)


def bench_cold_imports(report: Report, runs: int) -> None:
    _status(f"(e) cold import of each handler against `import boto3`, CPU seconds, median of {runs} ...")
    boto3_s = cold_import_cpu_seconds(REPO_ROOT, runs, module="boto3")
    report.add(
        Row(
            "cold_import_boto3_cpu_s",
            "cold import boto3 (CPU)",
            boto3_s,
            "s",
            note="what every Lambda Python runtime already carries",
        )
    )
    for app in sorted((REPO_ROOT / "functions").glob("*/app.py")):
        name = app.parent.name
        try:
            seconds = cold_import_cpu_seconds(app.parent, runs)
        except subprocess.CalledProcessError as exc:
            failed = f"import failed: {(exc.stderr or '').strip().splitlines()[-1:]}"
            report.add(Row(f"cold_import_{name}_ratio", f"cold import {name} / boto3 (CPU)", failed))
            continue
        ratio = seconds / boto3_s if boto3_s else float("inf")
        report.add(
            Row(
                f"cold_import_{name}_ratio",
                f"cold import {name} / boto3 (CPU)",
                f"{ratio:.2f}x ({seconds:.3f} s)",
                target="<= 2x",
                within=ratio <= 2,
            )
        )


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


# ---- (g) -----------------------------------------------------------------------------------------

STRIPE_LATENCY_S = 0.3
# AWS Lambda on arm64 (ap-southeast-1): per GB-second and per request
LAMBDA_GB_SECOND_USD = 0.0000133334
LAMBDA_REQUEST_USD = 0.20 / 1_000_000


@dataclass
class ThroughputRun:
    commands: int
    seconds: float
    latencies: list[float]
    unanswered: int
    duplicate_holds: int | None
    billed_ms: float
    invocations: int
    backends: InFlightSummary | None = None  # sessions tied up while Stripe answers (the double)

    @property
    def per_second(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0


def _new_topic(partitions: int) -> str:
    from kafka.admin import KafkaAdminClient

    name = f"bench.commands.{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], client_id="bench")
    try:
        admin.create_topics(
            {name: {"num_partitions": partitions, "replication_factor": 1}}, wait_for_metadata=True
        )
    finally:
        admin.close()
    return name


def _drop_topic(name: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], client_id="bench")
    try:
        admin.delete_topics([name])
    except Exception as exc:  # a leftover benchmark topic harms nothing
        _status(f"    (could not delete {name}: {exc})")
    finally:
        admin.close()


class _Mapping:
    """A local event source mapping in its own process, on its own topic and consumer group,
    with the service's environment changed for this run (Stripe base, pool size)."""

    def __init__(
        self, topic: str, stripe_base: str, workers: int, log_path: Path, stripe_in_flight: int | None
    ) -> None:
        env = {
            **os.environ,
            "LOCAL_ESM_TOPIC": topic,
            "LOCAL_ESM_GROUP_ID": f"bench-esm-{uuid.uuid4().hex[:8]}",
            "STRIPE_API_BASE": stripe_base,
            "COMMAND_WORKERS": str(workers),
            # the double stands for live Stripe (the service's default cap); localstripe keeps
            # the local mapping's test-mode cap
            **({"STRIPE_MAX_IN_FLIGHT": str(stripe_in_flight)} if stripe_in_flight else {}),
            "POWERTOOLS_LOG_LEVEL": "WARNING",  # the REPORT lines are the mapping's own, at INFO
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "local.stack.event_source"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while "READY" not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the benchmark's event source mapping did not start: see {log_path}")
            time.sleep(0.1)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def reports(self, after: int = 0) -> list[float]:
        """Invocation durations (ms) from the REPORT lines after character ``after``."""
        import re

        return [
            float(m) for m in re.findall(r"REPORT \S+ records=\d+ duration_ms=([0-9.]+)", self.text()[after:])
        ]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def read_events_from_now(consumer: Any) -> None:
    """Assign ``consumer`` every payment_events partition, positioned at its end."""
    from kafka import TopicPartition

    events = [
        TopicPartition("payment_events", p) for p in consumer.partitions_for_topic("payment_events") or []
    ]
    consumer.assign(events)
    consumer.seek_to_end(*events)
    for tp in events:
        consumer.position(tp)


def warm_up(
    producer: Any,
    consumer: Any,
    topic: str,
    partitions: int,
    workers: int,
    card: tuple[str, str],
    prefix: str,
    *,
    timeout: float,
) -> None:
    """Not counted: enough orders per partition to start each partition's container and open
    every worker's database connection, as in a warm function; returns once all are answered."""
    warm = {f"{prefix}-warm-{uuid.uuid4()}": p for p in range(partitions) for _ in range(workers)}
    for order_id, p in warm.items():
        producer.send(topic, json.dumps(authorize(order_id, *card)).encode(), partition=p)
    producer.flush()
    _answers(consumer, set(warm), timeout=timeout)


def _answers(consumer: Any, wanted: set[str], timeout: float) -> dict[str, float]:
    """First payment_events arrival time per wanted order."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(wanted) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=100).values():
            now = time.perf_counter()
            for r in records:
                key = r.key.decode() if r.key is not None else ""
                if key in wanted and key not in seen:
                    seen[key] = now
    return seen


def run_through_mapping(
    stripe_base: str,
    partitions: int,
    workers: int,
    orders: int,
    copies: int,
    card: tuple[str, str],
    creates: Any,
    log_path: Path,
    stripe_in_flight: int | None = None,
    stripe_progress: Callable[[], tuple[int, int]] | None = None,
) -> ThroughputRun:
    """``stripe_progress``: the latency double's (requests received, answered); with it, the
    service's database sessions are sampled during the measured run (not the warm-up)."""
    import random

    from kafka import KafkaConsumer, KafkaProducer

    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    topic = _new_topic(partitions)
    mapping = _Mapping(topic, stripe_base, workers, log_path, stripe_in_flight)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    try:
        read_events_from_now(consumer)
        warm_up(producer, consumer, topic, partitions, workers, card, "bench-g", timeout=120)
        log_mark = len(mapping.text())

        rng = random.Random(13)
        order_ids = [f"bench-g-{uuid.uuid4()}" for _ in range(orders)]
        copied = set(rng.sample(order_ids, min(copies, orders)))
        sends: list[tuple[str, int]] = []
        for i, order_id in enumerate(order_ids):
            sends.append((order_id, i % partitions))
            if order_id in copied:  # the copy right behind it, on any partition
                sends.append((order_id, rng.randrange(partitions)))
        commands = {order_id: authorize(order_id, *card) for order_id in order_ids}
        sent_at: dict[str, float] = {}
        sampler = InFlightSampler(stripe_progress) if stripe_progress else None
        with sampler or nullcontext():
            started = time.perf_counter()
            for order_id, p in sends:
                sent_at.setdefault(order_id, time.perf_counter())
                producer.send(topic, json.dumps(commands[order_id]).encode(), partition=p)
            producer.flush()
            timeout = 60 + len(sends) * STRIPE_LATENCY_S * 2 / max(1, partitions)
            answered = _answers(consumer, set(order_ids), timeout=timeout)
        finished = max(answered.values(), default=started)
        time.sleep(2)  # copies still in flight finish before holds are counted
        durations = mapping.reports(after=log_mark)
    finally:
        mapping.stop()
        producer.close()
        consumer.close()
        _drop_topic(topic)
    duplicates = creates(order_ids) if creates is not None else None
    return ThroughputRun(
        commands=len(sends),
        seconds=finished - started,
        latencies=[answered[o] - sent_at[o] for o in answered],
        unanswered=len(order_ids) - len(answered),
        duplicate_holds=duplicates,
        billed_ms=sum(float(int(d) + 1) for d in durations),
        invocations=len(durations),
        backends=sampler.summary() if sampler else None,
    )


def _localstripe_duplicates(order_ids: list[str], customer_id: str) -> int:
    """Orders with more than one PaymentIntent in localstripe (read directly, no proxy)."""
    import stripe

    client: Any = stripe.StripeClient(
        STRIPE_SECRET_KEY, base_addresses={"api": os.environ["STRIPE_API_BASE"]}, max_network_retries=0
    )
    wanted = set(order_ids)
    per_order: dict[str, int] = {}
    params: dict[str, Any] = {"customer": customer_id, "limit": 100}
    while True:
        page = client.v1.payment_intents.list(params=params)
        for intent in page.data:
            order_id = (intent.to_dict().get("metadata") or {}).get("order_id")
            if order_id in wanted:
                per_order[order_id] = per_order.get(order_id, 0) + 1
        if not page.has_more or not page.data:
            break
        params["starting_after"] = page.data[-1].id
    return sum(1 for n in per_order.values() if n > 1)


THROUGHPUT_SETUPS = ("double3", "double1", "proxy", "raw")
# A session held across a Stripe call counts 1 per in-flight order for the call's whole length;
# other orders' short transactions running at the same moment count a fraction. Below half a
# session per in-flight order, no session is held across calls.
BUSY_PER_IN_FLIGHT_LIMIT = 0.5


def busy_backends_row(key: str, setup: str, seen: InFlightSummary) -> Row:
    """Service sessions (application_name payment-service) active, idle in a transaction or
    holding a lock, per order in flight at the double, sampled every ~75 ms (issue 16)."""
    measured = seen.during_calls > 0
    return Row(
        f"{key}_busy_backends_per_order",
        f"  backends busy per in-flight order ({setup})",
        f"mean {seen.busy_mean:.2f}, max {seen.busy_max:.2f}" if measured else "no samples",
        target="0 while Stripe answers",
        within=seen.busy_mean < BUSY_PER_IN_FLIGHT_LIMIT if measured else None,
        note=(
            "busy: active, idle in a transaction or holding a lock; "
            f"advisory-lock holders per in-flight order mean {seen.advisory_mean:.2f}, max "
            f"{seen.advisory_max:.2f}; non-zero in {seen.nonzero_share:.0%} of {seen.during_calls} "
            f"samples with Stripe requests in flight ({seen.samples} taken, "
            f"{seen.in_flight_mean:.1f} in flight on average); status ok below "
            f"{BUSY_PER_IN_FLIGHT_LIMIT} per order"
        ),
        figures=asdict(seen),
    )


def bench_throughput(
    report: Report,
    orders: int,
    copies: int,
    memory_mb: int,
    default_workers: int,
    only: list[str] | None = None,
) -> None:
    from local.doubles.stripe_latency import StripeLatencyDouble, StripeLatencyProxy

    out = load_local_settings().state_dir / "bench"
    raw_base = os.environ["STRIPE_API_BASE"]
    double = StripeLatencyDouble(STRIPE_LATENCY_S).start()
    proxy = StripeLatencyProxy(raw_base, STRIPE_LATENCY_S).start()
    localstripe_customer, localstripe_method = localstripe_card()
    setups = [
        ("double3", "double, 3 partitions", double.url, 3, ("cus_bench", "pm_bench"), double.duplicate_holds),
        ("double1", "double, 1 partition", double.url, 1, ("cus_bench", "pm_bench"), double.duplicate_holds),
        (
            "proxy",
            "localstripe +300 ms, 3 partitions",
            proxy.url,
            3,
            (localstripe_customer, localstripe_method),
            lambda ids: _localstripe_duplicates(ids, localstripe_customer),
        ),
        (
            "raw",
            "raw localstripe, 3 partitions",
            raw_base,
            3,
            (localstripe_customer, localstripe_method),
            lambda ids: _localstripe_duplicates(ids, localstripe_customer),
        ),
    ]
    total = orders + min(copies, orders)
    try:
        for name, label, base, partitions, card, creates in setups:
            if only and name not in only:
                continue
            for workers in (1, default_workers):
                if label.startswith("raw") and workers == 1:
                    continue  # raw localstripe is measured for its ceiling, with the pool
                pool = "one at a time" if workers == 1 else f"pool of {workers}"
                _status(f"(g) {total} commands, {label}, {pool} ...")
                run = run_through_mapping(
                    base,
                    partitions,
                    workers,
                    orders,
                    copies,
                    card,
                    creates,
                    out / f"mapping-{workers}.log",
                    stripe_in_flight=workers if name.startswith("double") else None,
                    stripe_progress=double.progress if name.startswith("double") else None,
                )
                key = f"throughput_{label.split(',')[0].replace(' ', '_').replace('+', '')}_{partitions}p_{workers}w"
                key = key.replace("__", "_")
                p50 = percentile(run.latencies, 50) if run.latencies else None
                p99 = percentile(run.latencies, 99) if run.latencies else None
                gb_s = run.billed_ms / 1000 * memory_mb / 1024
                cost = (
                    (gb_s * LAMBDA_GB_SECOND_USD + run.invocations * LAMBDA_REQUEST_USD) / run.commands * 1000
                )
                note = (
                    f"p50 {p50:.2f} s, p99 {p99:.2f} s; "
                    if p50 is not None and p99 is not None
                    else "no answers; "
                ) + (
                    f"duplicate holds {run.duplicate_holds}, unanswered {run.unanswered}; "
                    f"{run.invocations} invocations, ${cost:.5f} per 1,000 commands at {memory_mb} MB"
                )
                target = ""
                within: bool | None = None
                if workers != 1 and label.startswith("double"):
                    need = 80 if partitions == 3 else 40
                    target = f">= {need} /s" + (", p99 < 5 s" if partitions == 3 else "")
                    within = run.per_second >= need and (partitions != 3 or (p99 or 99) < 5)
                clean = run.duplicate_holds in (0, None) and run.unanswered == 0
                report.add(
                    Row(f"{key}_per_s", f"{label}, {pool}", run.per_second, "/s", target, within, note)
                )
                report.add(
                    Row(
                        f"{key}_p99_s",
                        f"  p99 command -> event ({label}, {pool})",
                        p99,
                        "s",
                        "dup 0, unanswered 0",
                        clean,
                        note=f"p50 {p50:.3f} s" if p50 is not None else "",
                    )
                )
                report.add(Row(f"{key}_cost_usd", f"  Lambda $ per 1,000 ({label}, {pool})", f"${cost:.5f}"))
                if run.backends is not None:
                    report.add(busy_backends_row(key, f"{label}, {pool}", run.backends))
    finally:
        double.stop()
        proxy.stop()


# ---- (h) -----------------------------------------------------------------------------------------


@dataclass
class SteadyLoad:
    """Authorize commands through ``handle_command_batch`` in-process (zero-latency Stripe double,
    real PostgreSQL, the real publisher after each batch) at ``rate`` per second, in one batch
    every ``interval`` s, each batch due at its slot (a late one is sent at once: catch-up)."""

    rate: float
    interval: float = 2.0
    produced: int = 0
    batches: int = 0
    late: int = 0  # batches that started after their slot
    failures: int = 0
    stop: Any = None
    error: BaseException | None = None

    def run(self, services: Any, prefix: str) -> None:
        from payments_core.entrypoints.commands import handle_command_batch

        context = FakeLambdaContext(function_name="authorize_payment", timeout_seconds=900)
        size = max(1, round(self.rate * self.interval))
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                due = started + self.batches * self.interval
                wait = due - time.monotonic()
                if wait > 0:
                    self.stop.wait(wait)
                    if self.stop.is_set():
                        break
                elif wait < -0.5:
                    self.late += 1
                batch = [authorize(f"{prefix}{uuid.uuid4()}", "cus_bench", "pm_bench") for _ in range(size)]
                response = handle_command_batch(msk_event(batch, self.produced), context, services)
                self.failures += len(response.get("batchItemFailures") or [])
                self.produced += size
                self.batches += 1
        except BaseException as exc:  # surfaced by the section: a thread's exception is otherwise lost
            self.error = exc


def _unsent_up_to(db: Any, last_id: int) -> int:
    rows = db.query(
        "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL AND id <= :last", last=last_id
    )
    return int(rows[0]["n"])


def bench_outbox_drain(report: Report, rate: float, outage_s: float, timeout: float = 600.0) -> None:
    """Authorize commands at a steady rate while the local Kafka broker is stopped for
    ``outage_s``; then how long the stack's scheduled relay (functions/outbox_relay, every second
    locally) takes to publish every row that waited when the broker was back, under the same load."""
    import dataclasses
    import threading

    keys = (
        ("outbox_drain_s", "outbox drain after a Kafka outage"),
        ("outbox_drain_per_s", "outbox drain rate"),
    )
    if not stack.is_running("scheduler"):
        for key, label in keys:
            report.add(Row(key, label, None, note="the local scheduler (the outbox relay) is not running"))
        return
    from payments_core.adapters.kafka.kafka_gateway import KafkaEventPublisher
    from payments_core.adapters.postgres.db import Database
    from payments_core.adapters.services import Services
    from payments_core.config import get_settings

    _status(f"(h) {rate:.0f} authorize commands/s; the Kafka broker stopped for {outage_s:.0f} s ...")
    # The load's own publish after each batch waits for the broker at most ~1.5 s (not the
    # default 6 s), so a batch during the outage still fits its slot.
    settings = dataclasses.replace(get_settings(), kafka_send_timeout_seconds=0.5)
    stripe: Any = InstantStripe()  # the StripeGateway protocol, by duck typing as in make_services
    services = Services(
        db=Database(settings),
        stripe=stripe,
        publisher=KafkaEventPublisher(settings),
        settings=settings,
    )
    probe = Database(get_settings())
    load = SteadyLoad(rate, stop=threading.Event())
    warm = [authorize(f"bench-warm-{uuid.uuid4()}", "cus_bench", "pm_bench") for _ in range(10)]
    run_batches(services, warm, 10)
    thread = threading.Thread(
        target=load.run, args=(services, f"bench-h-{uuid.uuid4().hex[:8]}-"), daemon=True
    )
    thread.start()
    drained_at: float | None = None
    peak = backlog = 0
    try:
        time.sleep(10)  # steady state first: the outbox empties as fast as it fills
        before = _unsent_up_to(probe, 2**62)
        produced_before = load.produced
        stack.down(["kafka"])
        down_at = time.monotonic()
        try:
            time.sleep(outage_s)
        finally:
            stack.up(["kafka"])
        up_at = time.monotonic()
        produced_in_outage = load.produced - produced_before
        last_id = int(probe.query("SELECT coalesce(max(id), 0) AS m FROM outbox")[0]["m"])
        backlog = _unsent_up_to(probe, last_id)
        _status(f"    broker back after {up_at - down_at:.0f} s; {backlog} rows waiting")
        while time.monotonic() - up_at < timeout:
            waiting = _unsent_up_to(probe, last_id)
            peak = max(peak, waiting)
            if waiting == 0:
                drained_at = time.monotonic()
                break
            time.sleep(0.25)
    finally:
        load.stop.set()
        thread.join(timeout=60)
    probe.close()
    services.db.close()
    if load.error is not None:
        raise load.error
    setup = (
        f"{rate:.0f} authorize commands/s in-process (zero-latency Stripe double, batches every "
        f"{load.interval:.0f} s; {load.produced} in all, {produced_in_outage} while the broker was down, "
        f"{load.late} batches late, {load.failures} item failures); broker stopped {outage_s:.0f} s, "
        f"back (ready) after {up_at - down_at:.0f} s; {before} rows unsent before the outage"
    )
    figures = {"backlog_rows": backlog, "outage_s": round(up_at - down_at, 1), "rate": rate}
    if drained_at is None:
        note = f"{backlog} rows waited when the broker was back; not drained within {timeout:.0f} s; {setup}"
        report.add(Row(keys[0][0], keys[0][1], None, "s", note=note, figures=figures))
        return
    seconds = drained_at - up_at
    figures["drain_s"] = round(seconds, 2)
    report.add(
        Row(
            keys[0][0],
            keys[0][1],
            seconds,
            "s",
            note=f"{backlog} rows waiting when the broker was back (ready), all published; {setup}",
            figures=figures,
        )
    )
    report.add(
        Row(
            keys[1][0],
            keys[1][1],
            backlog / seconds if seconds else None,
            "/s",
            note="rows of that backlog / drain time, load still running",
        )
    )


def _bench_db_cost(report: Report, commands: int, workers: int, partitions: tuple[int, ...]) -> None:
    from tools.bench_dbcost import bench_db_cost  # it imports this module's helpers

    bench_db_cost(report, commands, workers, partitions)


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
    parser.add_argument("--orders", type=int, default=270, help="distinct orders for (g)")
    parser.add_argument("--copies", type=int, default=30, help="copies of orders for (g)")
    parser.add_argument("--drain-rate", type=float, default=20, help="authorize commands/s for (h)")
    parser.add_argument("--drain-outage", type=float, default=60, help="seconds the broker is down in (h)")
    parser.add_argument("--dbcost-commands", type=int, default=1500, help="authorize commands per run of (i)")
    parser.add_argument(
        "--dbcost-partitions", type=int, nargs="*", default=[3, 12], help="(i): partition counts"
    )
    parser.add_argument("--storage-orders", type=int, default=2000, help="orders for (j)")
    parser.add_argument(
        "--memory-mb", type=int, default=512, help="the authorize function's memory, for cost"
    )
    parser.add_argument(
        "--only", nargs="*", choices=list("abcdefghij"), help="run only these sections (default: all)"
    )
    parser.add_argument(
        "--setups", nargs="*", choices=THROUGHPUT_SETUPS, help="(g): only these Stripe set-ups (default: all)"
    )
    args = parser.parse_args(argv)

    ensure_stack()
    apply_env()
    local = load_local_settings()
    out = local.state_dir / "bench"
    report = Report()
    from payments_core.config import get_settings

    sections: dict[str, Callable[[], None]] = {
        "a": lambda: bench_authorize_double(report, args.commands, args.batch_size),
        "b": lambda: bench_authorize_localstripe(report, args.commands, args.batch_size),
        "c": lambda: bench_end_to_end(report, args.end_to_end, timeout=30.0),
        "d": lambda: bench_webhooks(report, args.webhooks),
        "e": lambda: bench_cold_imports(report, args.import_runs),
        "f": lambda: bench_layer(report),
        "g": lambda: bench_throughput(
            report, args.orders, args.copies, args.memory_mb, get_settings().command_workers, args.setups
        ),
        "h": lambda: bench_outbox_drain(report, args.drain_rate, args.drain_outage),
        "i": lambda: _bench_db_cost(
            report, args.dbcost_commands, get_settings().command_workers, tuple(args.dbcost_partitions)
        ),
        "j": lambda: bench_storage.bench_storage(report, args.storage_orders, Row),
    }
    started = time.time()
    with service_logs_to(out / "service.log"):
        for name, step in sections.items():
            if not args.only or name in args.only:
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
                **({"figures": r.figures} if r.figures else {}),
            }
            for r in report.rows
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {rel(out / 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
