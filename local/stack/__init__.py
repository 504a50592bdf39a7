"""The local stack: what `make local-up` starts and provisions, and its command-line tools.

Belongs here: the servers (Kafka, PostgreSQL, moto, localstripe, stripe-mock) as components,
their provisioning (topics, secrets, schema, webhook) and adoption (compose-run servers), the
AWS emulators (MSK event source mapping, API Gateway, EventBridge schedules, the Lambda
runtime), the stand-ins of campusG's outside services (the Clerk issuer, the user service),
and the drivers behind `make local-*`, `make test` and `make invoke`. Nothing here exists only
for a test: that goes to ``local.doubles``.

    python -m local.stack up|down|status|env|logs      (``control.main``)
"""
