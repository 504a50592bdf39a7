"""campusG payment service core: everything the Lambda functions decide lives here.

Four layers, each a subpackage, each importing only the ones below it (checked by
import-linter in ``make lint``; see docs/architecture.md):

- ``entrypoints``: what the handlers call: the MSK command batch, the two HTTP APIs and
  their routes, the scheduled and deploy-time jobs;
- ``usecases``: the decisions: authorize, release and revert, webhooks, the reconciler,
  saga requests, queries, retention, the outbox relay, redrive;
- ``adapters``: PostgreSQL, Stripe, Kafka, Secrets Manager, campusG's user service;
- ``domain``: the payment and its state machine, the wire contract, the error kinds.

``config`` and ``observability`` sit beside them: every layer may use them.
"""
