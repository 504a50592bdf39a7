"""Local development tooling, in two packages that never import Lambda code's way:

- ``local.stack``: the local stack ``make local-up`` runs (servers, provisioning, the AWS
  emulators, the stand-ins of campusG's services) and its command-line tools;
- ``local.doubles``: what only tests and benchmarks use (the strict Stripe double, the fault and
  latency proxies, the crash runner, the database activity probe).

Never imported by Lambda code (``functions/`` and ``payments_core``); it only drives them.
"""
