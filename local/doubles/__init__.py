"""Doubles and probes that only tests and benchmarks use, never started by `make local-up`.

Belongs here: the Stripe doubles (the strict double in front of localstripe, the latency-only
double), the fault-injecting and latency proxies, the crash runner that kills a Lambda handler
at chosen points, and the probe of what the service's database sessions do while Stripe
answers. Each is started by the test or bench that needs it, on 127.0.0.1 and a free port.
"""
