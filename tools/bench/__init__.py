"""The benchmarks of the payment service against the local stack, one module per thing measured.

The benchmarks of the payment service on this machine, against the local stack: one module
per thing measured.

    python -m tools.bench          (make bench, __main__.py; starts the stack when it is not running)
    python -m tools.bench.reconciler     (make bench-reconciler, reconciler.py)

`make bench` prints one table and writes the same figures to ``.local/bench/results.json``.
Nothing here asserts: the targets are printed next to the figures. Its sections, and where each
is measured (report.py holds the rows and the table, harness.py the set-up they share,
mapping.py the benchmark's own event source mapping):

(a) authorize overhead (authorize_overhead.py): distinct authorize commands through ``handle_command_batch`` with real
    PostgreSQL and Kafka and a zero-latency Stripe double; per command = batch time / size,
    and per record (the record handler alone, without the batch's event publishing);
(b) the same commands against localstripe (authorize_overhead.py);
(c) end to end (end_to_end.py): produce to payment_commands -> event consumed from payment_events, through the
    local event source mapping (skipped when it is not running);
(d) webhooks (webhooks.py): signed Stripe events through the payment_api handler in-process (real
    PostgreSQL, events published to Kafka), each taking a payment from REQUIRES_ACTION to
    AUTHORIZED;
(e) cold start (cold_start.py): the CPU seconds of importing each functions/*/app.py in a fresh interpreter,
    against a bare ``import boto3`` measured the same way in the same run (a ratio that holds on
    a busy machine), median of 5;
(f) the size of the built layer (build/layer, from ``make build``; cold_start.py);
(g) throughput at Stripe's latency (issue 13; throughput.py): 300 authorize commands (270 orders and 30 copies
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
(h) the outbox draining after a Kafka outage (issue 19; outbox_drain.py): authorize commands at a steady 20/s
    in-process (zero-latency Stripe double, real PostgreSQL, the real publisher after each batch)
    while the local broker is stopped for 60 s and started again; how long the stack's own
    scheduled relay takes to publish every row that waited when the broker was back (ready),
    under the same load, and that backlog's rows per second.
(i) what a command costs PostgreSQL, and the scale bench (issue 19; dbcost.py, PostgreSQL watched by pg_observer.py):
    1,500 authorize commands through the local mapping against the latency-only double with
    the production Stripe settings, on 3 and on 12 partitions (sized to the local
    max_connections): PostgreSQL CPU per 1,000 commands, statements, transactions and tuples
    read per command, connections per in-flight order, Lambda CPU and Stripe calls per command.
(j) storage (issue 19): bytes stored per payment and the size of each table, after 2,000 orders
    and again after the retention job (storage.py).
"""
