"""campusG payment service core: everything the Lambda functions decide lives here.

One module per concern: ``config`` (settings), ``contracts`` (wire messages), ``domain``
(statuses and the state machine), ``repository`` (PostgreSQL), ``stripe_gateway``,
``kafka_gateway``, ``outbox``, and the use cases in ``authorization``, ``escrow``,
``webhooks``, ``reconciliation`` and ``queries``.
"""
