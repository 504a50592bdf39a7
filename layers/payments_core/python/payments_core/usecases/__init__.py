"""Use cases: every decision about a payment (authorize, release, revert, webhooks, the
reconciler's checks, queries, retention), written against the adapters' small interfaces so
tests can put doubles in their place. They change a status only through the domain's state
machine."""
