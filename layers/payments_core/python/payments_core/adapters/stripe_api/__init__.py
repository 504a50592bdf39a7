"""Stripe: keyed money moves and lookups (``stripe_gateway``, ``stripe_lookups``), the
snapshots kept of Stripe's objects, back-pressure on the account's limits
(``stripe_throttle``), and the check that the credentials are real. Named ``stripe_api``, not
``stripe``, so it is never mistaken for the Stripe SDK."""
